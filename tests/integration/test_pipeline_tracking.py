"""The Kubeflow pipelines with tracking, run by the KFP local runner against the real MLflow server
(SQLite, artifacts in moto's S3) and a DVC project whose remote is that S3: the retraining pipeline
fetches a data revision, logs a parent run with nested step runs, registers its model and runs the
promotion gate, with the data revision in the version's lineage."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

pytest.importorskip("kfp")
pytest.importorskip("dvc")

from kfp.dsl import Dataset, Metrics, Model  # noqa: E402

from ffr.integrations.kubeflow.components import register_model  # noqa: E402
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


def _data_revision(proj: Path, git: str, dvc: str, env: dict, tag: str, per_digit: int) -> str:
    """A new revision of the DVC project's dataset (another size: other images, another test
    split), tagged and pushed; returns its DVC version."""
    from ffr.data.demo import DemoSpec, make_demo

    shutil.rmtree(proj / "data", ignore_errors=True)
    make_demo(proj / "data", DemoSpec(per_digit=per_digit))
    run([dvc, "add", "-q", "data"], proj, env)
    run([git, "add", "-A"], proj, env)
    run([git, "commit", "-qm", f"data {tag}"], proj, env)
    run([git, "tag", tag], proj, env)
    run([dvc, "push", "-q"], proj, env)
    return yaml.safe_load((proj / "data.dvc").read_text())["outs"][0]["md5"]


@pytest.mark.slow
def test_retrain_promotes_on_new_data_keeps_the_history_and_rolls_back(tmp_path, mlflow_env, s3_env, bucket, capsys):
    """Scheduled retraining as it runs: a DVC data repository whose second revision has another test
    split. Revision 1 makes the champion; on revision 2 the champion is evaluated again on the new
    test split before the gate, so a better challenger is promoted (not refused for other data)
    and a worse one is kept; `ffr promote --history` lists the three decisions with their data;
    `--rollback` restores the first champion."""
    import mlflow
    from mlflow import MlflowClient

    from ffr.cli import main
    from ffr.integrations.kubeflow.pipelines.run import run_local
    from ffr.promotion import Evaluation, GatePolicy, decide

    env = _env(tmp_path, {**DUMMY_AWS})
    dvc, git = binary("dvc"), shutil.which("git")
    proj = tmp_path / "data-repo"
    proj.mkdir()
    run([git, "init", "-q"], proj, env)
    run([dvc, "init", "-q"], proj, env)
    run([dvc, "remote", "add", "-d", "s3store", f"s3://{bucket}/dvc"], proj, env)
    run([dvc, "remote", "modify", "--local", "s3store", "endpointurl", s3_env.url], proj, env)
    md5 = {"v1": _data_revision(proj, git, dvc, env, "v1", 10), "v2": _data_revision(proj, git, dvc, env, "v2", 14)}
    name = "retrain-test"
    # a mild bias (0.6): a few epochs learn every group, so "better" is a matter of training, not luck
    base = {"data_repo": str(proj), "data_path": "data", "data_endpoint": s3_env.url, "data_bias_rate": 0.6,
            "data_min_val_per_group": 2, "synthesis_shards": 1, "train_min_steps": 0, "train_device": "cpu", "mlflow_registered_model": name,
            "gate_floor": 0.0, "gate_tolerance": 1.0, "gate_margin": 0.0}
    weak = {"train_pretrain_epochs": 1, "train_finetune_epochs": 1, "train_pretrain_lr": 1e-7, "train_finetune_lr": 1e-7}
    strong = {"train_pretrain_epochs": 4, "train_finetune_epochs": 10, "train_pretrain_lr": 1e-3, "train_finetune_lr": 1e-3,
              "train_batch_size": 16, "train_min_steps": 150}
    runs = tmp_path / "runs"
    first = run_local("retrain", {**base, **weak, "data_rev": "v1"}, runs, progress=False, mlflow=mlflow_env.url)
    second = run_local("retrain", {**base, **strong, "data_rev": "v2"}, runs, progress=False, mlflow=mlflow_env.url)
    third = run_local("retrain", {**base, **weak, "data_rev": "v2", "gate_margin": 0.5}, runs, progress=False,
                      mlflow=mlflow_env.url)

    mlflow.set_tracking_uri(mlflow_env.url)
    client = MlflowClient(mlflow_env.url, registry_uri=mlflow_env.url)
    assert main(["promote", "--mlflow", mlflow_env.url, "--name", name, "--history"]) == 0
    listed = capsys.readouterr().out
    from ffr.integrations.model_registry import history

    h = history(mlflow_env.url, name)
    assert [r["version"] for r in h] == ["1", "2", "3"] and [r["verdict"] for r in h] == ["promoted", "promoted",
                                                                                          "rejected"], h
    digest = {v: r.results["ffr"]["data_digest"] for v, r in (("v1", first), ("v2", second))}
    assert digest["v1"] != digest["v2"]  # the revisions' test splits differ
    assert h[0]["champion"] is None and h[0]["challenger"]["test_digest"] == digest["v1"]
    for r in h[1:]:  # the champion was evaluated again, on the challenger's test split
        assert r["challenger"]["test_digest"] == r["champion"]["test_digest"] == digest["v2"], r
        ch, cp = (Evaluation(e["worst_group_acc"], e["groups"], e["test_digest"]) for e in (r["challenger"], r["champion"]))
        assert decide(ch, cp, GatePolicy(**r["policy"])).promote == (r["verdict"] == "promoted")
        assert r["pipeline_run_id"]
    assert h[1]["champion"]["worst_group_acc"] < h[1]["challenger"]["worst_group_acc"]
    assert third.results["ffr"]["data_digest"] == digest["v2"]
    assert all(d["test_digest"][:12] in listed for r in h for d in (r["challenger"], r["champion"]) if d)
    assert client.get_model_version_by_alias(name, "champion").version == "2"
    # the decision is shown where users look: the register run and the pipeline's own run
    exp = client.get_experiment_by_name("ffr")
    parents = [r for r in client.search_runs([exp.experiment_id], "tags.`ffr.pipeline` = 'retrain'",
                                             order_by=["attributes.start_time ASC"])
               if "mlflow.parentRunId" not in r.data.tags]  # its nested runs carry the pipeline's tag too
    assert [p.data.tags["gate.decision"] for p in parents] == ["promoted", "promoted", "rejected"]
    # rollback: the champion before version 2, recorded as a decision too
    assert main(["promote", "--mlflow", mlflow_env.url, "--name", name, "--rollback"]) == 0
    assert client.get_model_version_by_alias(name, "champion").version == "1"
    h = history(mlflow_env.url, name)
    assert h[-1]["action"] == "rollback" and h[-1]["version"] == "1" and h[-1]["replaced"] == "2"
    assert main(["promote", "--mlflow", mlflow_env.url, "--name", name, "--rollback"]) == 3  # nothing before v1

    # One model, linked: the version's logged model knows its versions and carries its test
    # numbers; the stage runs show the selected epoch, and their val/* are the selected checkpoint's
    v2 = client.get_model_version(name, "2")
    assert v2.source.startswith("models:/m-")  # the version points at the logged model, as register_model does
    logged = client.get_logged_model(v2.source.removeprefix("models:/"))
    assert {"name": name, "version": "2"} in json.loads(logged.tags["mlflow.modelVersions"])
    assert {m.key for m in logged.metrics} >= {"test/worst_group_acc", "val/worst_group_acc", "best_epoch"}
    fine = client.get_run(v2.run_id)
    assert fine.info.run_name == "finetune" and "best_epoch" in fine.data.metrics
    curve = {m.step: m.value for m in client.get_metric_history(fine.info.run_id, "epoch/val/worst_group_acc")}
    assert fine.data.metrics["val/worst_group_acc"] == pytest.approx(curve[int(fine.data.metrics["best_epoch"])])
    assert md5["v1"] != md5["v2"]
    tags = v2.tags
    assert tags["lineage.data.source.rev"] == "v2" and tags["lineage.data.source.dvc_md5"] == md5["v2"]
    assert tags["lineage.data.source.commit"] == run([git, "rev-parse", "v2"], proj, env).strip()
    import ffr

    assert tags["ffr.version"] == ffr.__version__ and tags.get("ffr.git_commit")
    import pandas as pd

    from ffr.integrations.serving import example_png

    model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
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
    params = ["data_demo_per_digit=10", "data_bias_rate=0.9", "synthesis_shards=1", "train_baseline_epochs=1", "train_pretrain_epochs=1",
              "train_finetune_epochs=1", "train_min_steps=0", "train_device=cpu"]
    assert main(["run", "comparison", "--quiet", "--runs-dir", str(tmp_path / "runs"),
                 *[a for p in params for a in ("--param", p)]]) == 0
    printed = capsys.readouterr()
    assert "is set but not used" in printed.err and "registered: ffr version 1" in printed.out
    (run_dir,) = (tmp_path / "runs").iterdir()
    uri = f"sqlite:///{run_dir / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    exp = client.get_experiment_by_name("ffr")
    runs = client.search_runs([exp.experiment_id], "tags.`ffr.pipeline` = 'comparison'")
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    metrics = parent.data.metrics
    for strategy in ("none", "usb", "asb", "ffr"):
        assert {f"{strategy}/test/{m}" for m in ("worst_group_acc", "balanced_acc", "average_acc")} <= set(metrics)
        # one value per metric: each evaluation step logs its own strategy's headline, the report none
        assert len(client.get_metric_history(parent.info.run_id, f"{strategy}/test/worst_group_acc")) == 1
    # what users read in the UI: every run says what it is, so the runs table groups by strategy
    children = [r for r in runs if r is not parent]
    assert all(r.data.tags["mlflow.parentRunId"] == parent.info.run_id for r in children)
    assert all(r.data.tags["ffr.bias_rate"] == "0.9" and r.data.tags["ffr.seed"] == "0" for r in runs)
    evaluations = {r.data.tags["ffr.strategy"]: r for r in children if r.data.tags.get("ffr.stage") == "evaluate"}
    assert set(evaluations) == {"none", "usb", "asb", "ffr"}
    for r in evaluations.values():  # one metric name across runs: MLflow charts it per strategy
        assert "test/worst_group_acc" in r.data.metrics
        assert not [k for k in r.data.metrics if k.endswith("/n")]  # group sizes are parameters
        assert any(k.endswith("/n") for k in r.data.params)
    stages = {(r.data.tags["ffr.strategy"], r.data.tags["ffr.stage"]) for r in children
              if r.data.tags.get("ffr.stage") not in ("evaluate", "register")}
    assert {("ffr", "pretrain"), ("ffr", "finetune"), ("none", "train"), ("usb", "train")} <= stages
    assert all(r.data.tags["ffr.objective"] for r in children if r.data.tags.get("ffr.stage") == "finetune")
    sources = {r.data.tags["mlflow.source.name"] for r in runs}
    assert "ffr comparison pipeline" in sources and "ffr comparison pipeline: evaluate" in sources
    assert not any("executor_main" in s for s in sources)
    note = parent.data.tags["mlflow.note.content"]  # the description: the comparison and the gate's verdict
    assert note.index("## Comparison") < note.index("## Promotion gate") and "worst" in note
    assert "version 1" in note and parent.data.tags["gate.decision"] in note.split("## Promotion gate")[1]
    experiment = client.get_experiment(exp.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert "ffr.strategy" in experiment.tags["mlflow.note.content"]
    assert client.get_experiment("0").lifecycle_stage == "deleted"  # no stray Default experiment
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
