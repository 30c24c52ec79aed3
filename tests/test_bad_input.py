"""Hostile and broken input through the real ``ffr`` entry point, one row per case: each must end
in exit code 2 with an ``error:`` line naming the file, field or line — no traceback, no hang,
no silent success — and write nothing outside the run's folder.

Cases that need a trained grid or a second process (stale inputs, two runs into one folder,
tracking dying mid-run, a rerun of ``ffr train``) are tests of their own in
tests/test_concurrency.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from helpers import write_png
from ffr.cli import main

ROOT = Path(__file__).resolve().parents[1]
GROUPS = {("train", "cat", "indoor"): 6, ("train", "cat", "outdoor"): 2, ("train", "dog", "indoor"): 2,
          ("train", "dog", "outdoor"): 6, ("val", "cat", "indoor"): 2, ("val", "cat", "outdoor"): 2,
          ("val", "dog", "indoor"): 2, ("val", "dog", "outdoor"): 2, ("test", "cat", "indoor"): 1,
          ("test", "cat", "outdoor"): 1, ("test", "dog", "indoor"): 1, ("test", "dog", "outdoor"): 1}
CARD = {"name": "toy", "classes": ["cat", "dog"], "bias_values": ["indoor", "outdoor"],
        "majority_bias": {"cat": "indoor", "dog": "outdoor"}}


def _dataset(root: Path, counts=GROUPS, card=CARD) -> Path:
    rows, seed = [], 0
    for (split, label, bias), n in counts.items():
        for i in range(n):
            seed += 1
            rel = f"{split}/{label}/{bias}/{i}.png"
            write_png(root / rel, seed)
            rows.append({"path": rel, "label": label, "bias": bias, "split": split, "source": "real"})
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    (root / "card.json").write_text(json.dumps(card))
    return root


def _edit(root: Path, fn) -> Path:
    df = pd.read_csv(root / "manifest.csv", dtype=str, keep_default_na=False)
    fn(df).to_csv(root / "manifest.csv", index=False)
    return root


def _card(ws: Path, name: str, **changes) -> Path:
    path = ws / name
    path.write_text(json.dumps({**CARD, **changes}))
    return path


def _text(ws: Path, name: str, data: bytes | str) -> Path:
    path = ws / name
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


# ------------------------------------------------------------------------------------ the cases
def c_class_climbs_out(ws):
    return ["synthesize", "--card", _card(ws, "c.json", classes=["../../../x", "dog"],
                                          majority_bias={"../../../x": "indoor", "dog": "outdoor"}),
            "--per-group", "1", "--out", ws / "syn"], "field 'classes'"


def c_class_is_absolute(ws):
    return ["synthesize", "--card", _card(ws, "c.json", classes=["/tmp/ffr-bad-y", "dog"],
                                          majority_bias={"/tmp/ffr-bad-y": "indoor", "dog": "outdoor"}),
            "--per-group", "1", "--out", ws / "syn"], "path separator"


def c_bias_with_dot_and_nul(ws):
    return ["synthesize", "--card", _card(ws, "c.json", bias_values=[".hidden", "out\x00door"],
                                          majority_bias={"cat": ".hidden", "dog": ".hidden"}),
            "--per-group", "1", "--out", ws / "syn"], "field 'bias_values'"


def c_card_root_is_the_file_system(ws):
    root = _dataset(ws / "ds")
    card = json.loads((root / "card.json").read_text())
    (root / "card.json").write_text(json.dumps({**card, "root": "/"}))
    return ["data", "validate", root], "field 'root'"


def c_card_root_climbs_to_etc(ws):
    root = _dataset(ws / "ds")
    depth = len(root.resolve().parts) - 1
    card = json.loads((root / "card.json").read_text())
    (root / "card.json").write_text(json.dumps({**card, "root": "../" * depth + "etc"}))
    _edit(root, lambda df: df.assign(path=["passwd"] + list(df["path"][1:])))
    return ["data", "validate", root], "system directory"


def c_card_root_climbs_into_a_hidden_folder(ws):
    # a card from elsewhere whose root reaches ~/.ssh-like folders: refused though the files are images
    _dataset(ws / ".ssh")
    root = _dataset(ws / "ds")
    card = json.loads((root / "card.json").read_text())
    (root / "card.json").write_text(json.dumps({**card, "root": "../.ssh"}))
    return ["data", "validate", root], "hidden folder '.ssh'"


def c_card_row_reaches_a_hidden_folder(ws):
    _dataset(ws / ".aws")
    root = _dataset(ws / "ds")
    card = json.loads((root / "card.json").read_text())
    (root / "card.json").write_text(json.dumps({**card, "root": ".."}))  # climbs out, to the folder above
    _edit(root, lambda df: df.assign(path=[".aws/" + df["path"][0]] + ["ds/" + p for p in df["path"][1:]]))
    return ["data", "validate", root], "line 2: path '.aws/"


def c_batch_size_one(ws):
    root = _dataset(ws / "ds")
    return ["train", "--train", root, "--val", root, "--set", "train.batch_size=1", "--out", ws / "m.pt"], \
        "train.batch_size"


def c_epochs_zero(ws):
    root = _dataset(ws / "ds")
    return ["train", "--train", root, "--val", root, "--set", "train.epochs=0", "--out", ws / "m.pt"], "train.epochs"


def c_epochs_negative(ws):
    return ["compare", "--set", "pretrain.epochs=-3", "--out", ws / "cmp"], "pretrain.epochs"


def c_empty_majority_group(ws):
    counts = {k: (0 if k == ("train", "cat", "indoor") else n) for k, n in GROUPS.items()}
    root = _dataset(ws / "ds", counts)
    return ["prepare", "--set", f"data.dataset={root}", "--bias-rate", "0.9", "--out", ws / "prep"], \
        "majority group cat_indoor"


def c_per_group_zero(ws):
    return ["synthesize", "--card", _card(ws, "c.json"), "--per-group", "0", "--out", ws / "syn"], "--per-group"


def c_count_negative(ws):
    return ["synthesize", "--card", _card(ws, "c.json"), "--count", "cat_indoor=-1", "--out", ws / "syn"], "--count"


def c_synthesis_batch_size_zero(ws):
    return ["synthesize", "--card", _card(ws, "c.json"), "--per-group", "2", "--batch-size", "0",
            "--out", ws / "syn"], "--batch-size"


def c_compare_synthesis_batch_size_zero(ws):
    return ["compare", "--set", "synthesis.batch_size=0", "--out", ws / "cmp"], "synthesis.batch_size"


def c_per_group_huge(ws):
    return ["synthesize", "--card", _card(ws, "c.json"), "--per-group", "100000000", "--out", ws / "syn"], "limit"


def c_unknown_backbone_before_any_work(ws):
    return ["compare", "--set", "backbone=resnet9000", "--out", ws / "cmp"], "unknown backbone 'resnet9000'"


def c_unknown_objective(ws):
    return ["compare", "--set", "objectives=[erm,groupdor]", "--out", ws / "cmp"], "unknown objective 'groupdor'"


def c_yaml_syntax_error(ws):
    return ["compare", "--config", _text(ws, "bad.yaml", "train: {lr: [1,\n"), "--out", ws / "cmp"], "bad.yaml"


def c_set_yaml_error(ws):
    return ["compare", "--set", "seeds=[0,1", "--out", ws / "cmp"], "--set 'seeds=[0,1'"


def c_device_tpu(ws):
    return ["compare", "--set", "device=tpu", "--out", ws / "cmp"], "device: 'tpu'"


def c_negative_threads(ws):
    return ["compare", "--set", "train.num_threads=-4", "--out", ws / "cmp"], "train.num_threads"


def c_image_size_huge(ws):
    return ["compare", "--set", "data.image_size=100000", "--out", ws / "cmp"], "data.image_size"


def c_unknown_backend_option(ws):
    return ["synthesize", "--card", _card(ws, "c.json"), "--per-group", "1", "--option", "colour=blue",
            "--out", ws / "syn"], "synthesis backend 'procedural'"


def c_unknown_demo_key(ws):
    return ["compare", "--set", "data.demo.per_digits=3", "--out", ws / "cmp"], "data.demo"


def c_unknown_demo_key_in_prepare(ws):
    return ["prepare", "--set", "data.demo.per_digits=3", "--bias-rate", "0.9", "--out", ws / "prep"], "data.demo"


def c_per_digit_for_faces_in_prepare(ws):  # DVC's run form (params.yaml) names the benchmark
    return ["prepare", "--demo-name", "faces", "--demo-per-digit", "30", "--bias-rate", "0.9", "--out", ws / "prep"], \
        "demo_per_digit (30) sizes the digits benchmark only"


def c_unknown_benchmark_in_prepare(ws):
    return ["prepare", "--demo-name", "face", "--bias-rate", "0.9", "--out", ws / "prep"], \
        "unknown built-in benchmark 'face'"


def c_forty_digit_seed(ws):
    root = _dataset(ws / "ds")
    return ["data", "validate", _edit(root, lambda df: df.assign(seed=["1" * 40] + [""] * (len(df) - 1)))], \
        "field 'seed'"


def c_bias_rate_as_string(ws):
    return ["compare", "--set", 'bias_rates=["0.9"]', "--out", ws / "cmp"], "bias_rates[0]"


def c_evaluate_not_a_checkpoint(ws):
    root = _dataset(ws / "ds")
    return ["evaluate", "--model", _text(ws, "model.pt", "not a model"), "--data", root], "model.pt"


def c_evaluate_truncated_checkpoint(ws):
    import torch

    root = _dataset(ws / "ds")
    torch.save({"state_dict": {"w": torch.zeros(1000)}, "meta": {}}, ws / "full.pt")
    data = (ws / "full.pt").read_bytes()
    return ["evaluate", "--model", _text(ws, "cut.pt", data[: len(data) // 2]), "--data", root], "cut.pt"


def c_evaluate_bad_split(ws):
    root = _dataset(ws / "ds")
    return ["evaluate", "--model", ws / "m.pt", "--data", root, "--split", "tset"], "--split"


def c_manifest_not_utf8(ws):
    root = _dataset(ws / "ds")
    (root / "manifest.csv").write_bytes((root / "manifest.csv").read_bytes().replace(b"cat", b"c\xe9t", 1))
    return ["data", "validate", root], "manifest.csv: 1 problem(s):\n  - not UTF-8"


def c_config_not_utf8(ws):
    return ["compare", "--config", _text(ws, "latin1.yaml", b"backbone: caf\xe9\n"), "--out", ws / "cmp"], \
        "latin1.yaml: not UTF-8"


def c_duplicate_config_key(ws):
    return ["compare", "--config", _text(ws, "twice.yaml", "train:\n  lr: 1.0e-3\n  lr: 1.0e-4\n"),
            "--out", ws / "cmp"], "key 'lr' is given twice"


def c_misspelt_strategy_in_overrides(ws):
    return ["compare", "--config", _text(ws, "ov.yaml", "overrides:\n  asbb: {train.lr: 1.0e-4}\n"),
            "--out", ws / "cmp"], "overrides: unknown balancing strategy 'asbb'"


def c_non_numeric_synthetic_seed(ws):
    root = _dataset(ws / "ds")

    def synthetic(df):
        df = df.copy()
        df.loc[0, ["source", "seed", "generator"]] = ["synthetic", "seven", "test"]
        return df
    return ["data", "validate", _edit(root, synthetic)], "field 'seed' 'seven'"


def c_same_file_twice(ws):
    root = _dataset(ws / "ds")

    def twice(df):
        extra = df.iloc[[0]].copy()
        extra["path"] = "./" + extra["path"]
        return pd.concat([df, extra], ignore_index=True)
    return ["data", "validate", _edit(root, twice)], "duplicate path './train/cat/indoor/0.png'"


def c_truncated_jpeg(ws):
    from PIL import Image

    root = _dataset(ws / "ds")
    Image.new("RGB", (64, 64), (10, 200, 30)).save(root / "train/cat/indoor/0.jpg", quality=95)
    data = (root / "train/cat/indoor/0.jpg").read_bytes()
    (root / "train/cat/indoor/0.jpg").write_bytes(data[: len(data) // 2])
    return ["data", "validate", _edit(root, lambda df: df.assign(path=df["path"].str.replace(
        "train/cat/indoor/0.png", "train/cat/indoor/0.jpg", regex=False)))], "unreadable"


def _sweep_config(ws, datasets) -> Path:
    import yaml

    path = ws / "sweep.yaml"
    path.write_text(yaml.safe_dump({"datasets": datasets, "strategies": ["none"], "seeds": [0]}))
    return path


def c_sweep_dataset_name_climbs_out(ws):
    return ["sweep", "--config", _sweep_config(ws, {"../../x": {}}), "--out", ws / "sw"], \
        "datasets.../../x: a dataset name contains a path separator"


def c_sweep_dataset_name_is_absolute(ws):
    return ["sweep", "--config", _sweep_config(ws, {"/tmp/ffr-bad-y": {}}), "--dry-run", "--out", ws / "sw"], \
        "a dataset name contains a path separator"


def c_out_is_empty(ws):
    return ["compare", "--out", ""], "--out is empty"


def c_stage_cache_is_empty(ws):
    return ["sweep", "--stage-cache", " ", "--out", ws / "sw"], "--stage-cache is empty"


def c_cells_link_planted_in_out(ws):
    (ws / "cmp").mkdir()
    (ws / "cmp" / "cells").symlink_to(ws.parent.parent / "x", target_is_directory=True)
    return ["compare", "--set", f"data.dataset={_dataset(ws / 'ds')}", "--out", ws / "cmp"], \
        "outside the output folder"


CASES = {name[2:]: fn for name, fn in sorted(globals().items()) if name.startswith("c_")}


def _tree(path: Path) -> set[str]:
    return {str(p.relative_to(path)) for p in path.rglob("*")}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_a_clear_error(case, tmp_path, monkeypatch, capsys):
    ws = tmp_path / "run"
    ws.mkdir()
    monkeypatch.chdir(ws)
    argv, needle = CASES[case](ws)
    outside = _tree(tmp_path) - {p for p in _tree(tmp_path) if p == "run" or p.startswith("run/")}
    escapes = [tmp_path.parent / "x", Path("/tmp/ffr-bad-y")]
    with pytest.raises(SystemExit) if "--split" == needle else _no_exit():
        rc = main([str(a) for a in argv])
    captured = capsys.readouterr()
    err = captured.err
    if needle == "--split":  # argparse's own refusal: exit 2, "ffr evaluate: error: argument --split"
        assert "error: argument --split" in err
        return
    assert rc == 2, f"exit {rc}; stderr: {err}"
    assert "ffr: error:" in err and needle in err, err
    assert "Traceback" not in err + captured.out
    after = _tree(tmp_path) - {p for p in _tree(tmp_path) if p == "run" or p.startswith("run/")}
    assert after == outside, f"written outside the run's folder: {sorted(after - outside)}"
    assert not any(p.exists() for p in escapes)


class _no_exit:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_compare_refuses_a_bad_name_before_building_any_data(tmp_path, capsys):
    assert main(["compare", "--set", "backbone=resnet9000", "--out", str(tmp_path / "cmp")]) == 2
    assert not (tmp_path / "cmp").exists()  # no demo built, no image rendered, no folder made


def test_the_console_script_prints_no_traceback(tmp_path):
    """The installed ``python -m ffr.cli`` process itself (not only main()): exit 2, one line."""
    card = _card(tmp_path, "c.json", classes=["../x", "dog"], majority_bias={"../x": "indoor", "dog": "outdoor"})
    out = subprocess.run([sys.executable, "-m", "ffr.cli", "synthesize", "--card", str(card), "--per-group", "1",
                          "--out", str(tmp_path / "syn")], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert out.returncode == 2 and out.stderr.startswith("ffr: error:") and "Traceback" not in out.stderr
    assert not (tmp_path / "syn").exists() and not (tmp_path.parent / "x").exists()
    shutil.rmtree(tmp_path / "syn", ignore_errors=True)


def test_a_hidden_folder_is_read_when_the_card_lives_in_it_or_the_user_lists_it(tmp_path, monkeypatch, capsys):
    """The refusal is for cards that climb into hidden folders: a dataset kept in one (a cache)
    validates, and so does a root the user lists in $FFR_DATA_ROOTS."""
    monkeypatch.delenv("FFR_DATA_ROOTS", raising=False)
    inside = _dataset(tmp_path / ".cache" / "datasets" / "toy")
    assert main(["data", "validate", str(inside)]) == 0
    _dataset(tmp_path / ".private")
    root = _dataset(tmp_path / "ds")
    card = json.loads((root / "card.json").read_text())
    (root / "card.json").write_text(json.dumps({**card, "root": "../.private"}))
    capsys.readouterr()
    assert main(["data", "validate", str(root)]) == 2
    assert "$FFR_DATA_ROOTS" in capsys.readouterr().err
    monkeypatch.setenv("FFR_DATA_ROOTS", os.pathsep.join(["/nonexistent", str(tmp_path / ".private")]))
    assert main(["data", "validate", str(root)]) == 0


def test_a_card_may_not_climb_into_another_users_home_folder(tmp_path):
    """/home/<someone else> is refused for a card that is not in it; the reader's own home and a
    card inside that home are fine (a rule on paths: nothing needs to exist)."""
    from ffr.paths import data_path_problem

    mine = Path.home().resolve()
    other = Path("/home/someone-else-than-" + mine.name)
    assert "another user's home folder" in data_path_problem(other / "Pictures", tmp_path)
    assert data_path_problem(other / "Pictures", other / "datasets" / "toy") is None
    assert data_path_problem(mine / "datasets" / "real", tmp_path) is None
    assert "hidden folder '.kube'" in data_path_problem(mine / ".kube", mine / "datasets" / "toy")
