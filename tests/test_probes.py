"""The real-vs-synthetic domain-gap probe."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ffr.data.demo import DemoSpec, make_demo
from ffr.data.manifest import Manifest
from ffr.probes import domain_gap
from ffr.synthesis.base import create_backend, synthesize


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory):
    """240 real train images (60 per group) and 240 procedural ones of the same groups."""
    root = tmp_path_factory.mktemp("gap")
    real = make_demo(root / "demo", DemoSpec(per_digit=40)).select(split="train")
    card = real.card
    synthetic = synthesize(create_backend("procedural", card), card, {g: 60 for g in card.groups}, root / "syn")
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
