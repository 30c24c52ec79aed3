"""Bias-rate splits and balancing budgets: exact counts."""

from __future__ import annotations

import pytest

from ffr.balance import STRATEGIES, balance, pool_requirement, synthetic_budget, usb_need
from ffr.data.manifest import Manifest
from ffr.data.splits import bias_rate_split, class_bias_fraction, minority_keep


@pytest.mark.parametrize("n_maj,rate,expected", [(750, 0.95, 39), (750, 0.99, 7), (990, 0.99, 10),
                                                   (100, 0.9, 11), (50, 0.999, 1)])
def test_minority_keep(n_maj, rate, expected):
    assert minority_keep(n_maj, rate) == expected


def test_minority_keep_rejects_bad_rate():
    with pytest.raises(ValueError, match="bias_rate"):
        minority_keep(10, 1.0)


def test_split_exact_counts(make_dataset):
    root = make_dataset({
        ("train", "cat", "indoor"): 100, ("train", "cat", "outdoor"): 100,
        ("train", "dog", "indoor"): 100, ("train", "dog", "outdoor"): 60,
        ("val", "cat", "indoor"): 40, ("val", "cat", "outdoor"): 40,
        ("val", "dog", "indoor"): 40, ("val", "dog", "outdoor"): 40,
        ("test", "cat", "indoor"): 7, ("test", "cat", "outdoor"): 9,
        ("test", "dog", "indoor"): 5, ("test", "dog", "outdoor"): 3,
    })
    m = Manifest.load(root)
    out, report = bias_rate_split(m, 0.9, seed=0)
    train = out.select(split="train").group_counts()
    # cat: majority indoor 100 → keep 11 outdoor; dog: majority outdoor 60 → keep 6 indoor
    assert train == {("cat", "indoor"): 100, ("cat", "outdoor"): 11, ("dog", "indoor"): 6, ("dog", "outdoor"): 60}
    val = out.select(split="val").group_counts()
    # val: 40 * 0.1 / 0.9 = 4.4 → 4, raised to the floor of 10
    assert val == {("cat", "indoor"): 40, ("cat", "outdoor"): 10, ("dog", "indoor"): 10, ("dog", "outdoor"): 40}
    # test as given
    assert out.select(split="test").group_counts() == m.select(split="test").group_counts()
    assert report.after["train"]["cat|outdoor"] == 11 and report.before["train"]["cat|outdoor"] == 100
    assert class_bias_fraction(out)["cat"] == pytest.approx(100 / 111)


def test_split_is_seeded_and_row_order_free(make_dataset):
    root = make_dataset({("train", "cat", "indoor"): 50, ("train", "cat", "outdoor"): 50,
                         ("train", "dog", "outdoor"): 50, ("train", "dog", "indoor"): 50})
    m = Manifest.load(root)
    a, _ = bias_rate_split(m, 0.8, seed=1)
    b, _ = bias_rate_split(Manifest(m.frame.iloc[::-1], m.card, m.root), 0.8, seed=1)
    c, _ = bias_rate_split(m, 0.8, seed=2)
    assert sorted(a.frame["path"]) == sorted(b.frame["path"])
    assert sorted(a.frame["path"]) != sorted(c.frame["path"])


def _synthetic_pool(tmp_path, card, n):
    rows = [{"path": f"{l}_{b}/{i}.png", "label": l, "bias": b, "split": "train", "source": "synthetic",
             "seed": i, "generator": "test"} for l, b in card.groups for i in range(n)]
    return Manifest.from_records(rows, card, tmp_path / "synth")


def test_budgets_are_identical_across_strategies(make_dataset, tmp_path, card):
    counts = {("cat", "indoor"): 100, ("cat", "outdoor"): 11, ("dog", "indoor"): 6, ("dog", "outdoor"): 60}
    assert usb_need(counts) == {("cat", "indoor"): 0, ("cat", "outdoor"): 89, ("dog", "indoor"): 94, ("dog", "outdoor"): 40}
    usb_total = 89 + 94 + 40
    assert sum(synthetic_budget("usb", counts).values()) == usb_total
    assert synthetic_budget("asb", counts) == {g: usb_total // 4 for g in counts}
    assert synthetic_budget("ffr", counts) == {g: usb_total // 4 for g in counts}
    assert set(synthetic_budget("none", counts).values()) == {0}
    with pytest.raises(KeyError, match="known: asb, ffr, none, usb"):
        synthetic_budget("mix", counts)
    assert pool_requirement(["usb", "ffr"], [counts])[("cat", "indoor")] == usb_total // 4


def test_balance_plans(make_dataset, tmp_path, card):
    root = make_dataset({("train", "cat", "indoor"): 10, ("train", "cat", "outdoor"): 2,
                         ("train", "dog", "indoor"): 1, ("train", "dog", "outdoor"): 8})
    real = Manifest.load(root)
    pool = _synthetic_pool(tmp_path, card, 20)
    none = balance("none", real, pool)
    assert [s.name for s in none.stages] == ["train"] and len(none.stages[0].train) == 21
    usb = balance("usb", real, pool)
    mixed = usb.stages[0].train
    assert mixed.group_counts() == {g: 10 for g in card.groups}
    assert int(mixed.is_synthetic().sum()) == 0 + 8 + 9 + 2
    asb = balance("asb", real, pool)
    per = (8 + 9 + 2) // 4
    assert asb.stages[0].train.group_counts() == {("cat", "indoor"): 10 + per, ("cat", "outdoor"): 2 + per,
                                                 ("dog", "indoor"): 1 + per, ("dog", "outdoor"): 8 + per}
    ffr = balance("ffr", real, pool)
    assert [(s.name, s.init_from) for s in ffr.stages] == [("pretrain", None), ("finetune", "pretrain")]
    assert ffr.stages[0].train.group_counts() == {g: per for g in card.groups}
    assert ffr.stages[0].train.is_synthetic().all()
    assert not ffr.stages[1].train.is_synthetic().any()
    # every strategy draws the same synthetic images first
    asb_train = asb.stages[0].train
    asb_synth = {p for p, syn in zip(asb_train.abs_paths(), asb_train.is_synthetic()) if syn}
    assert asb_synth == set(ffr.stages[0].train.abs_paths())


def test_balance_errors(make_dataset, tmp_path, card):
    real = Manifest.load(make_dataset({("train", "cat", "indoor"): 10, ("train", "dog", "outdoor"): 1}))
    with pytest.raises(ValueError, match="needs a synthetic pool"):
        balance("usb", real, None)
    with pytest.raises(ValueError, match="synthetic pool too small: group cat_outdoor: needs 10, pool has 3"):
        balance("usb", real, _synthetic_pool(tmp_path, card, 3))
    assert STRATEGIES.names() == ["asb", "ffr", "none", "usb"]


def test_absent_validation_and_test_groups_are_recorded_and_shown(make_dataset, tmp_path, capsys):
    """A group missing from val or test shrinks worst-group accuracy to the groups present: the
    split report records it, `ffr prepare` warns, and a grid's results.md says so."""
    from ffr.cli import main
    from ffr.results.tables import absent_notes

    root = make_dataset({("train", "cat", "indoor"): 20, ("train", "cat", "outdoor"): 4,
                         ("train", "dog", "indoor"): 4, ("train", "dog", "outdoor"): 20,
                         ("val", "cat", "indoor"): 3, ("val", "dog", "indoor"): 3, ("val", "dog", "outdoor"): 3,
                         ("test", "cat", "indoor"): 2, ("test", "cat", "outdoor"): 2, ("test", "dog", "indoor"): 2})
    _, report = bias_rate_split(Manifest.load(root), 0.8, seed=0, min_val_per_group=1)
    assert report.absent == {"val": ["cat_outdoor"], "test": ["dog_outdoor"]}
    assert report.to_dict()["absent"] == report.absent and "warning" in report.format()
    assert main(["prepare", "--set", f"data.dataset={root}", "--set", "data.min_val_per_group=1",
                 "--bias-rate", "0.8", "--out", str(tmp_path / "prep")]) == 0
    err = capsys.readouterr().err
    assert "no real val image in group(s) cat_outdoor" in err and "no real test image in group(s) dog_outdoor" in err
    notes = absent_notes([{"bias_rate": 0.8, "absent": report.absent}])
    assert len(notes) == 2 and "test split has no image of group(s) dog_outdoor" in notes[0]
