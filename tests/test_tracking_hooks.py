"""The tracker protocol's record points in the library, checked with an in-memory tracker (no MLflow)."""

from __future__ import annotations

import json

import pytest

from ffr.config import load_config
from ffr.data.manifest import Manifest
from ffr.experiment import run_cell
from ffr.stages import evaluate_stage, train_stage
from ffr.tracking import NullTracker, Tracker, epoch_metrics, flatten
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
        if not method.startswith("log_"):
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
    assert flat["finetune.lr"] == 0.01 and flat["data.image_size"] == 32 and flat["overrides.asb.train.lr"] == 1e-4
    assert flat["strategies"] == ["none", "usb", "asb", "ffr"]
    assert flatten({"a": {}}) == {"a": "{}"}
    assert epoch_metrics({"epoch": 3, "train/loss": 0.5, "val/worst_group_acc": 1, "note": "x"}) == \
        ({"train/loss": 0.5, "val/worst_group_acc": 1.0}, 3)


def test_train_and_evaluate_stage_report_to_the_tracker(make_dataset, tmp_path):
    ds = make_dataset(COUNTS)
    rec = Recorder()
    train_stage(ds, ds, tmp_path / "m.pt", TrainConfig(epochs=3, batch_size=8), image_size=8, device="cpu",
                stage="finetune", tracker=rec)
    params = rec.of("log_params")[0][1][0]
    assert params["finetune.epochs"] == 3 and params["stage"] == "finetune" and params["init"] is None
    steps = [c[1][1] for c in rec.of("log_metrics")]
    assert steps == [0, 1, 2]
    assert all("val/worst_group_acc" in c[1][0] and "train/loss" in c[1][0] for c in rec.of("log_metrics"))
    assert [c[1][1] for c in rec.of("log_dataset")] == ["train", "validation"]
    assert rec.of("log_dataset")[0][1][2] == str(ds)
    assert len(rec.of("log_history")[0][1][0]) == 3
    (model, meta), = [c[1] for c in rec.of("log_model")]
    assert meta["classes"] == ["cat", "dog"] and meta["image_size"] == 8

    rec = Recorder()
    m = evaluate_stage(tmp_path / "m.pt", ds, "test", device="cpu", tracker=rec)
    assert rec.of("log_evaluation") == [("log_evaluation", (m, "test"), {})]
    assert rec.of("log_dataset")[0][1][1:] == ("test", str(ds))


@pytest.mark.parametrize("strategy, stages", [("none", ["train"]), ("ffr", ["pretrain", "finetune"])])
def test_run_cell_opens_a_nested_run_per_stage(make_dataset, tmp_path, strategy, stages):
    real = Manifest.load(make_dataset(COUNTS))
    pool = Manifest.load(make_dataset({("train", l, b): 6 for l in ("cat", "dog") for b in ("indoor", "outdoor")},
                                      name="pool"))
    pool.frame["source"], pool.frame["generator"] = "synthetic", "test"
    cfg = load_config(None, ["data.image_size=8", "data.min_val_per_group=1", "device=cpu",
                             "train.epochs=2", "pretrain.epochs=2", "finetune.epochs=2"])
    rec = Recorder()
    record = run_cell(cfg, real, pool, strategy, 0.75, 0, tmp_path / "cell", tracker=rec)
    assert [c.name for c in rec.children] == stages and all(c.closed for c in rec.children)
    assert rec.of("log_params")[0][1][0]["strategy"] == strategy
    assert [c[1][1] for c in rec.of("log_dataset")] == ["validation", "test"]
    assert rec.of("log_evaluation")[-1][1] == (record["test"], "test")
    for child in rec.children:
        assert [c[1][1] for c in child.of("log_metrics")] == [0, 1]
        assert child.of("log_evaluation")[0][1][1] == "test"
    assert [len(c.of("log_model")) for c in rec.children] == [0] * (len(stages) - 1) + [1]
    assert json.loads((tmp_path / "cell" / "record.json").read_text())["strategy"] == strategy
