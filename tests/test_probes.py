"""Probes: the real-vs-synthetic domain gap, and the (B, G) shortcut probe of a trained model
(per-group real-vs-synthetic probe, real vs synthetic accuracy)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from helpers import write_png
from ffr.cli import main
from ffr.data.demo import DemoSpec, make_demo
from ffr.data.loading import TensorData
from ffr.data.manifest import DatasetCard, Manifest
from ffr.probes import domain_gap, probe_checkpoint, shortcut_probe
from ffr.synthesis.generation import create_backend, run_synthesis
from ffr.train.backbones import Classifier, create_model
from ffr.train.loop import save_checkpoint


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory):
    """240 real train images (60 per group) and 240 procedural ones of the same groups."""
    root = tmp_path_factory.mktemp("gap")
    real = make_demo(root / "demo", DemoSpec(per_digit=40)).select(split="train")
    card = real.card
    synthetic = run_synthesis(create_backend("procedural", card), card, {g: 60 for g in card.groups}, root / "syn").manifest
    return real, synthetic


@pytest.mark.slow  # trains two small CNNs: ~3 s on 2 idle cores
def test_domain_gap_is_high_between_real_and_procedural(small_demo):
    real, synthetic = small_demo
    state = torch.random.get_rng_state()
    result = domain_gap(real, synthetic, seed=0)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is left alone
    assert result["accuracy"] >= 0.85, result
    assert result["n_train"] + result["n_test"] == 480 and result["n_test"] == 2 * 72
    assert set(result["per_group"]) == set(real.card.group_keys)
    assert min(result["per_source"].values()) >= 0.7
    assert domain_gap(real, synthetic, seed=0) == result  # deterministic per seed


@pytest.mark.slow
def test_domain_gap_is_near_chance_between_two_halves_of_real_data(small_demo):
    real, _ = small_demo
    # The control: both "sources" are real demo images, so nothing separates them.
    # Rows are ordered by class, so halve a random permutation, not the table.
    order = np.random.default_rng(0).permutation(len(real))
    a = Manifest(real.frame.iloc[order[::2]], real.card, real.root)
    b = Manifest(real.frame.iloc[order[1::2]], real.card, real.root)
    b.frame["source"] = "synthetic"
    result = domain_gap(a, b, seed=0, epochs=3)
    assert result["accuracy"] < 0.7, result


def test_domain_gap_needs_enough_images(small_demo):
    real, synthetic = small_demo
    tiny = Manifest(synthetic.frame.iloc[:1], synthetic.card, synthetic.root)
    with pytest.raises(ValueError, match="both sources"):
        domain_gap(real, tiny)


CARD = DatasetCard("t", ["a", "b"], ["x", "y"], {"a": "x", "b": "y"})


def mean_colour_model():
    """Features = mean R, G, B in [0, 1] (after 'half' normalisation: 2v - 1); predicts b when
    red is high."""
    model = Classifier(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()), 3, 2)
    with torch.no_grad():
        model.head.weight.copy_(torch.tensor([[0.0, 0, 0], [1.0, 0, 0]]))
        model.head.bias.zero_()
    return model


def image(red: float, blue: float, rng, n=8):
    x = np.full((3, n, n), 128, dtype=np.uint8)
    x[0] = np.clip(red * 255 + rng.normal(0, 10, (n, n)), 0, 255)
    x[2] = np.clip(blue * 255 + rng.normal(0, 10, (n, n)), 0, 255)
    return torch.as_tensor(x)


def test_shortcut_probe_on_a_known_model():
    rng = np.random.default_rng(0)
    imgs, labels, biases, sources = [], [], [], []
    for label in (0, 1):
        for bias in (0, 1):
            minority = bias != label
            for synth in (0, 1):
                for i in range(20):
                    # synthetic images are bluer (G is visible); the model reads only red:
                    # real minority images get the wrong red level, synthetic ones the right one
                    right = not (minority and not synth)
                    red = (0.8 if label == 1 else 0.2) if right else (0.2 if label == 1 else 0.8)
                    imgs.append(image(red, 0.9 if synth else 0.3, rng))
                    labels.append(label), biases.append(bias), sources.append(synth)
    data = TensorData(torch.stack(imgs), torch.tensor(labels), torch.tensor(biases), torch.tensor(sources), CARD)
    out = shortcut_probe(mean_colour_model(), data, normalize="half")
    g = out["groups"]
    assert g["a_y"]["minority"] and not g["a_x"]["minority"]
    assert g["a_y"]["model_acc_real"] == 0.0 and g["a_y"]["model_acc_synthetic"] == 1.0
    assert g["a_x"]["model_acc_real"] == 1.0 and g["a_x"]["n_real"] == 20 and g["a_x"]["n_synthetic"] == 20
    assert out["minority"]["synthetic_minus_real"] == 1.0 and out["majority"]["synthetic_minus_real"] == 0.0
    assert all(v["probe_acc"] == 1.0 for v in g.values())   # blue separates the sources perfectly
    # features carrying no trace of the source: the probe is near chance
    noise = np.random.default_rng(1).normal(size=(len(data), 3)).astype(np.float32)
    chance = shortcut_probe(mean_colour_model(), data, normalize="half", features=noise)
    assert 0.25 <= chance["probe_acc_mean"] <= 0.75


def test_shortcut_probe_needs_both_sources():
    data = TensorData(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), torch.tensor([0, 1, 0, 1]),
                      torch.tensor([0, 1, 1, 0]), torch.zeros(4, dtype=torch.long), CARD)
    with pytest.raises(ValueError, match="4 real and 0 synthetic"):
        shortcut_probe(mean_colour_model(), data)


def make_mixed(tmp_path, n=6):
    real_rows, synth_rows, seed = [], [], 0
    for label in CARD.classes:
        for bias in CARD.bias_values:
            for i in range(n):
                for kind, rows in (("real", real_rows), ("synthetic", synth_rows)):
                    rel = f"{kind}/{label}_{bias}_{i}.png"
                    seed += 1
                    write_png(tmp_path / "ds" / rel, seed)
                    rows.append({"path": rel, "label": label, "bias": bias, "split": "test", "source": kind,
                                 **({"generator": "test", "seed": seed, "prompt": "p"} if kind == "synthetic" else {})})
    Manifest.from_records(real_rows, CARD, tmp_path / "ds").save(tmp_path / "real")
    Manifest.from_records(synth_rows, CARD, tmp_path / "ds").save(tmp_path / "synth")


@pytest.mark.slow
def test_probe_checkpoint_caches_features_and_cli(tmp_path, capsys):
    make_mixed(tmp_path)
    torch.manual_seed(0)
    ckpt = save_checkpoint(tmp_path / "m" / "model.pt", create_model("small_cnn", 2),
                           {"backbone": "small_cnn", "classes": CARD.classes, "image_size": 8,
                            "normalize": "imagenet", "objective": "erm", "stage": "train"})
    m = Manifest.concat([Manifest.load(tmp_path / "real"), Manifest.load(tmp_path / "synth")])
    first = probe_checkpoint(ckpt, m)
    second = probe_checkpoint(ckpt, m)
    assert not first["features_cached"] and second["features_cached"]
    assert len(list((tmp_path / "m" / "embeddings").glob("*.npy"))) == 1
    assert {k: v for k, v in first.items() if k != "features_cached"} == \
        {k: v for k, v in second.items() if k != "features_cached"}
    out = tmp_path / "probe.json"
    assert main(["probe", "shortcut", "--model", str(ckpt), "--manifest", str(tmp_path / "real"),
                 "--manifest", str(tmp_path / "synth"), "--device", "cpu", "--out", str(out),
                 "--plot", str(tmp_path / "shortcut.png")]) == 0
    assert (tmp_path / "shortcut.png").read_bytes()[:4] == b"\x89PNG"
    saved = json.loads(out.read_text())
    assert saved["n_real"] == 24 and saved["n_synthetic"] == 24 and saved["label"] == "train erm"
    assert "| train erm |" in capsys.readouterr().out
    # real rows of another split are left out
    assert main(["probe", "shortcut", "--model", str(ckpt), "--manifest", str(tmp_path / "real"),
                 "--manifest", str(tmp_path / "synth"), "--split", "val", "--device", "cpu"]) == 2
    assert "0 real and 24 synthetic" in capsys.readouterr().err


def fake_probe(label: str, probe_min: float, probe_maj: float, real: float, synth: float) -> dict:
    """A shortcut_probe result with the figures the summary and the plot read."""
    return {"label": label, "probe_acc_mean": (probe_min + probe_maj) / 2,
            "minority": {"probe_acc_mean": probe_min, "model_acc_real": real, "model_acc_synthetic": synth,
                         "synthetic_minus_real": synth - real},
            "majority": {"probe_acc_mean": probe_maj, "model_acc_real": 0.9, "model_acc_synthetic": 0.9,
                         "synthetic_minus_real": 0.0}}


def test_shortcut_stats_summary_and_plot(tmp_path):
    from ffr.results.plots import plot_shortcut
    from ffr.probes import shortcut_stats, summarize_shortcut

    results = [fake_probe("usb erm r=0.99 s=0", 0.9, 0.7, 0.2, 0.8),
               fake_probe("ffr erm r=0.99 s=0", 0.6, 0.5, 0.5, 0.5),
               fake_probe("usb erm r=0.99 s=1", 1.0, 0.9, 0.4, 1.0)]
    stats = shortcut_stats(results)
    assert list(stats) == ["usb erm r=0.99", "ffr erm r=0.99"]   # seeds pooled, first-seen order
    usb = stats["usb erm r=0.99"]
    assert usb["seeds"] == 2
    assert usb["probe_minority"] == pytest.approx((0.95, 0.0707107), abs=1e-6)
    assert usb["minority_gap"] == pytest.approx((0.6, 0.0), abs=1e-9)
    assert stats["ffr erm r=0.99"]["minority_real"] == (0.5, 0.0)   # one seed: std 0
    table = summarize_shortcut(results).splitlines()
    assert table[2] == "| usb erm r=0.99 | 2 | 0.875 ± 0.106 | 0.300 ± 0.141 | 0.900 ± 0.141 | 0.600 ± 0.000 |"
    png = plot_shortcut(results, tmp_path / "plots" / "shortcut.png", "test")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and not list(png.parent.glob("*.tmp.png"))
