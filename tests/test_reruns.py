"""Exact reruns: the same grid gives bit-identical metrics and checkpoints whatever the machine's
load and whatever ``--workers`` — the default thread count is fixed per process (the machine's
usable CPUs), because the thread count changes float rounding. On this grid weights trained with
1 and 2 threads differ from the first epoch, so a load- or worker-dependent count would fail it."""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys

import pytest
import torch
import yaml

from ffr.cli import main

pytestmark = pytest.mark.slow

GRID = {"data": {"dataset": "demo", "image_size": 32}, "backbone": "tiny_cnn", "strategies": ["none"],
        "bias_rates": [0.95], "seeds": [0, 1], "train": {"epochs": 1, "min_steps": 0}}


def _weights(out):
    """Stage key → state dict of every stage checkpoint of a grid."""
    return {p.parent.name: torch.load(p, weights_only=False)["state_dict"] for p in sorted(out.glob("stages/*/model.pt"))}


def _metrics(out):
    return [json.dumps({k: r[k] for k in ("strategy", "seed", "val", "test")}, sort_keys=True)
            for r in json.loads((out / "results.json").read_text())]


def _run(config, out, *args):
    assert main(["compare", "--config", str(config), "--out", str(out), "--quiet", *args]) == 0


def test_same_grid_is_bit_identical_under_load_and_with_more_workers(tmp_path):
    config = tmp_path / "grid.yaml"
    config.write_text(yaml.safe_dump(GRID))
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(multiprocessing.cpu_count())]
    try:
        _run(config, tmp_path / "loaded", "--workers", "1")  # the CPUs kept busy by others
    finally:
        for p in busy:
            p.kill()
            p.wait()
    _run(config, tmp_path / "two-workers", "--workers", "2")
    assert _metrics(tmp_path / "loaded") == _metrics(tmp_path / "two-workers")
    a, b = _weights(tmp_path / "loaded"), _weights(tmp_path / "two-workers")
    assert a.keys() == b.keys() and len(a) == 2
    for key in a:
        assert all(torch.equal(a[key][name], b[key][name]) for name in a[key]), key


def test_the_thread_count_changes_the_weights_so_the_test_above_can_fail(tmp_path):
    config = tmp_path / "grid.yaml"
    config.write_text(yaml.safe_dump({**GRID, "seeds": [0]}))
    _run(config, tmp_path / "one", "--set", "train.num_threads=1")
    _run(config, tmp_path / "two", "--set", "train.num_threads=2")
    (a,), (b,) = _weights(tmp_path / "one").values(), _weights(tmp_path / "two").values()
    if torch.get_num_threads() < 2 and all(torch.equal(a[n], b[n]) for n in a):
        pytest.skip("one CPU: both counts ran alike")
    assert not all(torch.equal(a[n], b[n]) for n in a)
