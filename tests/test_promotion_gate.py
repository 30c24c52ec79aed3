"""The promotion gate's decision rule (pure: no registry involved)."""

from __future__ import annotations

import pytest

from ffr.promotion import Evaluation, GatePolicy, decide

POLICY = GatePolicy(margin=0.01, tolerance=0.02, floor=0.5)


def ev(wga_groups: dict, digest: str = "d1") -> Evaluation:
    return Evaluation(min(v for v in wga_groups.values() if v is not None), dict(wga_groups), digest)


CHAMP = ev({"a_x": 0.70, "a_y": 0.90, "b_x": 0.80, "b_y": 0.95})


def test_first_model_needs_the_floor():
    assert decide(ev({"a_x": 0.6, "b_x": 0.9}), None, POLICY).promote
    d = decide(ev({"a_x": 0.4, "b_x": 0.9}), None, POLICY)
    assert not d.promote and "below the floor" in d.summary


def test_better_challenger_is_promoted():
    d = decide(ev({"a_x": 0.75, "a_y": 0.90, "b_x": 0.80, "b_y": 0.94}), CHAMP, POLICY)
    assert d.promote, d.summary


@pytest.mark.parametrize("groups, why", [
    ({"a_x": 0.705, "a_y": 0.9, "b_x": 0.8, "b_y": 0.95}, "margin"),     # gain below the margin
    ({"a_x": 0.60, "a_y": 0.9, "b_x": 0.8, "b_y": 0.95}, "margin"),      # worse
    ({"a_x": 0.70, "a_y": 0.80, "b_x": 0.8, "b_y": 0.95}, "a_y falls"),  # same WGA, a group regressed
    ({"a_x": 0.78, "a_y": 0.9, "b_x": 0.8, "b_y": 0.90}, "b_y falls"),   # better WGA, a group regressed
    ({"a_x": 0.78, "a_y": 0.9, "b_x": 0.8, "b_y": None}, "b_y falls"),   # a group went missing
])
def test_gate_refuses(groups, why):
    wga = min(v for v in groups.values() if v is not None)
    d = decide(Evaluation(wga, groups, "d1"), CHAMP, POLICY)
    assert not d.promote and not d.refused
    assert why in d.summary


def test_regression_within_tolerance_is_allowed():
    d = decide(ev({"a_x": 0.75, "a_y": 0.885, "b_x": 0.80, "b_y": 0.95}), CHAMP, POLICY)
    assert d.promote, d.summary


def test_other_test_data_is_refused():
    d = decide(ev({"a_x": 0.99, "a_y": 0.99, "b_x": 0.99, "b_y": 0.99}, digest="d2"), CHAMP, POLICY)
    assert d.refused and not d.promote and "other test data" in d.summary


def test_tags_round_trip():
    tags = CHAMP.tags("test")
    assert Evaluation.from_tags(tags, "test") == CHAMP
    with pytest.raises(ValueError, match="not registered by ffr"):
        Evaluation.from_tags({}, "test")


def test_evaluation_from_stage_metrics():
    m = {"worst_group_acc": 0.5, "data_digest": "abc",
         "groups": {"a_x": {"acc": 0.5, "n": 3}, "a_y": {"acc": None, "n": 0}}}
    e = Evaluation.from_metrics(m)
    assert e.groups == {"a_x": 0.5, "a_y": None} and e.test_digest == "abc"
    with pytest.raises(ValueError, match="data_digest"):
        Evaluation.from_metrics({**m, "data_digest": None})
