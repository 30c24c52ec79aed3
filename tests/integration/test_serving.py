"""The registered champion served for real: `ffr serve` starts `mlflow models serve` on
127.0.0.1 (--env-manager local), a PNG posted to /invocations comes back as the class, the
probabilities and the registered version — the same answer as the model in this process."""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest

from servers import free_port

pytest.importorskip("mlflow")
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def _png(seed: int, size: int = 24) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _post(url: str, body, timeout: float = 30, content_type: str = "application/json") -> dict:
    data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
    req = urllib.request.Request(url, data, {"Content-Type": content_type})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def _refusal(url: str, body) -> tuple[int, str]:
    """The status and text of a request the server refuses."""
    import urllib.error

    try:
        _post(url, body)
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    raise AssertionError(f"{body!r} was answered")


@pytest.fixture
def champion(mlflow_env):
    """A tiny model logged as the servable pyfunc, registered, and promoted to @champion."""
    import torch

    from ffr.integrations.mlflow_runs import mlflow_run
    from ffr.integrations.model_registry import CHAMPION, promote, register
    from ffr.promotion import Evaluation, GatePolicy
    from ffr.train.backbones import create_model

    torch.manual_seed(0)
    model = create_model("tiny_cnn", 2).eval()
    meta = {"backbone": "tiny_cnn", "classes": ["cat", "dog"], "bias_values": ["in", "out"], "image_size": 16,
            "normalize": "imagenet", "stage_key": "k1"}
    with mlflow_run(mlflow_env.url, "serving-tests", "train", system_metrics=False) as t:
        t.log_model(model, meta)
    name = f"served-{uuid.uuid4().hex[:8]}"
    version = register(mlflow_env.url, name, t.model_uri, Evaluation(0.9, {"cat_in": 0.9}, "d"), {})
    assert promote(mlflow_env.url, name, version, GatePolicy()).promote
    return name, version, f"models:/{name}@{CHAMPION}"


def test_logged_model_is_a_servable_image_classifier(champion, mlflow_env):
    import mlflow

    name, version, uri = champion
    mlflow.set_tracking_uri(mlflow_env.url)
    from mlflow.models import get_model_info

    info = get_model_info(uri)
    assert info.flavors.keys() >= {"python_function"}
    local = Path(mlflow.artifacts.download_artifacts(uri))
    reqs = (local / "requirements.txt").read_text()
    assert all(f"{p}==" in reqs for p in ("torch", "torchvision", "pillow"))
    assert (local / "code" / "ffr" / "integrations" / "serving.py").is_file()  # ffr travels with the model
    # logged from code: the model is built by the file it ships, no pickled object in it
    assert (local / "serving_model.py").is_file() and not list(local.rglob("*.pkl"))
    assert (local / "input_example.json").is_file() and info.signature.inputs.input_names() == ["image"]


def test_ffr_serve_answers_a_png_with_the_class(champion, mlflow_env, tmp_path):
    import mlflow
    import pandas as pd

    name, version, uri = champion
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": mlflow_env.url}
    log = open(tmp_path / "serve.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "ffr.cli", "serve", name, "--port", str(port)], cwd=ROOT,
                              env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 180
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert server.poll() is None, (tmp_path / "serve.log").read_text()
            assert time.time() < deadline, "the model server did not answer /ping in 180 s"
            time.sleep(1)
        url = f"http://127.0.0.1:{port}/invocations"
        images = [_png(1), _png(2, size=40)]  # any size: the model resizes to its own
        b64 = [base64.b64encode(b).decode() for b in images]
        # every input form of the MLflow scoring server, and CSV: the same answer
        forms = {"dataframe_split": {"dataframe_split": {"columns": ["image"], "data": [[b] for b in b64]}},
                 "dataframe_records": {"dataframe_records": [{"image": b} for b in b64]},
                 "instances": {"instances": [{"image": b} for b in b64]},
                 "inputs": {"inputs": {"image": b64}}}
        answers = {form: _post(url, body)["predictions"] for form, body in forms.items()}
        answers["csv"] = _post(url, "image\n" + "\n".join(b64) + "\n", content_type="text/csv")["predictions"]
        answer = answers["dataframe_split"]
        assert all(a == answer for a in answers.values()), answers
        mlflow.set_tracking_uri(mlflow_env.url)
        local = mlflow.pyfunc.load_model(uri).predict(pd.DataFrame({"image": images}))
        assert [a["class"] for a in answer] == list(local["class"])
        for a, here in zip(answer, local["probabilities"]):
            served = a["probabilities"]  # an object, not JSON text inside the JSON
            assert served.keys() == {"cat", "dog"} and all(abs(served[k] - here[k]) < 1e-5 for k in served)
        assert {a["model_version"] for a in answer} == {f"{name}/{version}"}
        # an image that cannot be read: 400, naming the row and the reason, no stack trace
        truncated = base64.b64encode(images[0][: len(images[0]) // 2]).decode()
        for bad in ("not base64 at all!", "", base64.b64encode(b"garbage bytes").decode(), truncated):
            status, text = _refusal(url, {"inputs": {"image": [b64[0], bad]}})
            assert status == 400 and "image 1: not a decodable image" in text and "Traceback" not in text, text
        log_text = (tmp_path / "serve.log").read_text()
        assert f"serving {name} version {version}" in log_text
        # the curl line printed works as printed
        png = tmp_path / "photo.png"
        png.write_bytes(images[0])
        (curl,) = [line.split("ask it: ", 1)[1] for line in log_text.splitlines() if "ask it: " in line]
        if shutil.which("curl"):
            out = subprocess.run(["bash", "-c", curl], cwd=tmp_path, capture_output=True, text=True, timeout=60)
            assert json.loads(out.stdout)["predictions"] == answer[:1], out.stderr
        # SIGTERM to `ffr serve` ends the model server it started
        os.kill(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
            except OSError:
                break
            time.sleep(1)
        else:
            raise AssertionError("the model server still answers after ffr serve was terminated")
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(server.pid, sig)
                server.wait(timeout=30)
                break
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue
        log.close()


def test_ffr_serve_names_a_missing_alias_and_the_ones_there_are(mlflow_env, capsys):
    from ffr.cli import main
    from ffr.integrations.mlflow_runs import mlflow_run
    from ffr.integrations.model_registry import register
    from ffr.promotion import Evaluation
    from ffr.train.backbones import create_model

    assert main(["serve", "no-such-model", "--mlflow", mlflow_env.url]) == 3
    assert "registered model 'no-such-model' has no alias @champion" in capsys.readouterr().err
    meta = {"backbone": "tiny_cnn", "classes": ["cat", "dog"], "bias_values": ["in", "out"], "image_size": 16,
            "normalize": "imagenet", "stage_key": "k2"}
    with mlflow_run(mlflow_env.url, "serving-tests", "train", system_metrics=False) as t:
        t.log_model(create_model("tiny_cnn", 2).eval(), meta)
    name = f"below-floor-{uuid.uuid4().hex[:8]}"
    register(mlflow_env.url, name, t.model_uri, Evaluation(0.1, {"cat_in": 0.1}, "d"), {})  # a challenger only
    assert main(["serve", name, "--mlflow", mlflow_env.url]) == 3
    err = capsys.readouterr().err
    assert f"registered model '{name}' has no alias @champion" in err and "@challenger (version 1)" in err
