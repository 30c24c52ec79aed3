"""A user's own dataset, laid out as ``<split>/<class>/<bias>/`` image folders, through every
prepare path: ``ffr prepare`` with ``data.adapter=folder``, ``ffr compare``, and the Kubeflow
``ffr`` pipeline with a folder source (KFP local runner)."""

from __future__ import annotations

import json

import pytest

from helpers import write_png
from ffr.cli import main
from ffr.data.manifest import Manifest

# (split, class, bias) -> images: "cat" mostly indoors, "dog" mostly outdoors
LAYOUT = {("train", "cat", "indoor"): 24, ("train", "cat", "outdoor"): 6,
          ("train", "dog", "indoor"): 6, ("train", "dog", "outdoor"): 24,
          ("val", "cat", "indoor"): 4, ("val", "cat", "outdoor"): 4,
          ("val", "dog", "indoor"): 4, ("val", "dog", "outdoor"): 4,
          ("test", "cat", "indoor"): 3, ("test", "cat", "outdoor"): 3,
          ("test", "dog", "indoor"): 3, ("test", "dog", "outdoor"): 3}


@pytest.fixture
def folder(tmp_path):
    root, seed = tmp_path / "my_photos", 0
    for (split, label, bias), n in LAYOUT.items():
        for i in range(n):
            seed += 1
            write_png(root / split / label / bias / f"img{i:03d}.png", seed)
    return root


def test_ffr_prepare_reads_a_folder_dataset(folder, tmp_path, capsys):
    out = tmp_path / "prepared"
    rc = main(["prepare", "--set", "data.adapter=folder", "--set", f"data.dataset={folder}",
               "--set", "data.min_val_per_group=2", "--bias-rate", "0.9", "--out", str(out)])
    assert rc == 0
    m = Manifest.load(out)
    assert m.card.classes == ["cat", "dog"] and m.card.bias_values == ["indoor", "outdoor"]
    train = m.select(split="train").group_counts()
    # each class's majority keeps its 24; the minority is cut to floor(24 * 0.1 / 0.9) = 2
    assert train == {("cat", "indoor"): 24, ("cat", "outdoor"): 2, ("dog", "indoor"): 2, ("dog", "outdoor"): 24}
    assert m.select(split="test").group_counts() == {(l, b): n for (s, l, b), n in LAYOUT.items() if s == "test"}
    assert all(p.is_file() for p in m.abs_paths())
    assert json.loads((out / "split_report.json").read_text())["after"]["train"]["cat|outdoor"] == 2
    assert "cat" in capsys.readouterr().out


def test_ffr_prepare_names_a_bad_folder_layout(tmp_path, capsys):
    (tmp_path / "bad" / "training" / "cat" / "indoor").mkdir(parents=True)
    write_png(tmp_path / "bad" / "training" / "cat" / "indoor" / "a.png", 1)
    rc = main(["prepare", "--set", "data.adapter=folder", "--set", f"data.dataset={tmp_path / 'bad'}",
               "--bias-rate", "0.9", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert rc == 2 and "ffr: error:" in err and "training" in err and "split folder name" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_compare_trains_a_folder_dataset(folder, tmp_path):
    from ffr.config import from_dict, ExperimentConfig
    from ffr.experiment import compare

    cfg = from_dict(ExperimentConfig, {
        "data": {"dataset": str(folder), "adapter": "folder", "image_size": 16, "min_val_per_group": 2},
        "backbone": "tiny_cnn", "strategies": ["none", "ffr"], "bias_rates": [0.9], "seeds": [0],
        "synthesis": {"options": {"image_size": 16}},
        "train": {"epochs": 1, "min_steps": 0}, "pretrain": {"epochs": 1, "min_steps": 0},
        "finetune": {"epochs": 1, "min_steps": 0}})
    records = compare(cfg, tmp_path / "cmp", progress=False)
    assert sorted(r["strategy"] for r in records) == ["ffr", "none"]
    assert all(r["dataset"] == "my_photos" for r in records)
    assert all(sum(g["n"] for g in r["test"]["groups"].values()) == 12 for r in records)


@pytest.mark.slow
def test_kubeflow_ffr_pipeline_on_a_folder_source(folder, tmp_path):
    """The `ffr` pipeline's prepare step reads the folder through the same adapter."""
    pytest.importorskip("kfp")
    from ffr.integrations.kubeflow.pipelines.run import run_local

    params = {"source": str(folder), "source_adapter": "folder", "bias_rate": 0.9, "min_val_per_group": 2,
              "num_shards": 1, "pretrain_epochs": 1, "finetune_epochs": 1, "min_steps": 0, "image_size": 16,
              "backbone": "tiny_cnn", "synthesis_options": {"image_size": 16}, "device": "cpu"}
    run = run_local("ffr", params, tmp_path / "runs", progress=False, mlflow=None)
    result = run.results["ffr"]
    assert {g: v["n"] for g, v in result["groups"].items()} == \
        {f"{l}_{b}": n for (s, l, b), n in LAYOUT.items() if s == "test"}


def test_the_folder_adapter_says_what_it_assumed_and_what_it_left_out(folder, capsys):
    """A majority bias it had to guess (sorted pairing) and images one folder level too high are
    warned about, never silently decided or dropped."""
    from ffr.data.sources import load_dataset

    write_png(folder / "train" / "cat" / "stray.png", 999)  # one level too high
    m = load_dataset("folder", folder)
    err = capsys.readouterr().err
    assert "1 image(s) outside <split>/<class>/<bias>/" in err and "train/cat/stray.png" in err
    assert "no majority_bias given: assumed cat → indoor, dog → outdoor" in err
    assert len(m) == sum(LAYOUT.values())
    load_dataset("folder", folder, majority_bias={"cat": "outdoor", "dog": "indoor"})
    assert "no majority_bias given" not in capsys.readouterr().err
