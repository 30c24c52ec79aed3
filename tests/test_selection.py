"""The tie-break of selection on validation (issue 26 item 3): when worst-group and balanced
accuracy tie — every candidate perfect on a small validation split — the lower worst-group loss
chooses, for epochs within a stage and for hyperparameters within a grid cell; ``first`` keeps
ffr's earlier rule (the committed grids' configs pin it)."""

from __future__ import annotations

import math

import pytest
import torch

from ffr.config import ExperimentConfig, TrainConfig, load_config
from ffr.metrics import GroupTally, flat_metrics, metrics_from_tally, selection_key
from ffr.results.tables import mark_selected
from ffr.rules import ConfigError
from ffr.train.loop import _better


def test_worst_group_loss_is_the_largest_mean_cross_entropy_of_a_group(card):
    # groups 0 cat_indoor, 3 dog_outdoor; group 3 has a confident mistake
    tally = GroupTally(4).add([0, 0, 1, 1], [0, 0, 1, 1], [0, 0, 3, 3], loss=[0.1, 0.3, 0.2, 2.0])
    m = metrics_from_tally(tally, card)
    assert m["groups"]["cat_indoor"]["loss"] == pytest.approx(0.2)
    assert m["groups"]["dog_outdoor"]["loss"] == pytest.approx(1.1)
    assert m["groups"]["cat_outdoor"]["loss"] is None           # absent: not a loss of 0
    assert m["worst_group_loss"] == pytest.approx(1.1)
    assert m["worst_group_acc"] == 1.0                           # accuracy cannot tell them apart
    assert flat_metrics(m, "val")["val/worst_group_loss"] == pytest.approx(1.1)
    # tallies add up exactly, losses included
    parts = GroupTally(4).add([0, 0], [0, 0], [0, 0], loss=[0.1, 0.3])
    parts += GroupTally(4).add([1, 1], [1, 1], [3, 3], loss=[0.2, 2.0])
    assert metrics_from_tally(parts, card)["worst_group_loss"] == pytest.approx(1.1)
    with pytest.raises(ValueError, match="loss has 1 values for 2 predictions"):
        GroupTally(4).add([0, 0], [0, 0], [0, 0], loss=[0.1])


def test_without_losses_there_is_no_loss_metric(card):
    m = metrics_from_tally(GroupTally(4).add([0], [0], [0]), card)
    assert "worst_group_loss" not in m and "loss" not in m["groups"]["cat_indoor"]


def test_the_order_accuracy_then_balanced_then_the_lower_loss():
    a = {"worst_group_acc": 1.0, "balanced_acc": 1.0, "worst_group_loss": 0.30}
    b = {"worst_group_acc": 1.0, "balanced_acc": 1.0, "worst_group_loss": 0.05}
    worse = {"worst_group_acc": 0.9, "balanced_acc": 1.0, "worst_group_loss": 0.01}
    assert _better(b, a) and not _better(a, b)                   # the tie goes to the lower loss
    assert not _better(worse, a)                                 # accuracy first, whatever the loss
    assert not _better(b, a, "first") and not _better(a, b, "first")   # first: the earlier epoch stays
    assert selection_key({"worst_group_acc": None, "balanced_acc": None}) < selection_key(worse)
    assert _better(a, None)


def _rec(hp, seed, loss, tie_break="worst_group_loss"):
    r = {"dataset": "d", "strategy": "ffr", "objective": "erm", "bias_rate": 0.95, "seed": seed, "hparams": hp,
         "val": {"worst_group_acc": 1.0, "balanced_acc": 1.0, "worst_group_loss": loss},
         "test": {"worst_group_acc": 0.5, "balanced_acc": 0.5}}
    if tie_break:
        r["tie_break"] = tie_break
    return r


def test_a_grid_cell_breaks_a_tie_of_validation_accuracy_by_the_mean_worst_group_loss():
    a, b = {"finetune": {"lpft_epochs": 0}}, {"finetune": {"lpft_epochs": 5}}
    records = [_rec(a, 0, 0.2), _rec(a, 1, 0.4), _rec(b, 0, 0.25), _rec(b, 1, 0.25)]  # means 0.30 vs 0.25
    assert [r["selected"] for r in mark_selected(records)] == [False, False, True, True]
    # records made before the tie-break (no tie_break) or with "first": the first candidate in order
    for tb in (None, "first"):
        records = [_rec(a, 0, 0.2, tb), _rec(a, 1, 0.4, tb), _rec(b, 0, 0.25, tb), _rec(b, 1, 0.25, tb)]
        assert [r["selected"] for r in mark_selected(records)] == [True, True, False, False]


def test_a_stage_trained_on_a_saturating_split_picks_the_lowest_loss_epoch():
    """A signal so easy that validation accuracy is perfect from the first epoch: ``first`` keeps
    epoch 0, the tie-break the epoch of lowest worst-group loss (later: the model grows surer)."""
    from ffr.data.loading import TensorData
    from ffr.train.objectives import create_objective
    from ffr.train.backbones import create_model
    from tests.test_finetune import CARD

    def data(n, seed):
        g = torch.Generator().manual_seed(seed)
        labels = torch.arange(n) % 2
        images = torch.randint(0, 60, (n, 3, 8, 8), generator=g, dtype=torch.uint8)
        images[labels == 1] += 190
        return TensorData(images, labels, (torch.arange(n) // 2) % 2, torch.zeros(n, dtype=torch.long), CARD)

    def fit_with(tie_break):
        from ffr.train.loop import fit

        torch.manual_seed(0)
        cfg = TrainConfig(epochs=6, batch_size=8, lr=1e-2, min_steps=0, patience=0, tie_break=tie_break)
        return fit(create_model("small_cnn", 2), data(32, 0), data(16, 1), create_objective("erm"), cfg,
                   torch.device("cpu"))

    loss = fit_with("worst_group_loss")
    wga = [h["val/worst_group_acc"] for h in loss.history]
    assert wga.count(1.0) >= 2, wga                               # a tie to break
    perfect = [h for h in loss.history if h["val/worst_group_acc"] == 1.0 and h["val/balanced_acc"] == 1.0]
    lowest = min(perfect, key=lambda h: h["val/worst_group_loss"])
    assert loss.best_epoch == lowest["epoch"]
    assert fit_with("first").best_epoch == perfect[0]["epoch"] != lowest["epoch"]
    assert math.isclose(loss.best_val["worst_group_loss"], lowest["val/worst_group_loss"], rel_tol=1e-6)


def test_the_tie_break_is_a_checked_setting():
    assert TrainConfig().tie_break == ExperimentConfig().finetune.tie_break == "worst_group_loss"
    with pytest.raises(ConfigError, match="finetune.tie_break.*worst_group_loss or first"):
        from ffr.checks import experiment_problems
        from ffr.rules import refuse

        refuse(experiment_problems(load_config(None, ["finetune.tie_break=lowest"])), "config")


def test_the_tie_break_replay_counts_ties_and_reads_the_loss_rules_choice():
    """benchmarks/tie_break_replay.py: seeds averaged per candidate; a column tied on validation
    WGA and balanced accuracy goes to the lower worst-group loss; the grid's recorded choice is
    compared, test WGA beside both."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "tie_break_replay.py"
    spec = importlib.util.spec_from_file_location("tie_break_replay", path)
    replay = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(replay)

    def rec(lr, seed, loss, test, selected):
        return {"dataset": "d", "objective": "erm", "strategy": "none", "bias_rate": 0.95, "seed": seed,
                "hparams": {"train": {"lr": lr}}, "selected": selected, "test": {"worst_group_acc": test},
                "val": {"worst_group_acc": 1.0, "balanced_acc": 1.0, "worst_group_loss": loss}}

    records = [rec(1e-3, s, 0.30, 0.90, True) for s in (0, 1)] + [rec(1e-4, s, 0.10 + s, 0.97, False) for s in (0, 1)]
    [row] = replay.replay(records)
    assert row["tied"] == 2 and row["candidates"] == 2 and row["same"] and row["decided_by"] == "worst-group loss"
    # the mean loss decides: 1e-4's (0.10 + 1.10) / 2 = 0.60 is above 1e-3's 0.30
    assert (row["recorded"], row["worst_group_loss"]) == (0.90, 0.90)
    records[2]["val"]["worst_group_loss"] = records[3]["val"]["worst_group_loss"] = 0.05
    [row] = replay.replay(records)
    assert not row["same"] and (row["recorded"], row["worst_group_loss"]) == (0.90, 0.97)
    for r in records[2:]:
        r["val"]["worst_group_loss"] = 0.30      # a full tie: the candidates' order decides
    assert replay.replay(records)[0]["decided_by"] == "order"
    records[0]["val"]["balanced_acc"] = records[1]["val"]["balanced_acc"] = 0.99
    assert replay.replay(records)[0]["decided_by"] == "balanced accuracy"
    records[0]["val"]["worst_group_acc"] = 0.5
    assert replay.replay(records)[0]["decided_by"] == "validation WGA"
