"""The Kubeflow pipelines with tracking, run by the KFP local runner against the real MLflow server
(SQLite, artifacts in moto's S3) and a DVC project whose remote is that S3: the retraining pipeline
fetches a data revision, logs a parent run with nested step runs, registers its model and runs the
promotion gate, with the data revision in the version's lineage."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import yaml

pytest.importorskip("kfp")
pytest.importorskip("dvc")

from kfp.dsl import Dataset, Metrics, Model  # noqa: E402

from ffr.kubeflow.components import register_model  # noqa: E402
from ffr.train.request import StageRequest  # noqa: E402
from ffr.steps import evaluate_step, train_stage  # noqa: E402
from ffr.train.loop import TrainConfig  # noqa: E402
from tests.integration.servers import DUMMY_AWS, binary  # noqa: E402
from tests.integration.test_dvc import _env, run  # noqa: E402

COUNTS = {(s, l, b): 6 for s in ("train", "val", "test") for l in ("cat", "dog") for b in ("indoor", "outdoor")}


def art(cls, path, metadata=None):
    return cls(name=path.name, uri=str(path), metadata=dict(metadata or {}))


def test_register_component_without_a_tracking_server(make_dataset, tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    ds = make_dataset(COUNTS)
    (tmp_path / "model").mkdir()
    train_stage(StageRequest(settings=TrainConfig(epochs=1, min_steps=0, batch_size=16), image_size=8, device="cpu",
                             train_data=str(ds), val_data=str(ds), out=str(tmp_path / "model" / "model.pt")))
    evaluate_step(tmp_path / "model" / "model.pt", ds, "test", tmp_path / "metrics.json", device="cpu")
    decision = art(Metrics, tmp_path / "decision")
    out = register_model.python_func(model=art(Model, tmp_path / "model"), metrics=art(Metrics, tmp_path / "metrics.json"),
                                     data=art(Dataset, ds), decision=decision)
    assert out == "no MLflow tracking server configured: not registered"
    assert json.loads((tmp_path / "decision").read_text())["registered"] is False


@pytest.mark.slow
def test_retrain_pipeline_tracks_registers_and_gates(tmp_path, mlflow_env, s3_env, bucket, monkeypatch):
    import mlflow
    from mlflow import MlflowClient

    from ffr.data.demo import DemoSpec, make_demo
    from ffr.kubeflow.pipelines.run import run_local

    # A DVC project holding a small demo dataset at tag v1, its data in the S3 remote.
    env = _env(tmp_path, {**DUMMY_AWS})
    dvc, git = binary("dvc"), shutil.which("git")
    proj = tmp_path / "data-repo"
    proj.mkdir()
    make_demo(proj / "data", DemoSpec(per_digit=10))
    run([git, "init", "-q"], proj, env)
    run([dvc, "init", "-q"], proj, env)
    run([dvc, "remote", "add", "-d", "s3store", f"s3://{bucket}/dvc"], proj, env)
    run([dvc, "remote", "modify", "--local", "s3store", "endpointurl", s3_env.url], proj, env)
    run([dvc, "add", "-q", "data"], proj, env)
    run([git, "add", "-A"], proj, env)
    run([git, "commit", "-qm", "data v1"], proj, env)
    run([git, "tag", "v1"], proj, env)
    run([dvc, "push", "-q"], proj, env)
    md5 = yaml.safe_load((proj / "data.dvc").read_text())["outs"][0]["md5"]

    params = {"data_repo": str(proj), "data_path": "data", "data_rev": "v1", "data_endpoint": s3_env.url,
              "bias_rate": 0.9, "min_val_per_group": 2, "num_shards": 1, "pretrain_epochs": 2, "finetune_epochs": 2, "min_steps": 0,
              "device": "cpu", "registered_model_name": "retrain-test", "gate_floor": 0.0}
    result = run_local("retrain", params, tmp_path / "runs", progress=False, mlflow=mlflow_env.url)

    mlflow.set_tracking_uri(mlflow_env.url)
    client = MlflowClient(mlflow_env.url, registry_uri=mlflow_env.url)
    exp = client.get_experiment_by_name("ffr")
    parent = client.search_runs([exp.experiment_id], "tags.`ffr.pipeline` = 'retrain'")[0]
    assert parent.info.status == "FINISHED" and parent.data.params["data_rev"] == "v1"
    steps = {r.info.run_name: r for r in client.search_runs(
        [exp.experiment_id], f"tags.mlflow.parentRunId = '{parent.info.run_id}'")}
    assert set(steps) == {"pretrain", "finetune", "evaluate ffr", "register"}
    fine = steps["finetune"]
    assert [m.step for m in sorted(client.get_metric_history(fine.info.run_id, "val/worst_group_acc"),
                                   key=lambda m: m.step)] == [0, 1]
    assert "test/groups.json" in {a.path for a in client.list_artifacts(steps["evaluate ffr"].info.run_id, "test")}
    assert steps["register"].data.metrics["test/worst_group_acc"] == pytest.approx(
        result.results["ffr"]["worst_group_acc"])

    version = client.get_model_version_by_alias("retrain-test", "champion")
    tags = version.tags
    assert tags["gate.decision"] == "promoted"
    assert tags["lineage.data.source.rev"] == "v1" and tags["lineage.data.source.dvc_md5"] == md5
    assert tags["lineage.data.source.commit"] == run([git, "rev-parse", "v1"], proj, env).strip()
    assert tags["lineage.pipeline_run_id"] == parent.data.tags["ffr.pipeline_run_id"]
    # One model per training run: the champion is step 2's logged model, whose source run holds the
    # training parameters; the version names the code that made it.
    assert version.run_id == fine.info.run_id and fine.data.params["finetune.epochs"] == "2"
    import ffr

    assert tags["ffr.version"] == ffr.__version__ and tags.get("ffr.git_commit")
    assert parent.data.tags["ffr.version"] == ffr.__version__
    import pandas as pd

    from ffr.integrations.serving import example_png

    model = mlflow.pyfunc.load_model("models:/retrain-test@champion")
    answer = model.predict(pd.DataFrame({"image": [example_png(32)] * 3}))
    assert len(answer) == 3 and set(answer["class"]) <= {"low", "high"}


@pytest.mark.slow
def test_comparison_run_is_readable_in_its_own_store(tmp_path, monkeypatch, capsys):
    """`ffr run comparison` with the run folder's store: the parent run carries the headline
    (each strategy's test metrics, the comparison table, the figure), integer parameters stay
    integers, the registered version names the code that made it, and `ffr promote` exits 1 when
    the gate rejects."""
    import ffr
    from mlflow import MlflowClient

    from ffr.cli import main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9/never-used")  # inherited: must be ignored
    params = ["demo_per_digit=10", "bias_rate=0.9", "num_shards=1", "train_epochs=1", "pretrain_epochs=1",
              "finetune_epochs=1", "min_steps=0", "device=cpu"]
    assert main(["run", "comparison", "--quiet", "--runs-dir", str(tmp_path / "runs"),
                 *[a for p in params for a in ("--param", p)]]) == 0
    printed = capsys.readouterr()
    assert "is set but not used" in printed.err and "registered: ffr version 1" in printed.out
    (run_dir,) = (tmp_path / "runs").iterdir()
    uri = f"sqlite:///{run_dir / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    exp = client.get_experiment_by_name("ffr")
    parent = client.search_runs([exp.experiment_id], "tags.`ffr.pipeline` = 'comparison'")[0]
    metrics = parent.data.metrics
    for strategy in ("none", "usb", "asb", "ffr"):
        assert {f"{strategy}/test/{m}" for m in ("worst_group_acc", "balanced_acc", "average_acc")} <= set(metrics)
    assert parent.data.params["num_shards"] == "1" and parent.data.params["bias_rate"] == "0.9"
    arts = {a.path for a in client.list_artifacts(parent.info.run_id, "comparison")}
    assert {"comparison/comparison.md", "comparison/comparison.html"} <= arts
    assert "figures/group_accuracy_by_strategy.png" in {a.path for a in client.list_artifacts(parent.info.run_id,
                                                                                                 "figures")}
    assert parent.data.tags["ffr.version"] == ffr.__version__
    version = client.get_model_version("ffr", "1")
    assert version.tags["ffr.version"] == ffr.__version__ and version.tags["ffr.git_commit"]
    rc = main(["promote", "--mlflow-dir", str(run_dir), "--name", "ffr", "--version", "1", "--floor", "0.999"])
    assert rc == 1 and "ffr@champion unchanged" in capsys.readouterr().err
