"""The group evaluator on hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ffr.metrics import GroupTally, confusion_matrix, flat_metrics, group_metrics, metrics_from_tally


def test_hand_computed(card):
    # groups: 0 cat_indoor, 1 cat_outdoor, 2 dog_indoor, 3 dog_outdoor
    label = [0, 0, 0, 0, 0, 1, 1, 1, 1, 1]
    group = [0, 0, 0, 0, 1, 2, 2, 3, 3, 3]
    pred = [0, 0, 0, 1, 1, 1, 0, 1, 1, 1]
    m = group_metrics(pred, label, group, card)
    assert m["groups"]["cat_indoor"] == {"acc": 0.75, "n": 4}
    assert m["groups"]["cat_outdoor"] == {"acc": 0.0, "n": 1}
    assert m["groups"]["dog_indoor"] == {"acc": 0.5, "n": 2}
    assert m["groups"]["dog_outdoor"] == {"acc": 1.0, "n": 3}
    assert m["worst_group_acc"] == 0.0 and m["worst_group"] == "cat_outdoor"
    assert m["balanced_acc"] == pytest.approx((0.75 + 0 + 0.5 + 1) / 4)
    assert m["average_acc"] == pytest.approx(7 / 10)
    assert m["n"] == 10 and m["absent_groups"] == []


def test_absent_group_is_reported_not_nan(card):
    m = group_metrics(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 1]), torch.tensor([0, 3, 3]), card)
    assert m["groups"]["cat_outdoor"] == {"acc": None, "n": 0}
    assert m["absent_groups"] == ["cat_outdoor", "dog_indoor"]
    assert m["worst_group_acc"] == 1.0 and m["balanced_acc"] == 1.0
    flat = flat_metrics(m, "test")
    assert "test/group/cat_outdoor/acc" not in flat and flat["test/group/cat_outdoor/n"] == 0.0
    assert not any(np.isnan(v) for v in flat.values())


def test_empty_split(card):
    m = group_metrics([], [], [], card)
    assert m["worst_group_acc"] is None and m["balanced_acc"] is None and m["average_acc"] is None
    assert all(g["n"] == 0 for g in m["groups"].values())


def test_tallies_add_exactly(card):
    rng = np.random.default_rng(0)
    label = rng.integers(0, 2, 101)
    group = label * 2 + rng.integers(0, 2, 101)
    pred = rng.integers(0, 2, 101)
    whole = GroupTally(4).add(pred, label, group)
    parts = GroupTally(4).add(pred[:40], label[:40], group[:40])
    parts += GroupTally(4).add(pred[40:], label[40:], group[40:])
    assert metrics_from_tally(parts, card) == metrics_from_tally(whole, card)


def test_bad_inputs(card):
    with pytest.raises(ValueError, match="lengths differ"):
        GroupTally(4).add([0, 1], [0], [0])
    with pytest.raises(ValueError, match="out of range"):
        GroupTally(4).add([0], [0], [4])


def test_confusion():
    assert confusion_matrix([0, 1, 1, 0], [0, 1, 0, 0], 2).tolist() == [[2, 1], [0, 1]]


def test_calibration_error_per_group_from_binned_confidences(card):
    # group 0: always right at confidence 1.0 (calibrated); group 1: right half the time at 0.9
    # (ECE 0.4); group 2: right at 1.0, wrong at 0.01 (ECE = 0.02 / 4 rows)
    pred = [0, 0, 0, 0, 1, 0, 1, 0, 1, 1, 1, 1]
    label = [0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0]
    group = [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]
    conf = [1.0, 1.0, 1.0, 1.0, 0.9, 0.9, 0.9, 0.9, 1.0, 1.0, 0.01, 0.01]
    m = group_metrics(pred, label, group, card, confidence=conf)
    eces = [m["groups"][k]["ece"] for k in card.group_keys]
    assert eces[0] == pytest.approx(0.0) and eces[1] == pytest.approx(0.4) and eces[2] == pytest.approx(0.005)
    assert eces[3] is None  # no images
    assert m["worst_group_ece"] == pytest.approx(0.4)
    # over all rows: bins 1.0 (6 rows, 6 right), 0.9 (4 rows, 2 right), 0.01 (2 rows, 0 right)
    assert m["ece"] == pytest.approx((abs(2 - 3.6) + abs(0 - 0.02)) / 12)
    # the tally adds up over batches exactly like the accuracy counts
    parts = GroupTally(4).add(pred[:5], label[:5], group[:5], conf[:5])
    parts += GroupTally(4).add(pred[5:], label[5:], group[5:], conf[5:])
    assert metrics_from_tally(parts, card) == m
    # without confidences nothing about calibration is claimed
    assert "ece" not in group_metrics(pred, label, group, card)
    flat = flat_metrics(m, "test")
    assert flat["test/group/" + card.group_keys[1] + "/ece"] == pytest.approx(0.4) and "test/worst_group_ece" in flat


def test_train_weighted_average_is_the_waterbirds_convention(card):
    """"Average accuracy" as the group-robustness papers report it: each group's test accuracy
    weighted by the group's share of the training set (here 90/5/3/2 %), not of the test set."""
    from ffr.metrics import train_weighted_acc

    m = group_metrics([0, 0, 0, 1, 1, 1, 0, 1, 1, 1], [0, 0, 0, 0, 0, 1, 1, 1, 1, 1],
                      [0, 0, 0, 0, 1, 2, 2, 3, 3, 3], card)  # accs 0.75, 0.0, 0.5, 1.0
    train = {"cat_indoor": 90, "cat_outdoor": 5, "dog_indoor": 3, "dog_outdoor": 2}
    assert train_weighted_acc(m, train) == pytest.approx((90 * 0.75 + 5 * 0 + 3 * 0.5 + 2 * 1.0) / 100)
    assert train_weighted_acc(m, {}) is None
    m["train_weighted_acc"] = train_weighted_acc(m, train)
    assert flat_metrics(m, "test")["test/train_weighted_acc"] == pytest.approx(0.71)
