"""``ffr sweep``: the grid over objectives, resumable after a kill, its tables and plots."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ffr.config import ExperimentConfig, from_dict
from ffr.experiment import sweep
from ffr.grid import _grid, plan_cells
from ffr.results.tables import wga_pivot

TINY = {
    "data": {"dataset": "demo", "image_size": 16, "demo": {"per_digit": 10, "image_size": 16}},
    "objectives": ["erm", "groupdro", "dfr"],
    "strategies": ["none", "ffr"],
    "bias_rates": [0.9],
    "seeds": [0],
    "train": {"epochs": 2, "min_steps": 0, "batch_size": 32},
    "pretrain": {"epochs": 2, "min_steps": 0, "batch_size": 32},
    "finetune": {"epochs": 2, "min_steps": 0, "batch_size": 32},
    "objective_options": {"dfr": {"n_refits": 3}, "groupdro": {"eta": 0.05}},
    "device": "cpu",
}


def tiny_cfg(**extra) -> ExperimentConfig:
    return from_dict(ExperimentConfig, {**TINY, **extra})


def comparable(records, out):
    """Records without wall-clock fields, with the output folder's path replaced."""
    return sorted(json.dumps({k: v for k, v in r.items() if k != "seconds"}, sort_keys=True).replace(str(out), "OUT")
                  for r in records)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep_ref")
    return out, sweep(tiny_cfg(), out, progress=False)


@pytest.mark.slow
def test_sweep_outputs(reference):
    out, records = reference
    assert len(records) == 3 * 2
    assert {r["objective"] for r in records} == {"erm", "groupdro", "dfr"}
    assert all(r["dataset"] == "demo" and r["selected"] for r in records)
    saved = json.loads((out / "results.json").read_text())
    assert comparable(saved, out) == comparable(records, out)
    md = (out / "results.md").read_text()
    assert "| groupdro | 0.9 | ffr |" in md and "| strategy | erm | groupdro | dfr |" in md
    assert (out / "results.csv").read_text().splitlines()[0].startswith("dataset,objective,bias_rate,strategy")
    for name in ("wga_vs_bias_rate.png", "group_accuracy.png"):
        assert (out / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # DFR shares ERM's training: same stage key, and its final model has a refitted head
    by = {(r["objective"], r["strategy"]): r for r in records}
    assert by[("dfr", "none")]["stages"][0]["key"] == by[("erm", "none")]["stages"][0]["key"]
    assert by[("dfr", "none")]["stages"][0]["checkpoint"] != by[("erm", "none")]["stages"][0]["checkpoint"]
    assert by[("dfr", "none")]["stages"][0]["objective_state"]["dfr/C"] in (3.0, 1.0, 0.3, 0.1, 0.03, 0.01, 0.003)
    # FFR's step 1 is trained once for all objectives
    keys = {r["stages"][0]["key"] for r in records if r["strategy"] == "ffr"}
    assert len(keys) == 1
    # GroupDRO's options reach the objective and its group weights are logged
    assert by[("groupdro", "none")]["objective_options"] == {"eta": 0.05}
    assert any(k.startswith("groupdro/q/") for k in by[("groupdro", "none")]["stages"][0]["objective_state"])
    # stages: none × {erm, groupdro} + ffr step 1 + ffr step 2 × {erm, groupdro}
    assert len(list((out / "stages").iterdir())) == 5


@pytest.mark.slow
def test_sweep_killed_midway_resumes_to_the_same_results(reference, tmp_path, monkeypatch):
    import ffr.experiment as experiment

    ref_out, expected = reference
    real_run_cell, calls = experiment.run_cell, []

    def crash(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:  # killed during the fourth cell
            raise KeyboardInterrupt("killed")
        return real_run_cell(*args, **kwargs)

    monkeypatch.setattr(experiment, "run_cell", crash)
    with pytest.raises(KeyboardInterrupt):
        sweep(tiny_cfg(), tmp_path, progress=False)
    monkeypatch.setattr(experiment, "run_cell", real_run_cell)
    done = sorted(tmp_path.glob("cells/*/record.json"))
    assert len(done) == 3
    mtimes = {p: p.stat().st_mtime_ns for p in done}
    resumed = sweep(tiny_cfg(), tmp_path, progress=False)
    assert {p: p.stat().st_mtime_ns for p in done} == mtimes  # finished cells were not recomputed
    assert comparable(resumed, tmp_path) == comparable(expected, ref_out)


@pytest.mark.slow
def test_sweep_killed_by_a_signal_resumes_to_the_same_results(reference, tmp_path):
    """A real kill (SIGKILL) of the CLI process in the middle of the grid."""
    ref_out, expected = reference
    import yaml

    cfg_path = tmp_path / "tiny.yaml"
    cfg_path.write_text(yaml.safe_dump(TINY))
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "ffr.cli", "sweep", "--config", str(cfg_path), "--out", str(out), "--quiet"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        while proc.poll() is None and len(list(out.glob("cells/*/record.json"))) < 2:
            time.sleep(0.05)
        killed = proc.poll() is None
        if killed:
            proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    if killed:
        assert len(list(out.glob("cells/*/record.json"))) < len(expected)
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600)
    resumed = json.loads((out / "results.json").read_text())
    assert comparable(resumed, out) == comparable(expected, ref_out)


def test_search_keys_only_multiply_the_cells_they_concern():
    cfg = tiny_cfg(search={"*": {"objective_options.groupdro.eta": [0.01, 0.1], "finetune.lr": [1e-3, 1e-4]}})
    assert _grid(cfg.search, "none", "erm") == [{}]
    assert len(_grid(cfg.search, "none", "groupdro")) == 2
    assert len(_grid(cfg.search, "ffr", "erm")) == 2
    assert len(_grid(cfg.search, "ffr", "groupdro")) == 4
    cells = plan_cells(cfg)
    # erm: none 1 + ffr 2; groupdro: none 2 + ffr 4; dfr: none 1 + ffr 2
    assert len(cells) == 12
    assert {c.objective for c in cells} == {"erm", "groupdro", "dfr"}
    assert all(c.config.objective_options["groupdro"]["eta"] == c.hparams["objective_options.groupdro.eta"]
               for c in cells if "objective_options.groupdro.eta" in c.hparams)


def test_pivot_table_layout():
    rec = lambda obj, strat, wga: {"dataset": "d", "objective": obj, "strategy": strat, "bias_rate": 0.9,
                                   "seed": 0, "hparams": {}, "selected": True,
                                   "val": {"worst_group_acc": 0.5, "balanced_acc": 0.5, "average_acc": 0.5},
                                   "test": {"worst_group_acc": wga, "balanced_acc": 0.6, "average_acc": 0.7}}
    text = wga_pivot([rec("dfr", "ffr", 0.25), rec("erm", "ffr", 0.5), rec("erm", "none", 0.125)])
    lines = text.splitlines()
    assert lines[0] == "**test worst group acc, d, bias rate 0.9**"
    assert lines[2] == "| strategy | erm | dfr |"
    assert lines[4] == "| none | 0.125 ± 0.000 | — |"
    assert lines[5] == "| ffr | 0.500 ± 0.000 | 0.250 ± 0.000 |"


def test_search_alternatives_are_one_axis():
    variants = [{}, {"l2sp": 0.1, "lpft_epochs": 1}, {"freeze_stages": 2, "lpft_epochs": 0}]
    cfg = tiny_cfg(search={"ffr": {"finetune": variants}})
    assert _grid(cfg.search, "ffr", "erm") == [{"finetune": v} for v in variants]
    assert _grid(cfg.search, "none", "erm") == [{}]
    effs = [c.config for c in plan_cells(cfg) if c.strategy == "ffr" and c.objective == "erm"]
    assert [(e.finetune.l2sp, e.finetune.lpft_epochs, e.finetune.freeze_stages) for e in effs] == \
        [(0.0, 5, 0), (0.1, 1, 0), (0.0, 0, 2)]  # {} keeps the default step 2, LP-FT
    assert effs[1].finetune.epochs == 2   # the rest of the stage config is kept


def test_candidates_table_marks_the_validation_choice():
    from ffr.results.tables import candidates_table, mark_selected

    def rec(hp, val, test, seed):
        return {"dataset": "d", "objective": "erm", "strategy": "ffr", "bias_rate": 0.99, "seed": seed,
                "hparams": hp, "val": {"worst_group_acc": val, "balanced_acc": val},
                "test": {"worst_group_acc": test, "balanced_acc": test}}

    records = mark_selected([rec({"finetune": {"l2sp": 0.1}}, 0.6, 0.1, 0), rec({"finetune": {"l2sp": 0.1}}, 0.8, 0.3, 1),
                             rec({}, 0.5, 0.9, 0), rec({}, 0.5, 0.9, 1)])
    lines = candidates_table(records).splitlines()
    assert len(lines) == 6
    assert lines[5] == "| d | erm | 0.99 | ffr | `{}` | 0.500 ± 0.000 | 0.900 ± 0.000 |  |"
    assert lines[4] == '| d | erm | 0.99 | ffr | `{"finetune": {"l2sp": 0.1}}` | 0.700 ± 0.141 | 0.200 ± 0.141 | ✓ |'
    assert candidates_table([rec({}, 0.5, 0.9, 0)]) == ""


@pytest.mark.slow
def test_shortcut_probe_of_a_sweeps_selected_cells(reference, capsys):
    from ffr.cli import main

    out, _ = reference
    pool = next((out / "synthetic").iterdir())
    assert main(["probe", "shortcut", "--from-results", str(out / "results.json"), "--where", "strategy=ffr",
                 "--where", "objective=erm,dfr", "--manifest", str(out / "data"), "--manifest", str(pool),
                 "--device", "cpu", "--out", str(out / "shortcut.json")]) == 0
    text = capsys.readouterr().out
    assert "| ffr erm r=0.9 | 1 |" in text and "| ffr dfr r=0.9 | 1 |" in text
    saved = json.loads((out / "shortcut.json").read_text())
    assert [r["label"] for r in saved] == ["ffr erm r=0.9 s=0", "ffr dfr r=0.9 s=0"]
    assert saved[1]["model"].endswith("finetune_dfr.pt")     # DFR's refitted model, not ERM's
    assert all(r["n_real"] == 20 for r in saved)              # the real test split only


@pytest.mark.slow
def test_grid_cost_counts_what_the_sweep_trains(reference):
    from ffr.data.manifest import Manifest
    from ffr.sweep_plan import grid_cost

    out, records = reference
    cost = grid_cost(tiny_cfg(), Manifest.load(out / "data"))
    assert cost["cells"] == len(records)
    assert cost["trained_stages"] == len(list((out / "stages").iterdir()))
    trained = {st["key"]: st["n_train"] * 2 for r in records for st in r["stages"]}   # 2 epochs a stage
    assert cost["train_images"] == sum(trained.values())


@pytest.mark.slow
def test_grids_that_share_a_stage_cache_train_only_the_stages_the_other_did_not(reference, tmp_path, monkeypatch):
    """A second protocol over the same data (here: one more learning rate for the baseline) with
    the first grid's stage cache trains the new candidate's stages alone (in worker processes),
    leaves the cached ones untouched, and gives the shared cells the first grid's metrics to the
    last digit. A third grid whose every stage is cached writes nothing into the cache."""
    import shutil

    from ffr.cli import main

    out, records = reference
    cache = tmp_path / "stages"
    shutil.copytree(out / "stages", cache)  # the module's reference stays as it is for the other tests
    before = {p.parent.name: p.stat().st_mtime_ns for p in cache.glob("*/model.pt")}
    cfg = tiny_cfg(search={"none": {"train.lr": [1.0e-3, 3.0e-4]}})
    second = sweep(cfg, tmp_path / "second", progress=False, stage_cache=cache, workers=2)
    after = {p.parent.name: p.stat().st_mtime_ns for p in cache.glob("*/model.pt")}
    assert not (tmp_path / "second" / "stages").exists()
    assert {k: after[k] for k in before} == before              # reused, not trained again
    assert len(after) - len(before) == 2                        # none at lr 3e-4: ERM (DFR's too) and GroupDRO
    assert len(second) == len(records) + 3
    first = {(r["strategy"], r["objective"]): r["test"] for r in records}
    shared = [r for r in second if r["hparams"].get("train.lr", 1.0e-3) == 1.0e-3]
    assert len(shared) == len(records)
    assert all(r["test"] == first[(r["strategy"], r["objective"])] for r in shared)
    assert all(Path(st["checkpoint"]).is_absolute() and Path(st["checkpoint"]).parent.parent == cache
               for r in second for st in r["stages"] if st["checkpoint"].endswith("model.pt"))

    def no_lock(*args, **kwargs):
        raise AssertionError("a cached stage took the cache's lock")

    monkeypatch.setattr("ffr.locks.work_lock", no_lock)
    third = sweep(cfg, tmp_path / "third_grid", progress=False, stage_cache=cache)
    assert comparable(third, tmp_path / "third_grid") == comparable(second, tmp_path / "second")
    # the CLI: a file where the cache should be is refused before anything runs
    (tmp_path / "a_file").write_text("")
    assert main(["sweep", "--out", str(tmp_path / "third"), "--stage-cache", str(tmp_path / "a_file")]) == 2
    assert not (tmp_path / "third").exists()
