"""Concurrent and partial failures: two runs into one output, a killed holder, a tracking backend
that dies mid-run, a rerun of ``ffr train`` that fails, and inputs that change under a resumable
grid (a dataset rewritten under the same path, images replaced in place)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import write_png
from ffr.cli import main
from ffr.config import ExperimentConfig, from_dict

ROOT = Path(__file__).resolve().parents[1]
LAYOUT = {("train", "cat", "indoor"): 12, ("train", "cat", "outdoor"): 3, ("train", "dog", "indoor"): 3,
          ("train", "dog", "outdoor"): 12, ("val", "cat", "indoor"): 3, ("val", "cat", "outdoor"): 3,
          ("val", "dog", "indoor"): 3, ("val", "dog", "outdoor"): 3, ("test", "cat", "indoor"): 2,
          ("test", "cat", "outdoor"): 2, ("test", "dog", "indoor"): 2, ("test", "dog", "outdoor"): 2}


def folder_dataset(root: Path, offset: int = 0) -> Path:
    seed = offset
    for (split, label, bias), n in LAYOUT.items():
        for i in range(n):
            seed += 1
            write_png(root / split / label / bias / f"{i}.png", seed)
    return root


def tiny(root: Path, strategies=("none",)) -> ExperimentConfig:
    return from_dict(ExperimentConfig, {
        "data": {"dataset": str(root), "adapter": "folder", "image_size": 8, "min_val_per_group": 2},
        "backbone": "tiny_cnn", "strategies": list(strategies), "bias_rates": [0.8], "seeds": [0],
        "synthesis": {"options": {"image_size": 8}},
        "train": {"epochs": 1, "min_steps": 0, "batch_size": 8}, "pretrain": {"epochs": 1, "min_steps": 0, "batch_size": 8},
        "finetune": {"epochs": 1, "min_steps": 0, "batch_size": 8}})


def hold_lock(folder: Path, name: str = ".ffr.lock") -> subprocess.Popen:
    """Another process holding ``folder``'s lock until killed."""
    code = ("import sys, time\nfrom ffr.locks import output_lock\n"
            f"with output_lock({str(folder)!r}, {name!r}):\n    print('held', flush=True)\n    time.sleep(120)\n")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert p.stdout.readline().strip() == "held"
    return p


def test_a_second_compare_into_one_folder_stops_naming_the_first(tmp_path, capsys):
    holder = hold_lock(tmp_path / "out")
    try:
        rc = main(["compare", "--set", "strategies=[none]", "--set", "seeds=[0]", "--out", str(tmp_path / "out")])
        err = capsys.readouterr().err
        assert rc == 2 and "another ffr run is writing here" in err and f"pid {holder.pid}" in err
        assert not (tmp_path / "out" / "data").exists()  # it stopped before doing anything
    finally:
        holder.kill()
        holder.wait()


def test_a_killed_holder_never_blocks_the_next_run(tmp_path):
    from ffr.locks import output_lock

    holder = hold_lock(tmp_path / "out")
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (tmp_path / "out" / ".ffr.lock").exists()  # the stale file is there ...
    with output_lock(tmp_path / "out"):                # ... and does not block
        pass
    assert not (tmp_path / "out" / ".ffr.lock").exists()


def test_a_stage_two_runs_want_is_done_by_the_first_while_the_other_waits(tmp_path, capsys, monkeypatch):
    """Two grids that share a stage cache and meet on one stage: the second waits (saying for whom
    and for what) and gets the folder only once the first has finished its work there. The holder
    finishes only once the waiter is blocked, so the order is fixed, not a matter of timing."""
    import ffr.locks as locks

    stage = tmp_path / "stages" / "abc123"
    go = tmp_path / "go"
    code = ("import time\nfrom pathlib import Path\nfrom ffr.locks import work_lock\n"
            f"with work_lock({str(stage)!r}, 'training stage abc123'):\n    print('held', flush=True)\n"
            f"    while not Path({str(go)!r}).exists():\n        time.sleep(0.02)\n"
            f"    Path({str(stage / 'model.pt.json')!r}).write_text('done')\n")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)})
    lock_file = locks._lock_file

    def blocking(path, wait):
        if wait:
            go.write_text("")  # the holder may finish now: this process is about to block on it
        return lock_file(path, wait)

    monkeypatch.setattr(locks, "_lock_file", blocking)
    try:
        assert holder.stdout.readline().strip() == "held"
        with locks.work_lock(stage, "training stage abc123"):
            assert (stage / "model.pt.json").read_text() == "done"   # the first one's work is there
        err = capsys.readouterr().err
        assert f"ffr: waiting for pid {holder.pid}" in err and "which is training stage abc123" in err
        assert holder.wait(30) == 0
        assert not (stage / ".ffr.lock").exists()
        go.unlink()
        with locks.work_lock(stage, "training stage abc123"):  # free now: no wait, no message
            pass
        assert capsys.readouterr().err == "" and not go.exists()
    finally:
        holder.kill()
        holder.wait()


def test_two_trainings_of_one_checkpoint_do_not_both_run(tmp_path, capsys):
    folder_dataset(tmp_path / "ds")
    assert main(["prepare", "--set", "data.adapter=folder", "--set", f"data.dataset={tmp_path / 'ds'}",
                 "--set", "data.min_val_per_group=2", "--bias-rate", "0.8", "--out", str(tmp_path / "prep")]) == 0
    holder = hold_lock(tmp_path / "models", "model.pt.lock")
    try:
        rc = main(["train", "--train", str(tmp_path / "prep"), "--val", str(tmp_path / "prep"), "--set",
                   "backbone=tiny_cnn", "--set", "data.image_size=8", "--set", "train.epochs=1", "--set", "train.min_steps=0",
                   "--out", str(tmp_path / "models" / "model.pt")])
        assert rc == 2 and f"pid {holder.pid}" in capsys.readouterr().err
        assert not (tmp_path / "models" / "model.pt").exists()
    finally:
        holder.kill()
        holder.wait()


def test_a_failed_rerun_of_train_keeps_the_previous_model_and_history(tmp_path, monkeypatch):
    import ffr.train.loop as loop

    folder_dataset(tmp_path / "ds")
    assert main(["prepare", "--set", "data.adapter=folder", "--set", f"data.dataset={tmp_path / 'ds'}",
                 "--set", "data.min_val_per_group=2", "--bias-rate", "0.8", "--out", str(tmp_path / "prep")]) == 0
    argv = ["train", "--train", str(tmp_path / "prep"), "--val", str(tmp_path / "prep"), "--set", "backbone=tiny_cnn",
            "--set", "data.image_size=8", "--set", "train.epochs=3", "--set", "train.min_steps=0", "--out", str(tmp_path / "m.pt")]
    assert main(argv) == 0
    before = {p.name: p.read_bytes() for p in tmp_path.glob("m.pt*")}
    assert set(before) == {"m.pt", "m.pt.history.jsonl", "m.pt.json"}
    real_fit = loop.fit

    def dies_after_one_epoch(*args, log=None, **kwargs):
        def logged(rec):
            log(rec)
            raise KeyboardInterrupt("killed mid-run")
        return real_fit(*args, log=logged, **kwargs)

    monkeypatch.setattr(loop, "fit", dies_after_one_epoch)
    with pytest.raises(KeyboardInterrupt):
        main(argv + ["--seed", "5"])
    assert {p.name: p.read_bytes() for p in tmp_path.glob("m.pt*") if not p.name.endswith(".tmp")} == before


class DyingTracker:
    """A tracker whose backend goes away after ``alive`` calls (as an MLflow server killed during
    a grid): every later call raises, the way the MLflow client does."""

    def __init__(self, alive: int):
        self.alive, self.calls = alive, 0

    def _call(self, *args, **kwargs):
        self.calls += 1
        if self.calls > self.alive:
            raise ConnectionError("API request to http://alice:s3cret@127.0.0.1:5000/api/2.0/mlflow/runs/log-batch "
                                  "failed: Max retries exceeded")

    def child(self, name):
        self._call()
        return self

    def __getattr__(self, name):
        if name.startswith(("log_", "set_")) or name == "close":
            return self._call
        raise AttributeError(name)


@pytest.mark.slow
def test_tracking_dying_mid_run_costs_no_local_result(tmp_path, capsys):
    from ffr.experiment import compare

    folder_dataset(tmp_path / "ds")
    records = compare(tiny(tmp_path / "ds", ("none", "ffr")), tmp_path / "out", progress=False,
                      tracker=DyingTracker(alive=4))
    assert len(records) == 2
    for name in ("results.json", "results.md", "results.csv"):
        assert (tmp_path / "out" / name).is_file()
    err = capsys.readouterr().err
    assert err.count("ffr: warning: tracking stopped") == 1 and "Traceback" not in err
    assert "s3cret" not in err and "alice:***@" in err


@pytest.mark.slow
def test_a_dataset_rewritten_under_the_same_path_is_not_served_from_old_cells(tmp_path):
    from ffr.experiment import compare

    folder_dataset(tmp_path / "ds")
    first = compare(tiny(tmp_path / "ds"), tmp_path / "out", progress=False)
    # the same path, other images (a new export of the data): cells and stages must be recomputed
    folder_dataset(tmp_path / "ds", offset=1000)
    for p in (tmp_path / "ds").rglob("*.png"):  # and a different size, as a re-encoded export has
        p.write_bytes(p.read_bytes() + b"\0")
    second = compare(tiny(tmp_path / "ds"), tmp_path / "out", progress=False)
    assert first[0]["cell"] != second[0]["cell"]
    assert first[0]["stages"][0]["key"] != second[0]["stages"][0]["key"]
    again = compare(tiny(tmp_path / "ds"), tmp_path / "out", progress=False)
    assert again[0]["cell"] == second[0]["cell"]  # unchanged data: resumed, not recomputed


def test_images_replaced_in_place_are_not_served_from_the_old_cache(tmp_path):
    from ffr.data.cache import open_cache
    from ffr.data.sources import load_dataset

    folder_dataset(tmp_path / "ds")
    m = load_dataset("folder", tmp_path / "ds")
    old = open_cache(m, 8, tmp_path / "cache").tensors(m).images[:].clone()
    target = tmp_path / "ds" / m.frame["path"][0]
    write_png(target, 99999)  # new pixels under the same name: the manifest is unchanged
    new = open_cache(m, 8, tmp_path / "cache").tensors(m).images[:].clone()
    assert not (new == old).all()

    # A rewrite that keeps the size and the modification time: only --verify (content) sees it.
    stat, size = target.stat(), target.stat().st_size
    for seed in range(100000, 101000):
        write_png(tmp_path / "candidate.png", seed)
        if (tmp_path / "candidate.png").stat().st_size == size:
            break
    else:
        pytest.skip("no same-size PNG found")
    os.replace(tmp_path / "candidate.png", target)
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (open_cache(m, 8, tmp_path / "cache").tensors(m).images[:] == new).all()  # size + time: fooled
    verified = open_cache(m, 8, tmp_path / "cache", verify=True).tensors(m).images[:]
    assert not (verified == new).all()


def test_a_holder_still_locks_the_other_folders_it_writes(tmp_path):
    """Inside one run's lock a second output (sweep's per-dataset folders) is really locked too."""
    from ffr.locks import output_lock

    with output_lock(tmp_path / "sweep"):
        with output_lock(tmp_path / "sweep" / "a"):
            code = ("from ffr.locks import output_lock, OutputBusy\n"
                    f"try:\n    with output_lock({str(tmp_path / 'sweep' / 'a')!r}):\n        print('got it')\n"
                    "except OutputBusy as e:\n    print('busy', e)\n")
            env = {k: v for k, v in os.environ.items() if k != "FFR_LOCK_HELD"}
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                                 env={**env, "PYTHONPATH": str(ROOT)}, timeout=60)
            assert out.stdout.startswith("busy") and f"pid {os.getpid()}" in out.stdout


def test_sweep_checks_every_dataset_before_the_first_grid(tmp_path):
    from ffr.config import ConfigError
    from ffr.experiment import sweep

    cfg = from_dict(ExperimentConfig, {"datasets": {"a": {}, "b": {"backbone": "resnet9000"}, "c": 5}})
    with pytest.raises(ConfigError) as e:
        sweep(cfg, tmp_path / "sw", progress=False)
    assert "datasets.b" in str(e.value) and "resnet9000" in str(e.value) and "datasets.c" in str(e.value)
    assert not (tmp_path / "sw").exists()


def test_a_busy_checkpoint_is_named_not_its_folder(tmp_path):
    """Two `ffr train` into one checkpoint: the refusal names the checkpoint file."""
    from ffr.locks import OutputBusy, output_lock

    holder = hold_lock(tmp_path, "model.pt.lock")
    try:
        with pytest.raises(OutputBusy, match=f"^{tmp_path / 'model.pt'}: another ffr run is writing here"):
            with output_lock(tmp_path, "model.pt.lock"):
                pass
    finally:
        holder.kill()
