"""The procedural synthesis backend: typeset digits over procedural textures."""

from __future__ import annotations

import os

import numpy as np
import pytest

from ffr.data.demo import DemoSpec
from ffr.data.manifest import DatasetCard, Manifest
from ffr.synthesis.generation import SYNTHESIS_BACKENDS, ImageRequest, create_backend, image_seed, run_synthesis
from ffr.synthesis.procedural import ProceduralBackend


@pytest.fixture
def card23() -> DatasetCard:
    # Two digit classes × three backgrounds.
    return DemoSpec(classes={"low": (0, 1, 2, 3, 4), "high": (5, 6, 7, 8, 9)},
                    bias_values=["grass", "brick", "gravel"]).card()


def _request(label="low", bias="grass", index=0, base_seed=0) -> ImageRequest:
    return ImageRequest(label, bias, index, image_seed(base_seed, label, bias, index))


def test_registered():
    assert "procedural" in SYNTHESIS_BACKENDS
    assert isinstance(SYNTHESIS_BACKENDS.get("procedural")(DemoSpec().card()), ProceduralBackend)


def test_same_request_same_image_and_seeds_differ(card23):
    a, b = ProceduralBackend(card23), ProceduralBackend(card23)
    req = _request()
    # A fresh instance, and a batch in another order, give the same pixels.
    first = np.asarray(a.generate([req])[0])
    again = np.asarray(b.generate([_request(index=5), req])[1])
    assert np.array_equal(first, again)
    others = [np.asarray(a.generate([_request(index=i)])[0]) for i in range(1, 6)]
    assert all(not np.array_equal(first, o) for o in others)
    assert a.prompt_for(req) == b.prompt_for(req)


def test_every_group_of_a_2x3_card_renders(card23):
    # "marble" has no generator of its own: it gets the generic, name-coloured one.
    card = DatasetCard(name="x", classes=card23.classes, bias_values=["grass", "brick", "marble"],
                       description=card23.description)
    backend = create_backend("procedural", card)
    means = {}
    for label, bias in card.groups:
        reqs = [_request(label, bias, i) for i in range(8)]
        images = backend.generate(reqs)
        assert all(im.size == (32, 32) and im.mode == "RGB" for im in images)
        for req in reqs:
            prompt = backend.prompt_for(req)
            digit = int(prompt.split("digit ")[1].split()[0])
            assert digit in backend.digits[label] and prompt.endswith(f"on {bias}")
        means[(label, bias)] = np.mean([np.asarray(im, dtype=float).mean(axis=(0, 1)) for im in images], axis=0)
    # Each background imitates its texture's colour: grass green, brick red.
    assert means[("low", "grass")][1] > means[("low", "grass")][0] + 20
    assert means[("high", "brick")][0] > means[("high", "brick")][1] + 20
    # Both classes are drawn: the digits of the prompts cover both digit sets.
    seen = {int(backend.prompt_for(_request(c, "grass", i)).split("digit ")[1][0]) for c in card.classes for i in range(40)}
    assert seen & set(backend.digits["low"]) and seen & set(backend.digits["high"])


def test_image_size_and_options(card23):
    assert ProceduralBackend(card23, image_size=48).generate([_request()])[0].size == (48, 48)
    with pytest.raises(TypeError, match="unknown option"):
        ProceduralBackend(card23, guidance=7.5)
    with pytest.raises(ValueError, match="not a group"):
        ProceduralBackend(card23).generate([_request("low", "sand")])


def test_synthesize_writes_valid_manifest_and_resumes(tmp_path, card23):
    backend = create_backend("procedural", card23)
    counts = {g: 3 for g in card23.groups}
    m = run_synthesis(backend, card23, counts, tmp_path / "syn", base_seed=7).manifest
    assert len(m) == 18 and set(m.frame["generator"]) == {"procedural-v1"}
    assert all(p.is_file() for p in m.abs_paths())
    m.save(tmp_path / "syn")
    loaded = Manifest.load(tmp_path / "syn")  # decodes every file
    assert loaded.group_counts() == counts
    assert loaded.frame["prompt"].str.startswith("a handwritten-looking digit").all()

    for p in m.abs_paths():
        os.utime(p, (1_000_000, 1_000_000))
    before = [p.read_bytes() for p in m.abs_paths()]
    again = run_synthesis(create_backend("procedural", card23), card23, counts, tmp_path / "syn", base_seed=7).manifest
    assert [p.stat().st_mtime for p in again.abs_paths()] == [1_000_000] * 18  # nothing rewritten
    assert again.digest() == m.digest()
    # Rendering them anew gives the same bytes: the kept files are exactly what a rerun would write.
    fresh = run_synthesis(create_backend("procedural", card23), card23, counts, tmp_path / "fresh", base_seed=7).manifest
    assert [p.read_bytes() for p in fresh.abs_paths()] == before
