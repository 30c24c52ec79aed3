"""The model registry and promotion gate against a real MLflow server on 127.0.0.1: better
challengers are promoted, worse or group-regressing ones refused, decisions and lineage recorded as
version tags; the champion loads from ``models:/<name>@champion``; a server that is down or cut
off mid-way leaves no alias on a half-registered version."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ffr.integrations.model_registry import CHALLENGER, CHAMPION, promote, register
from ffr.promotion import Evaluation, GatePolicy
from ffr.integrations.mlflow_server import TrackingError
from ffr.integrations.mlflow_runs import mlflow_run
from ffr.train.backbones import create_model
from tests.integration.servers import free_port

POLICY = GatePolicy(margin=0.01, tolerance=0.02, floor=0.5)


@pytest.fixture(scope="module")
def logged(mlflow_server):
    """One small logged model and the module it was logged from (the gate judges numbers; every
    version may share the weights)."""
    torch.manual_seed(0)
    model = create_model("small_cnn", 2).eval()
    with mlflow_run(mlflow_server.url, "registry-tests", "model", system_metrics=False) as t:
        t.log_model(model, {"image_size": 16, "classes": ["a", "b"], "normalize": "imagenet", "backbone": "small_cnn"})
    return t.model_uri, model


@pytest.fixture(scope="module")
def model_uri(logged):
    return logged[0]


def ev(groups: dict, digest: str = "test-digest-1") -> Evaluation:
    return Evaluation(min(groups.values()), groups, digest)


def _client(server):
    from mlflow import MlflowClient

    return MlflowClient(server.url, registry_uri=server.url)


def test_gate_promotes_better_and_refuses_worse_or_regressed(mlflow_env, model_uri, logged):
    import mlflow

    url, name, c = mlflow_env.url, "gate-model", _client(mlflow_env)
    lineage = {"git_commit": "abc123", "pipeline_run_id": "run-7", "data.test.dvc_md5": "f00.dir"}

    def step(groups, digest="test-digest-1"):
        v = register(url, name, model_uri, ev(groups, digest), lineage)
        assert c.get_model_version_by_alias(name, CHALLENGER).version == v
        return v, promote(url, name, v, POLICY)

    v1, d = step({"a_x": 0.60, "a_y": 0.90, "b_x": 0.85, "b_y": 0.95})
    assert d.promote, d.summary                                    # first model above the floor
    v2, d = step({"a_x": 0.70, "a_y": 0.90, "b_x": 0.85, "b_y": 0.95})
    assert d.promote, d.summary                                    # better: promoted
    assert c.get_model_version_by_alias(name, CHAMPION).version == v2
    v3, d = step({"a_x": 0.65, "a_y": 0.95, "b_x": 0.90, "b_y": 0.99})
    assert not d.promote                                           # worse WGA
    v4, d = step({"a_x": 0.70, "a_y": 0.80, "b_x": 0.85, "b_y": 0.95})
    assert not d.promote and "group a_y falls" in d.summary        # same WGA, a group regressed
    v5, d = step({"a_x": 0.99, "a_y": 0.99, "b_x": 0.99, "b_y": 0.99}, digest="other-test-set")
    assert d.refused and not d.promote                             # other test data: refused
    assert c.get_model_version_by_alias(name, CHAMPION).version == v2

    tags = c.get_model_version(name, v4).tags
    assert tags["gate.decision"] == "rejected" and tags["gate.champion_version"] == v2
    assert float(tags["test.worst_group_acc"]) == 0.70 and float(tags["gate.champion.worst_group_acc"]) == 0.70
    assert float(tags["gate.champion.group.a_y.acc"]) == 0.90 and float(tags["test.group.a_y.acc"]) == 0.80
    assert json.loads(tags["gate.policy"])["tolerance"] == 0.02
    assert tags["lineage.git_commit"] == "abc123" and tags["lineage.pipeline_run_id"] == "run-7"
    assert c.get_model_version(name, v1).tags["gate.replaced_by"] == v2
    assert c.get_model_version(name, v5).tags["gate.decision"] == "refused"

    # The champion loads by alias and classifies images (uint8 RGB) with the model's own
    # preprocessing, any batch size: the same probabilities as the model in this process.
    from ffr.data.loading import BatchTransform

    import io

    import pandas as pd
    from PIL import Image

    pixels = np.random.default_rng(0).integers(0, 256, (5, 16, 16, 3), dtype=np.uint8)
    pngs = []
    for a in pixels:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, "PNG")
        pngs.append(buf.getvalue())
    pyfunc = mlflow.pyfunc.load_model(f"models:/{name}@{CHAMPION}")
    out = pyfunc.predict(pd.DataFrame({"image": pngs}))
    raw = pyfunc.unwrap_python_model().predict(None, pixels)  # uint8 pixels, without the JSON contract
    assert raw.equals(out)
    with torch.inference_mode():
        expected = torch.softmax(logged[1](BatchTransform("imagenet")(torch.from_numpy(pixels).permute(0, 3, 1, 2))), 1)
    assert list(out.columns) == ["class", "probabilities", "model_version"] and len(out) == 5
    got = np.array([[p[c] for c in ("a", "b")] for p in out["probabilities"]])
    assert np.allclose(got, expected.numpy(), atol=1e-5)
    assert list(out["class"]) == [("a", "b")[i] for i in expected.argmax(1).tolist()]


def test_server_down_leaves_no_registry_state(mlflow_env, model_uri):
    dead = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(TrackingError, match="not reachable"):
        register(dead, "down-model", model_uri, ev({"a_x": 0.9}))
    assert not _client(mlflow_env).search_registered_models("name = 'down-model'")


def test_cut_mid_registration_rolls_back(mlflow_env, model_uri, proxy_to):
    proxy = proxy_to(mlflow_env)
    proxy.fail(lambda m, p: m == "POST" and "registered-models/alias" in p, lambda n: 503)
    with pytest.raises(TrackingError, match="registering the model failed"):
        register(proxy.url, "cut-model", model_uri, ev({"a_x": 0.9}))
    assert sum(1 for m, p, o in proxy.seen if "registered-models/alias" in p) == 3  # 1 + 2 bounded retries
    assert any("model-versions/delete" in p for _, p, _ in proxy.seen)
    assert not _client(mlflow_env).search_model_versions("name = 'cut-model'")


def test_cut_mid_promotion_keeps_the_champion(mlflow_env, model_uri, proxy_to):
    url, name, c = mlflow_env.url, "cut-promotion", _client(mlflow_env)
    v1 = register(url, name, model_uri, ev({"a_x": 0.7, "b_x": 0.8}))
    assert promote(url, name, v1, POLICY).promote
    v2 = register(url, name, model_uri, ev({"a_x": 0.8, "b_x": 0.8}))
    proxy = proxy_to(mlflow_env)
    proxy.fail(lambda m, p: m == "POST" and "registered-models/alias" in p, lambda n: "drop")
    with pytest.raises(TrackingError, match="promotion gate failed"):
        promote(proxy.url, name, v2, POLICY)
    assert c.get_model_version_by_alias(name, CHAMPION).version == v1
    # Once the server is reachable again the gate can simply be run again.
    assert promote(url, name, v2, POLICY).promote
    assert c.get_model_version_by_alias(name, CHAMPION).version == v2
