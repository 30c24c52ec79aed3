"""The tracker protocol's record points in the library, checked with an in-memory tracker (no MLflow)."""

from __future__ import annotations

import pytest

from ffr.config import load_config
from ffr.experiment import compare
from ffr.train.request import StageRequest
from ffr.steps import evaluate_step, train_stage
from ffr.tracker import NullTracker, Tracker, epoch_metrics, flatten
from ffr.train.loop import TrainConfig

COUNTS = {(s, l, b): 6 for s in ("train", "val", "test") for l in ("cat", "dog") for b in ("indoor", "outdoor")}


class Recorder:
    """Keeps every call, per run; children are Recorders too."""

    def __init__(self, name="root"):
        self.name, self.calls, self.children, self.closed = name, [], [], False

    def child(self, name):
        c = Recorder(name)
        self.children.append(c)
        return c

    def close(self):
        self.closed = True

    def __getattr__(self, method):
        if not method.startswith("log_") and method != "set_tags":
            raise AttributeError(method)
        return lambda *a, **k: self.calls.append((method, a, k))

    def of(self, method):
        return [c for c in self.calls if c[0] == method]


def test_null_tracker_satisfies_the_protocol():
    assert isinstance(NullTracker(), Tracker)
    null = NullTracker()
    assert null.child("x") is null


def test_flatten_and_epoch_metrics():
    cfg = load_config(None, ["finetune.lr=0.01"])
    flat = flatten(cfg)
    assert flat["finetune.lr"] == 0.01 and flat["data.image_size"] == 32 and flat["overrides.usb.train.lr"] == 3e-4
    assert flat["strategies"] == ["none", "usb", "asb", "ffr"]
    assert flatten({"a": {}}) == {"a": "{}"}
    assert epoch_metrics({"epoch": 3, "train/loss": 0.5, "val/worst_group_acc": 1, "note": "x"}) == \
        ({"epoch/train/loss": 0.5, "epoch/val/worst_group_acc": 1.0}, 3)


def test_train_and_evaluate_stage_report_to_the_tracker(make_dataset, tmp_path):
    ds = make_dataset(COUNTS)
    rec = Recorder()
    request = StageRequest("finetune", TrainConfig(epochs=3, min_steps=0, batch_size=8), image_size=8, device="cpu",
                           train_data=str(ds), val_data=str(ds), out=str(tmp_path / "m.pt"))
    train_stage(request, tracker=rec)
    params = rec.of("log_params")[0][1][0]
    assert params["finetune.epochs"] == 3 and params["stage"] == "finetune" and params["init"] is None
    steps = [c[1][1] for c in rec.of("log_metrics")]
    assert steps == [0, 1, 2]
    assert all("epoch/val/worst_group_acc" in c[1][0] and "epoch/train/loss" in c[1][0] for c in rec.of("log_metrics"))
    # the run's own val/* numbers are the selected checkpoint's, with its epoch
    (val, best_epoch), = [c[1] for c in rec.of("log_selection")]
    summary = __import__("json").loads((tmp_path / "m.pt.json").read_text())
    assert val == summary["val"] and best_epoch == summary["best_epoch"]
    assert [c[1][1] for c in rec.of("log_dataset")] == ["train", "validation"]
    assert rec.of("log_dataset")[0][1][2] == str(ds)
    assert len(rec.of("log_history")[0][1][0]) == 3
    (model, meta), = [c[1] for c in rec.of("log_model")]
    assert meta["classes"] == ["cat", "dog"] and meta["image_size"] == 8

    rec = Recorder()
    m = evaluate_step(tmp_path / "m.pt", ds, "test", device="cpu", tracker=rec)
    assert rec.of("log_evaluation") == [("log_evaluation", (m, "test"), {})]
    assert rec.of("log_dataset")[0][1][1:] == ("test", str(ds))


@pytest.mark.slow
def test_compare_reports_a_nested_run_per_cell_and_stage(tmp_path):
    cfg = load_config(None, ["data.demo={per_digit: 10}", "data.min_val_per_group=2", "strategies=[none, ffr]",
                             "bias_rates=[0.9]", "seeds=[0]", "train.epochs=2", "pretrain.epochs=2",
                             "finetune.epochs=2", "train.min_steps=0", "pretrain.min_steps=0",
                             "finetune.min_steps=0", "device=cpu"])
    rec = Recorder()
    records = compare(cfg, tmp_path / "run", progress=False, tracker=rec)
    assert rec.of("log_params")[0][1][0]["finetune.epochs"] == 2
    assert [c[1][1] for c in rec.of("log_dataset")] == ["source"]
    assert [c.name for c in rec.children] == [r["cell"] for r in records]
    for cell, record in zip(rec.children, records):
        assert cell.closed and cell.of("log_params")[0][1][0]["strategy"] == record["strategy"]
        assert [c[1][1] for c in cell.of("log_dataset")] == ["validation", "test"]
        assert cell.of("log_evaluation")[-1][1] == (record["test"], "test")
        stages = [s["name"] for s in record["stages"]]
        assert [c.name for c in cell.children] == stages and all(c.closed for c in cell.children)
        for child in cell.children:
            assert [c[1][1] for c in child.of("log_metrics")] == [0, 1]
            assert [c[1][1] for c in child.of("log_dataset")] == ["train"]
            assert child.of("log_evaluation")[0][1][1] == "test"
        assert [len(c.of("log_model")) for c in cell.children] == [0] * (len(stages) - 1) + [1]
    assert [c[1][0].rsplit("/", 1)[-1] for c in rec.of("log_artifact")] == \
        ["results.md", "results.html", "results.csv", "results.json", "group_accuracy.png"]


def test_a_dataset_two_steps_log_at_once_is_linked_not_a_failure():
    """Two evaluation steps of a pipeline log the same test split at the same moment: MLflow's SQL
    store inserts the dataset twice and one insert fails on its unique key. The tracker tries
    again (the dataset exists then) and fails on any other error at once."""
    pytest.importorskip("mlflow")
    from mlflow.exceptions import MlflowException

    from ffr.integrations.mlflow_tracker import MlflowTracker

    class Client:
        def __init__(self, errors):
            self.errors, self.calls = list(errors), 0

        def log_inputs(self, run_id, inputs):
            self.calls += 1
            if self.errors:
                raise MlflowException(self.errors.pop(0))

    race = Client(["(sqlite3.IntegrityError) UNIQUE constraint failed: datasets.experiment_id, datasets.name"])
    MlflowTracker("r", client=race)._log_inputs([])
    assert race.calls == 2
    other = Client(["RESOURCE_DOES_NOT_EXIST: run r"])
    with pytest.raises(MlflowException, match="RESOURCE_DOES_NOT_EXIST"):
        MlflowTracker("r", client=other)._log_inputs([])
    assert other.calls == 1
