"""End to end: `ffr compare` on a tiny grid of the demo benchmark, through the real entry point."""

from __future__ import annotations

import json

import pytest
import yaml

from ffr.cli import main

pytestmark = pytest.mark.slow


def _config(tmp_path, **extra):
    cfg = {
        "data": {"dataset": "demo", "image_size": 16, "demo": {"per_digit": 40, "image_size": 16}},
        "strategies": ["none", "usb", "asb", "ffr"],
        "bias_rates": [0.9],
        "seeds": [0, 1],
        "train": {"epochs": 2, "min_steps": 0, "batch_size": 64},
        "pretrain": {"epochs": 2, "min_steps": 0, "batch_size": 64},
        "finetune": {"epochs": 2, "min_steps": 0, "batch_size": 64},
        "search": {"ffr": {"finetune.lr": [1.0e-3, 1.0e-4]}},
        **extra,
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_compare_tiny_grid_and_resume(tmp_path, capsys):
    out = tmp_path / "run"
    # two worker processes; the rerun below is sequential and must find every cell done
    assert main(["compare", "--config", str(_config(tmp_path)), "--out", str(out), "--quiet", "--workers", "2"]) == 0
    printed = capsys.readouterr().out
    assert "| erm | 0.9 | ffr |" in printed and "| erm | 0.9 | none |" in printed

    records = json.loads((out / "results.json").read_text())
    # none/usb/asb: 1 config × 2 seeds; ffr: 2 learning rates × 2 seeds
    assert len(records) == 2 * 3 + 4
    for r in records:
        assert {"strategy", "objective", "bias_rate", "seed", "val", "test", "selected"} <= set(r)
        t = r["test"]
        assert set(t["groups"]) == {"low_grass", "low_brick", "high_grass", "high_brick"}
        assert all(g["n"] > 0 for g in t["groups"].values())
        accs = [g["acc"] for g in t["groups"].values()]
        assert t["worst_group_acc"] == pytest.approx(min(accs))
        assert t["balanced_acc"] == pytest.approx(sum(accs) / 4)
        assert min(accs) <= t["train_weighted_acc"] <= max(accs)  # weighted by the real training groups
    assert "test avg acc (train-weighted)" in (out / "results.md").read_text()
    ffr = [r for r in records if r["strategy"] == "ffr"]
    assert [s["name"] for s in ffr[0]["stages"]] == ["pretrain", "finetune"]
    # exactly one learning rate is selected, and it is the one with the better mean val WGA
    by_lr = {}
    for r in ffr:
        by_lr.setdefault(r["hparams"]["finetune.lr"], []).append(r)
    means = {lr: sum(r["val"]["worst_group_acc"] for r in rs) / len(rs) for lr, rs in by_lr.items()}
    chosen = {lr for lr, rs in by_lr.items() if all(r["selected"] for r in rs)}
    assert len(chosen) == 1 and means[chosen.pop()] == max(means.values())
    # FFR's step 1 is trained once per (bias rate, seed) and shared by both step-2 learning rates
    for seed in (0, 1):
        keys = {r["stages"][0]["key"] for r in ffr if r["seed"] == seed}
        assert len(keys) == 1
    assert len(list((out / "stages").glob("*/model.pt"))) == 2 * 3 + 2 * (1 + 2)
    # the same synthetic budget for usb, asb and ffr
    budgets = {r["strategy"]: sum(r["synthetic_per_group"].values()) for r in records if r["seed"] == 0}
    assert budgets["none"] == 0
    assert budgets["asb"] == budgets["ffr"] and budgets["usb"] - budgets["asb"] < 4
    assert (out / "results.md").read_text().startswith("| objective |")
    assert "test_worst_group_acc_mean" in (out / "results.csv").read_text()
    assert (out / "config.yaml").is_file()

    # a finished cell is not recomputed: mark the records, rerun, and the marks survive
    cells = sorted((out / "cells").glob("*/record.json"))
    assert len(cells) == len(records)
    stamps = {p: p.stat().st_mtime_ns for p in cells}
    assert main(["compare", "--config", str(_config(tmp_path)), "--out", str(out), "--quiet"]) == 0
    assert {p: p.stat().st_mtime_ns for p in cells} == stamps
    assert json.loads((out / "results.json").read_text()) == records


def test_compare_reports_bad_config(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("strategies: [none]\ntrain: {epochz: 3}\n")
    assert main(["compare", "--config", str(bad), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert "epochz" in capsys.readouterr().err
