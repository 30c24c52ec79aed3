"""The built-in faces benchmark (real LFW photos under a warm/cool cast) and its drawn generator."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
from PIL import Image

from ffr.data.faces import CLASSES, SPEC_FILE, FacesSpec, load_lfw_subset, make_faces, photo_bias, split_sources
from ffr.data.manifest import SPLITS, DatasetCard, Manifest
from ffr.synthesis.faces import FacesBackend
from ffr.synthesis.generation import ImageRequest, image_seed, run_synthesis


def _pixels(manifest: Manifest) -> np.ndarray:
    """Every image of ``manifest`` as float (N, H, W, 3) in [0, 1]."""
    return np.stack([np.asarray(Image.open(p), dtype=np.float64) / 255 for p in manifest.abs_paths()])


def _red_minus_blue(images: np.ndarray) -> float:
    return float((images[..., 0] - images[..., 2]).mean())


def _flatness(images: np.ndarray) -> np.ndarray:
    """Per image: the share of horizontally neighbouring pixel pairs of (almost) equal luminance."""
    gray = images.mean(axis=-1)
    return (np.abs(np.diff(gray, axis=2)) < 0.004).mean(axis=(1, 2))


def _request(label="face", bias="warm", index=0, base_seed=0) -> ImageRequest:
    return ImageRequest(label, bias, index, image_seed(base_seed, label, bias, index))


@pytest.fixture(scope="module")
def default_build(tmp_path_factory) -> Manifest:
    return make_faces(tmp_path_factory.mktemp("faces") / "faces")


# ---------------------------------------------------------------- the real benchmark
def test_default_build_counts_balance_and_cast(default_build):
    loaded = Manifest.load(default_build.root)  # validates every row and decodes every image
    assert len(loaded) == 2000 and set(loaded.frame["source"]) == {"real"}
    assert loaded.card.name == "faces" and loaded.card.bias_name == "lighting"
    assert loaded.card.classes == ["face", "nonface"] and loaded.card.bias_values == ["warm", "cool"]
    assert loaded.card.majority_bias == {"face": "warm", "nonface": "cool"}
    # 60/20/20 source photos per class, half of them under each lighting, 10 variants each.
    expected = {"train": 300, "val": 100, "test": 100}
    for split in SPLITS:
        assert set(loaded.select(split=split).group_counts().values()) == {expected[split]}
    test = loaded.select(split="test")
    with Image.open(test.abs_paths()[0]) as im:
        assert im.size == (32, 32) and im.mode == "RGB"
    # The bias is visible: warm images are redder than blue, cool ones bluer, in both classes.
    images, frame = _pixels(test), test.frame
    for label in CLASSES:
        warm = images[((frame["label"] == label) & (frame["bias"] == "warm")).to_numpy()]
        cool = images[((frame["label"] == label) & (frame["bias"] == "cool")).to_numpy()]
        assert _red_minus_blue(warm) > 0.05 and _red_minus_blue(cool) < -0.05


def test_no_source_photo_is_in_two_splits(tmp_path):
    spec = FacesSpec(variants=2, seed=1)
    sources = split_sources(spec)
    assert {s: [len(sources[s][c]) for c in CLASSES] for s in SPLITS} == \
        {"train": [60, 60], "val": [20, 20], "test": [20, 20]}
    for c, label in enumerate(CLASSES):
        per_split = [set(sources[s][label]) for s in SPLITS]
        assert set.union(*per_split) == set(range(100 * c, 100 * c + 100))  # faces 0-99, nonfaces 100-199
        assert sum(map(len, per_split)) == 100  # disjoint

    # The pixels agree: variant 0 of each image is its recorded photo, variant 1 the mirror image.
    m = make_faces(tmp_path / "f", spec)
    photos, _ = load_lfw_subset()
    resized = np.clip([np.asarray(Image.fromarray(p).resize((32, 32), Image.BICUBIC)) for p in photos], 0, 1)
    flat = resized.reshape(200, -1)
    flat = (flat - flat.mean(1, keepdims=True)) / flat.std(1, keepdims=True)
    seen: dict[int, set[str]] = {}
    for split in SPLITS:
        for label in CLASSES:
            for bias in ("warm", "cool"):
                rows = m.select(split=split).frame
                rows = rows[(rows["label"] == label) & (rows["bias"] == bias)]
                dealt = [src for k, src in enumerate(sources[split][label]) if photo_bias(spec, k) == bias]
                assert len(rows) == 2 * len(dealt) == len(sources[split][label])
                images = _pixels(Manifest(rows, m.card, m.root)).mean(axis=-1)
                for n, image in enumerate(images):
                    src = dealt[n // 2]
                    seen.setdefault(src, set()).add(bias)
                    gray = (image[:, ::-1] if n % 2 else image).ravel()
                    # The image is the photo up to the cast's gain and lift (and uint8 rounding).
                    fit = np.polyfit(resized[src].ravel(), gray, 1)
                    residual = gray - np.polyval(fit, resized[src].ravel())
                    assert np.sqrt(np.mean(residual ** 2)) < 0.002, (split, label, n, src)
                    if label == "face":  # 100 distinct faces: the recorded photo is the only match
                        corr = flat @ ((gray - gray.mean()) / gray.std()) / gray.size
                        assert int(np.argmax(corr)) == src and corr[src] > 0.99
    # Every photo is shown, and under one cast only: no minority image is a recoloured majority one.
    assert sorted(seen) == list(range(200)) and all(len(b) == 1 for b in seen.values())


def test_same_seed_gives_identical_files_and_another_seed_differs(tmp_path):
    a = make_faces(tmp_path / "a", FacesSpec(variants=1, seed=3))
    b = make_faces(tmp_path / "b", FacesSpec(variants=1, seed=3))
    c = make_faces(tmp_path / "c", FacesSpec(variants=1, seed=4))
    assert (tmp_path / "a" / "manifest.csv").read_bytes() == (tmp_path / "b" / "manifest.csv").read_bytes()
    assert [p.read_bytes() for p in a.abs_paths()] == [p.read_bytes() for p in b.abs_paths()]
    assert a.digest() == b.digest() and len(a) == len(c) == 200
    # Another seed puts other photos in each split and draws other cast strengths.
    assert split_sources(FacesSpec(seed=3)) != split_sources(FacesSpec(seed=4))
    pa, pc = _pixels(a), _pixels(c)
    assert (pa != pc).any(axis=(1, 2, 3)).mean() > 0.95


def test_complete_build_is_reused_and_another_spec_rebuilds(tmp_path):
    out = tmp_path / "faces"
    first = make_faces(out, FacesSpec(variants=2))
    png = first.abs_paths()[0]
    os.utime(png, (1_000_000, 1_000_000))
    again = make_faces(out, FacesSpec(variants=2))
    assert png.stat().st_mtime == 1_000_000  # not rewritten
    assert again.digest() == first.digest()

    other = make_faces(out, FacesSpec(variants=1, bias_values=["cool", "warm"]))
    assert other.card.majority_bias == {"face": "cool", "nonface": "warm"}
    assert len(list((out / "images").rglob("*.png"))) == len(other) == 200  # no stale image of the old spec
    assert '"variants": 1' in (out / SPEC_FILE).read_text()
    assert '"format": "faces-v' in (out / SPEC_FILE).read_text()

    # A build without its spec file (interrupted: its marker still there) is not trusted: it is
    # built again, and completed.
    (out / SPEC_FILE).unlink()
    (out / f"{SPEC_FILE}.building").touch()
    os.utime(other.abs_paths()[0], (1_000_000, 1_000_000))
    redone = make_faces(out, FacesSpec(variants=1, bias_values=["cool", "warm"]))
    assert other.abs_paths()[0].stat().st_mtime != 1_000_000 and (out / SPEC_FILE).is_file()
    assert redone.digest() == other.digest()


@pytest.mark.parametrize("kwargs, message", [
    ({"bias_values": ["warm", "neon"]}, "available: ['cool', 'warm']"),
    ({"bias_values": ["warm"]}, "at least 2 distinct"),
    ({"bias_values": ["warm", "warm"]}, "at least 2 distinct"),
    ({"split_fractions": (0.5, 0.5, 0.5)}, "sum"),
    ({"split_fractions": (0.6, 0.4)}, "3 positive"),
    ({"split_fractions": (0.996, 0.002, 0.002)}, "without a source photo"),
    ({"variants": 0}, "variants"),
    ({"variants": 1.5}, "whole number"),
    ({"image_size": 4}, "image_size"),
])
def test_invalid_specs_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        FacesSpec(**kwargs)


# ---------------------------------------------------------------- the drawn generator
def test_generator_is_a_function_of_the_seed():
    card = FacesSpec().card()
    a, b = FacesBackend(card), FacesBackend(card)
    req = _request()
    first = np.asarray(a.generate([req])[0])
    again = np.asarray(b.generate([_request(index=5), req])[1])  # a fresh instance, another batch
    assert np.array_equal(first, again)
    assert a.prompt_for(req) == b.prompt_for(req)
    images = [np.asarray(a.render(_request(label, index=i))) for label in CLASSES for i in range(6)]
    assert all(not np.array_equal(x, y) for i, x in enumerate(images) for y in images[i + 1:])
    assert FacesBackend.generator == "procedural-faces-v1" and FacesBackend.batch_invariant


def test_every_group_renders_with_its_lighting():
    backend = FacesBackend(FacesSpec().card())
    rb = {}
    for label, bias in backend.card.groups:
        reqs = [_request(label, bias, i) for i in range(8)]
        images = backend.generate(reqs)
        assert all(im.size == (32, 32) and im.mode == "RGB" for im in images)
        rb[(label, bias)] = _red_minus_blue(np.stack([np.asarray(im, dtype=np.float64) / 255 for im in images]))
        prompts = [backend.prompt_for(r) for r in reqs]
        assert all(p.endswith(f"under {bias} light") for p in prompts)
        assert all(("no face" in p) == (label == "nonface") for p in prompts)
    for label in CLASSES:
        assert rb[(label, "warm")] > 0.05 and rb[(label, "cool")] < -0.05
    assert FacesBackend(backend.card, image_size=48).render(_request()).size == (48, 48)


def test_generator_rejects_unknown_groups_options_and_cards():
    backend = FacesBackend(FacesSpec().card())
    with pytest.raises(ValueError, match="not a group"):
        backend.generate([_request("face", "neon")])
    with pytest.raises(ValueError, match="not a group"):
        backend.render(_request("cat", "warm"))
    with pytest.raises(TypeError, match="unknown option"):
        FacesBackend(backend.card, guidance=7.5)
    with pytest.raises(ValueError, match="classes"):
        FacesBackend(DatasetCard(name="x", classes=["cat", "dog"], bias_values=["warm", "cool"]))
    with pytest.raises(ValueError, match="lightings"):
        FacesBackend(DatasetCard(name="x", classes=["face", "nonface"], bias_values=["grass", "brick"]))


def test_generator_runs_in_the_synthesis_loop(tmp_path):
    card = FacesSpec().card()
    counts = {g: 2 for g in card.groups}
    m = run_synthesis(FacesBackend(card), card, counts, tmp_path / "syn", base_seed=7).manifest
    assert m.group_counts() == counts and set(m.frame["generator"]) == {"procedural-faces-v1"}
    assert all(p.is_file() for p in m.abs_paths())


def test_synthetic_faces_are_drawn_not_photographed(default_build):
    """A domain gap, measured: drawn faces have flat areas, photographs have texture everywhere."""
    backend = FacesBackend(default_build.card)
    real = default_build.select(split="test")
    real_faces = _pixels(Manifest(real.frame[real.frame["label"] == "face"], real.card, real.root))
    drawn = np.stack([np.asarray(backend.render(_request("face", b, i)), dtype=np.float64) / 255
                      for b in ("warm", "cool") for i in range(100)])
    real_flat, drawn_flat = _flatness(real_faces), _flatness(drawn)
    auc = (drawn_flat[:, None] > real_flat[None]).mean()
    assert auc > 0.9, auc
    # Yet the lighting is the same feature in both: the cast shifts red-minus-blue alike.
    real_shift = _red_minus_blue(real_faces[real.frame["bias"][real.frame["label"] == "face"].to_numpy() == "warm"]) \
        - _red_minus_blue(real_faces[real.frame["bias"][real.frame["label"] == "face"].to_numpy() == "cool"])
    drawn_shift = _red_minus_blue(drawn[:100]) - _red_minus_blue(drawn[100:])
    assert 0.5 < drawn_shift / real_shift < 2
