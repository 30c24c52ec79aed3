"""MLflow tracking against a real ``mlflow server`` (SQLite backend, artifacts in moto's S3), both on
127.0.0.1: a run logs nested runs per cell and stage, per-epoch metrics, tables, figures, dataset
inputs, system metrics and a model that loads back and predicts any batch size."""

from __future__ import annotations

import numpy as np
import pytest

from ffr.config import load_config
from ffr.experiment import compare
from ffr.integrations.mlflow_server import TrackingError
from ffr.integrations.mlflow_runs import mlflow_run
from ffr.train.request import StageRequest
from ffr.steps import evaluate_step, train_stage
from ffr.train.loop import TrainConfig
from tests.integration.servers import free_port

TINY = ["data.demo={per_digit: 12}", "data.min_val_per_group=2", "strategies=[none, ffr]", "bias_rates=[0.9]",
        "seeds=[0]", "train.epochs=2", "pretrain.epochs=2", "finetune.epochs=2", "train.min_steps=0", "pretrain.min_steps=0",
        "finetune.min_steps=0", "device=cpu"]


def _children(client, run):
    return client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}'")


@pytest.mark.slow
def test_compare_run_logs_nested_runs_metrics_tables_and_model(mlflow_env, tmp_path):
    import mlflow
    from mlflow import MlflowClient

    cfg = load_config(None, TINY)
    with mlflow_run(mlflow_env.url, "test-compare", "compare", tags={"ffr.pipeline_run_id": "p-1",
                                                                     "ffr.pipeline": "compare"}) as t:
        records = compare(cfg, tmp_path / "run", progress=False, tracker=t)
        parent_id = t.run_id
    client = MlflowClient(mlflow_env.url, registry_uri=mlflow_env.url)
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.params["finetune.epochs"] == "2" and parent.data.tags["ffr.pipeline_run_id"] == "p-1"
    assert any(k.startswith("system/") for k in parent.data.metrics), parent.data.metrics.keys()
    assert {a.path for a in client.list_artifacts(parent_id)} >= {"results.md", "results.html", "results.csv",
                                                                 "results.json", "group_accuracy.png"}
    # the headline on the parent run itself: each strategy's mean test numbers
    assert {f"{s}/test/{m}" for s in ("none", "ffr") for m in ("worst_group_acc", "balanced_acc", "average_acc")} \
        <= set(parent.data.metrics)

    cells = {r.data.params["strategy"]: r for r in _children(client, parent)}
    assert set(cells) == {"none", "ffr"}
    ffr_cell = cells["ffr"]
    record = next(r for r in records if r["strategy"] == "ffr")
    assert ffr_cell.data.metrics["test/worst_group_acc"] == pytest.approx(record["test"]["worst_group_acc"])
    stages = {r.info.run_name: r for r in _children(client, ffr_cell)}
    assert set(stages) == {"pretrain", "finetune"}
    fine = stages["finetune"]
    # every run says what it is; a stage inherits its cell's tags, so the runs table groups by strategy
    for name, run in [*cells.items(), *(("ffr", s) for s in stages.values())]:
        assert run.data.tags["ffr.strategy"] == name and run.data.tags["ffr.pipeline"] == "compare"
        assert run.data.tags["ffr.bias_rate"] == "0.9" and run.data.tags["ffr.seed"] == "0"
    assert {s.data.tags["ffr.stage"] for s in stages.values()} == {"pretrain", "finetune"}
    assert not [k for k in fine.data.metrics if k.endswith("/n")]  # group sizes: parameters, not metrics
    assert any(k.startswith("test/group/") and k.endswith("/n") for k in fine.data.params)
    # the selected checkpoint's numbers are logged once (linked to the model), not twice
    assert len(client.get_metric_history(fine.info.run_id, "val/worst_group_acc")) == 1
    assert "## Comparison" in parent.data.tags["mlflow.note.content"]  # the results table as its description
    experiment = client.get_experiment(parent.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    history = client.get_metric_history(fine.info.run_id, "epoch/val/worst_group_acc")
    assert [m.step for m in sorted(history, key=lambda m: m.step)] == [0, 1]
    assert len(client.get_metric_history(fine.info.run_id, "epoch/train/loss")) == 2
    # the run's own numbers are the selected checkpoint's, not the last epoch's
    stage = record["stages"][-1]
    assert fine.data.metrics["val/worst_group_acc"] == pytest.approx(stage["val"]["worst_group_acc"])
    assert fine.data.metrics["best_epoch"] == stage["best_epoch"] and fine.data.tags["ffr.best_epoch"] == \
        str(stage["best_epoch"])
    assert any(k.startswith("val/group/") and k.endswith("/acc") for k in fine.data.metrics)
    arts = {a.path for a in client.list_artifacts(fine.info.run_id, "test")} | \
        {a.path for a in client.list_artifacts(fine.info.run_id, "figures")}
    assert {"test/groups.json", "test/group_accuracy.png", "figures/val_wga_by_epoch.png"} <= arts
    table = mlflow.load_table("test/groups.json", run_ids=[fine.info.run_id])
    assert set(table["group"]) == set(record["test"]["groups"])
    contexts = {[t.value for t in d.tags if t.key == "mlflow.data.context"][0] for d in fine.inputs.dataset_inputs}
    assert contexts == {"train"}
    assert {[t.value for t in d.tags if t.key == "mlflow.data.context"][0]
            for d in ffr_cell.inputs.dataset_inputs} == {"validation", "test"}

    # The model of the cell's last stage, loaded back, classifies images in batches of any size.
    assert "ffr.model_uri" not in stages["pretrain"].data.tags
    import pandas as pd

    from ffr.integrations.serving import example_png

    pyfunc = mlflow.pyfunc.load_model(fine.data.tags["ffr.model_uri"])
    assert pyfunc.metadata.signature is not None
    for n in (1, 7):
        answer = pyfunc.predict(pd.DataFrame({"image": [example_png(32)] * n}))
        assert len(answer) == n and set(answer["class"]) <= {"low", "high"}


@pytest.mark.slow
def test_stage_runs_record_dvc_digests_and_uris(mlflow_env, tmp_path, make_dataset):
    from mlflow import MlflowClient

    from ffr.integrations.dvc import dir_digest

    counts = {(s, l, b): 6 for s in ("train", "val", "test") for l in ("cat", "dog") for b in ("indoor", "outdoor")}
    ds = make_dataset(counts)
    with mlflow_run(mlflow_env.url, "test-stages", "stages") as t:
        train_stage(StageRequest(settings=TrainConfig(epochs=1, min_steps=0, batch_size=16), image_size=8, device="cpu",
                                 train_data=str(ds), val_data=str(ds), out=str(tmp_path / "m.pt")), tracker=t)
        evaluate_step(tmp_path / "m.pt", ds, "test", tmp_path / "test.json", device="cpu", tracker=t)
        run_id = t.run_id
    run = MlflowClient(mlflow_env.url).get_run(run_id)
    digest = dir_digest(ds)
    assert run.data.tags["data.train.dvc_md5"] == digest == run.data.tags["data.test.dvc_md5"]
    assert run.data.tags["data.train.uri"] == str(ds.resolve())
    inputs = {d.dataset.digest for d in run.inputs.dataset_inputs}
    assert inputs == {digest}
    assert "test/worst_group_acc" in run.data.metrics and "ffr.model_uri" in run.data.tags


def test_server_down_is_a_clear_error_after_bounded_retries(monkeypatch):
    dead = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(TrackingError, match=r"not reachable \(3 attempts"):
        with mlflow_run(dead, "never"):
            pass


@pytest.mark.slow
def test_cli_local_store_in_the_run_folder_and_promote(tmp_path, capsys, monkeypatch):
    """`ffr compare --mlflow` (no server: a store inside the run folder, as `make demo` uses) and
    `ffr promote --run-id` on one of its cells."""
    pytest.importorskip("mlflow")
    import mlflow
    from mlflow import MlflowClient

    from ffr.cli import main

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "run"
    sets = [a for s in TINY if not s.startswith("strategies") for a in ("--set", s)]
    assert main(["compare", "--out", str(out), "--quiet", "--mlflow", *sets, "--set", "strategies=[ffr]"]) == 0
    uri = f"sqlite:///{out.resolve() / 'mlflow.db'}"
    printed = capsys.readouterr().out
    assert f"mlflow ui --backend-store-uri {uri}" in printed and "runs?workflowType=machine_learning" in printed
    client = MlflowClient(uri, registry_uri=uri)
    cell = client.search_runs([client.get_experiment_by_name("ffr").experiment_id], "params.strategy = 'ffr'")[0]
    runs = client.search_runs([cell.info.experiment_id], "")
    assert {r.data.tags["mlflow.source.name"] for r in runs} == {"ffr compare"}  # not the entry script's name
    assert client.get_experiment("0").lifecycle_stage == "deleted"  # no Default experiment pointing elsewhere
    assert main(["promote", "--mlflow-dir", str(out), "--name", "demo-model", "--run-id", cell.info.run_id,
                 "--floor", "0"]) == 0
    printed = capsys.readouterr().out
    assert "registered demo-model version 1" in printed and "demo-model@champion -> version 1" in printed
    tags = client.get_model_version("demo-model", "1").tags
    assert tags["lineage.run_id"] == cell.info.run_id
    assert tags["test.test_digest"] == tags["lineage.data.test.digest"] == cell.data.tags["data.test.digest"]
    assert float(tags["test.worst_group_acc"]) == cell.data.metrics["test/worst_group_acc"]
    assert (out / "mlartifacts").is_dir()
    mlflow.set_tracking_uri(uri)
    pyfunc = mlflow.pyfunc.load_model("models:/demo-model@champion")
    from ffr.integrations.serving import example_png
    import pandas as pd

    answer = pyfunc.predict(pd.DataFrame({"image": [example_png(32)] * 3}))
    assert len(answer) == 3 and set(answer["class"]) <= {"low", "high"}
    # the gate now rejects (a champion exists; same numbers, no gain): a decision, exit 1
    assert main(["promote", "--mlflow-dir", str(out), "--name", "demo-model", "--run-id", cell.info.run_id,
                 "--floor", "0"]) == 1
    assert "demo-model@champion unchanged: version 2 was not promoted" in capsys.readouterr().err


@pytest.mark.slow
def test_server_gone_mid_compare_costs_only_the_tracking(mlflow_env, proxy_to, tmp_path, monkeypatch, capsys):
    """The tracking server stops answering after the cells have trained (every request through the
    proxy dropped from then on): `ffr compare` still writes results.json/md/csv, prints its table,
    reports the tracking failure once — no traceback — and exits 0."""
    import ffr.experiment as experiment
    from ffr.cli import main

    proxy = proxy_to(mlflow_env)
    real_log_cell, cut = experiment.log_cell, []

    def cut_then_log(*args, **kwargs):
        if not cut:
            cut.append(1)
            proxy.fail(lambda method, path: True, lambda n: "drop")
        return real_log_cell(*args, **kwargs)

    monkeypatch.setattr(experiment, "log_cell", cut_then_log)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    out = tmp_path / "cmp"
    rc = main(["compare", "--out", str(out), "--quiet", "--mlflow", proxy.url, *[a for s in TINY for a in ("--set", s)]])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert all((out / f).is_file() for f in ("results.json", "results.md", "results.csv"))
    assert captured.err.count("ffr: warning: tracking stopped") == 1 and "Traceback" not in captured.err
    assert "ffr: error" not in captured.err and "| ffr |" in captured.out
