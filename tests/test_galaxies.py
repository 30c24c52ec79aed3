"""The built-in galaxies benchmark (real Hubble Deep Field cutouts) and its analytic generator."""

from __future__ import annotations

import os
import re

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ffr.data.galaxies import (BANDS, CLASSES, COMPACT_MAX_AXIS, COMPACT_MIN_AXIS_RATIO, EXTENDED_MIN_AXIS,
                               EXTENDED_MIN_SOLIDITY, SOURCES_FILE, SPEC_FILE, GalaxiesSpec, band_colour,
                               find_sources, make_galaxies)
from ffr.data.manifest import SPLITS, DatasetCard, Manifest
from ffr.synthesis.galaxies import GalaxiesBackend
from ffr.synthesis.generation import ImageRequest, image_seed

SMALL = dict(per_class=12, variants=2, seed=5)


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Manifest:
    """One small build per module: 12 sources per class, 2 orientations each, in both bands."""
    return make_galaxies(tmp_path_factory.mktemp("galaxies") / "g", GalaxiesSpec(**SMALL))


def _provenance(manifest: Manifest) -> pd.DataFrame:
    table = pd.read_csv(manifest.root / SOURCES_FILE)
    return table.merge(manifest.frame[["path", "split", "bias"]], on="path", validate="one_to_one")


def _bright_area(pixels: np.ndarray) -> int:
    """Pixels clearly above the sky (brightest channel 40 levels over the image's median): the source's size."""
    v = pixels.max(axis=-1).astype(float)
    return int((v > np.median(v) + 40).sum())


def _request(label="compact", bias="red", index=0) -> ImageRequest:
    return ImageRequest(label, bias, index, image_seed(0, label, bias, index))


# ---------------------------------------------------------------- the real benchmark
def test_small_build_is_valid_and_balanced(small):
    loaded = Manifest.load(small.root)  # validates every row, decodes every image, no image in two splits
    assert loaded.card.name == "galaxies" and loaded.card.bias_name == "band"
    assert loaded.card.classes == list(CLASSES) and loaded.card.bias_values == list(BANDS)
    assert loaded.card.majority_bias == {"compact": "red", "extended": "blue"}
    assert "measured morphology" in loaded.card.description and "not a catalogue" in loaded.card.description
    prov = _provenance(loaded)
    for split in SPLITS:
        counts = loaded.select(split=split).group_counts()
        rows = prov[prov["split"] == split]
        sources = rows.groupby("label")["source_id"].nunique()
        # Every source of the split, in 2 orientations, in each band: all 4 groups the same size.
        assert sources["compact"] == sources["extended"] >= 1
        assert set(counts.values()) == {sources["compact"] * SMALL["variants"]}, (split, counts)
    assert prov.groupby("split")["source_id"].nunique().sum() <= 2 * SMALL["per_class"]
    with Image.open(loaded.abs_paths()[0]) as im:
        assert im.size == (32, 32) and im.mode == "RGB"


def test_no_source_nor_pixel_is_in_two_splits(small):
    prov = _provenance(small)
    assert (prov.groupby("source_id")["split"].nunique() == 1).all()
    # Stronger: the cutout boxes of different splits never overlap, so no galaxy shows in two splits.
    boxes = prov.drop_duplicates("source_id")
    lo_y, lo_x = (boxes["y"] - boxes["box"] // 2).to_numpy(), (boxes["x"] - boxes["box"] // 2).to_numpy()
    side, split = boxes["box"].to_numpy(), boxes["split"].to_numpy()
    overlap = ((np.maximum(lo_y[:, None], lo_y[None]) < np.minimum(lo_y + side, (lo_y + side)[:, None]))
               & (np.maximum(lo_x[:, None], lo_x[None]) < np.minimum(lo_x + side, (lo_x + side)[:, None])))
    assert not (overlap & (split[:, None] != split[None])).any()


def test_labels_separate_on_measured_morphology():
    sources = find_sources()
    by_label = {c: [s for s in sources if s.label == c] for c in (*CLASSES, None)}
    assert len(by_label["extended"]) >= 200 and len(by_label["compact"]) >= len(by_label["extended"])
    assert by_label[None], "the ambiguity margin drops some sources"
    compact_axes = [s.major_axis for s in by_label["compact"]]
    extended_axes = [s.major_axis for s in by_label["extended"]]
    # The margin holds: every compact source is smaller than every extended one by more than 1.5×.
    assert max(compact_axes) <= COMPACT_MAX_AXIS < EXTENDED_MIN_AXIS <= min(extended_axes)
    assert min(extended_axes) / max(compact_axes) > 1.5
    assert min(s.axis_ratio for s in by_label["compact"]) >= COMPACT_MIN_AXIS_RATIO
    assert min(s.solidity for s in by_label["extended"]) >= EXTENDED_MIN_SOLIDITY
    # Between the classes, nothing is kept: a source of the margin is neither small-and-round nor large-and-solid.
    for s in by_label[None]:
        assert not (s.major_axis <= COMPACT_MAX_AXIS and s.axis_ratio >= COMPACT_MIN_AXIS_RATIO)
        assert not (s.major_axis >= EXTENDED_MIN_AXIS and s.solidity >= EXTENDED_MIN_SOLIDITY)


def test_built_images_keep_the_morphology_and_show_the_band(small):
    prov = _provenance(small)
    pixels = {p: np.asarray(Image.open(small.root / p)) for p in prov["path"]}
    area = {c: np.median([_bright_area(pixels[p]) for p in prov.loc[prov["label"] == c, "path"]]) for c in CLASSES}
    assert area["extended"] > 2 * area["compact"]
    mean = {b: np.mean([pixels[p].reshape(-1, 3).mean(axis=0) for p in prov.loc[prov["bias"] == b, "path"]], axis=0)
            for b in BANDS}
    assert mean["red"][0] > mean["red"][2] + 10 and mean["blue"][2] > mean["blue"][0] + 10


def test_same_seed_gives_identical_files_and_another_seed_differs(small, tmp_path):
    again = make_galaxies(tmp_path / "again", GalaxiesSpec(**SMALL))
    for name in ("manifest.csv", SOURCES_FILE, SPEC_FILE):
        assert (tmp_path / "again" / name).read_bytes() == (small.root / name).read_bytes()
    assert [p.read_bytes() for p in again.abs_paths()] == [p.read_bytes() for p in small.abs_paths()]
    other = make_galaxies(tmp_path / "other", GalaxiesSpec(**{**SMALL, "seed": 6}))
    assert set(_provenance(other)["source_id"]) != set(_provenance(small)["source_id"])
    assert [p.read_bytes() for p in other.abs_paths()] != [p.read_bytes() for p in small.abs_paths()]


def test_a_complete_build_is_reused_and_another_spec_rebuilds(tmp_path):
    out = tmp_path / "g"
    first = make_galaxies(out, GalaxiesSpec(per_class=4, variants=1))
    png = first.abs_paths()[0]
    os.utime(png, (1_000_000, 1_000_000))
    again = make_galaxies(out, GalaxiesSpec(per_class=4, variants=1))
    assert png.stat().st_mtime == 1_000_000  # not rewritten
    assert again.digest() == first.digest()

    other = make_galaxies(out, GalaxiesSpec(per_class=3, variants=1, image_size=16))
    assert len(list((out / "images").rglob("*.png"))) == len(other) == 3 * 2 * 2  # no stale image
    with Image.open(other.abs_paths()[0]) as im:
        assert im.size == (16, 16)
    assert '"image_size": 16' in (out / SPEC_FILE).read_text()


@pytest.mark.parametrize("kwargs, message", [
    ({"split_fractions": (0.5, 0.5, 0.5)}, "sum"),
    ({"split_fractions": (0.8, 0.2)}, "3 positive numbers"),
    ({"variants": 9}, "variants must be 1 to 8"),
    ({"variants": 0}, "variants must be 1 to 8"),
    ({"per_class": 2}, "per_class: 2 must be at least 3"),
    ({"image_size": 4}, "image_size: 4 must be in [8, 1024] pixels"),
    ({"seed": -1}, "seed: -1 must be an integer in [0, 2**63)"),
])
def test_invalid_specs_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        GalaxiesSpec(**kwargs)


def test_band_colour_rejects_unknown_bands():
    with pytest.raises(ValueError, match="unknown band 'green'"):
        band_colour(np.zeros((2, 2)), "green")


@pytest.mark.slow  # builds the whole default benchmark (~8,000 images, a few seconds)
def test_default_build_counts(tmp_path):
    m = make_galaxies(tmp_path / "g")
    expected = {"train": 1160, "val": 384, "test": 384}  # 145 / 48 / 48 sources per class × 8 orientations
    for split in SPLITS:
        assert set(m.select(split=split).group_counts().values()) == {expected[split]}


# ---------------------------------------------------------------- the synthetic generator
def test_generator_is_deterministic_per_seed_and_seeds_differ():
    card = GalaxiesSpec().card()
    a, b = GalaxiesBackend(card), GalaxiesBackend(card)
    req = _request("extended", "blue")
    first = np.asarray(a.generate([req])[0])
    again = np.asarray(b.generate([_request("extended", "blue", 5), req])[1])  # other instance, other batch
    assert np.array_equal(first, again)
    assert a.prompt_for(req) == b.prompt_for(req)
    others = [np.asarray(a.render(_request("extended", "blue", i))) for i in range(1, 6)]
    assert all(not np.array_equal(first, o) for o in others)


def test_generator_renders_every_group_in_size_and_colour():
    card = GalaxiesSpec().card()
    backend = GalaxiesBackend(card, image_size=24)
    means = {}
    for label, bias in card.groups:
        images = backend.generate([_request(label, bias, i) for i in range(6)])
        assert all(im.size == (24, 24) and im.mode == "RGB" for im in images)
        means[bias] = np.mean([np.asarray(im, dtype=float).reshape(-1, 3).mean(axis=0) for im in images], axis=0)
        assert backend.prompt_for(_request(label, bias)).endswith(f"in the {bias} band")
    assert means["red"][0] > means["red"][2] + 10 and means["blue"][2] > means["blue"][0] + 10
    assert GalaxiesBackend.generator == "procedural-galaxies-v1" and GalaxiesBackend.batch_invariant


def test_generator_rejects_other_groups_cards_and_options():
    card = GalaxiesSpec().card()
    with pytest.raises(ValueError, match="not a group"):
        GalaxiesBackend(card).render(_request("compact", "green"))
    with pytest.raises(ValueError, match="not a group"):
        GalaxiesBackend(card).prompt_for(_request("nebula", "red"))
    with pytest.raises(ValueError, match="not the galaxies benchmark"):
        GalaxiesBackend(DatasetCard(name="demo", classes=["low", "high"], bias_values=["grass", "brick"]))
    with pytest.raises(TypeError, match="unknown option"):
        GalaxiesBackend(card, guidance=7.5)


def test_synthetic_and_real_images_agree_on_what_the_classes_look_like(small):
    """A size threshold fitted on synthetic images alone classifies the real ones well: the
    generator draws the same task, in another kind of image."""
    backend = GalaxiesBackend(small.card)
    synthetic = {c: np.array([_bright_area(np.asarray(backend.render(_request(c, b, i))))
                              for b in BANDS for i in range(40)]) for c in CLASSES}

    def balanced_accuracy(areas: dict[str, np.ndarray], threshold: int) -> float:
        return (np.mean(areas["compact"] < threshold) + np.mean(areas["extended"] >= threshold)) / 2

    threshold = max(range(1, 400), key=lambda t: balanced_accuracy(synthetic, t))
    real = {c: np.array([_bright_area(np.asarray(Image.open(p)))
                         for p, label in zip(small.abs_paths(), small.frame["label"]) if label == c]) for c in CLASSES}
    assert balanced_accuracy(synthetic, threshold) > 0.7
    assert balanced_accuracy(real, threshold) > 0.7
