"""The training budget in optimizer steps as well as epochs: ``min_steps`` gives a small dataset
more epochs, ``max_steps`` caps a big one, ``patience`` stops once validation WGA stops
improving (before ``min_steps`` only once ``warmup_steps`` are taken and the last ``warmup_steps``
did nothing: ``plateau``); the steps taken and the reason the stage ended are in the
history, the stage summary and the tracker. With 0 for all three a stage runs ``epochs`` epochs."""

from __future__ import annotations

import pytest
import torch

from ffr.config import TrainConfig
from ffr.rules import ConfigError, refuse
from ffr.train.backbones import create_model
from ffr.train.loop import fit, planned_epochs
from ffr.train.objectives import create_objective
from test_finetune import tiny_data


def run(**cfg):
    torch.manual_seed(0)
    settings = TrainConfig(**{"batch_size": 8, "lr": 1e-2, "min_steps": 0, "patience": 0, **cfg})
    return fit(create_model("tiny_cnn", 2), tiny_data(32), tiny_data(16, 1), create_objective("erm"), settings,
               torch.device("cpu"))


def test_epochs_follow_the_step_budget():
    rows, batch = 600, 128  # 5 steps an epoch
    assert planned_epochs(TrainConfig(epochs=40, min_steps=0), rows, batch) == 40
    assert planned_epochs(TrainConfig(epochs=40, min_steps=1000), rows, batch) == 200
    assert planned_epochs(TrainConfig(epochs=40, max_steps=52), rows, batch) == 11  # the cap wins over the floor
    assert planned_epochs(TrainConfig(epochs=40, min_steps=1000), 50_000, batch) == 40  # 391 steps an epoch
    assert planned_epochs(TrainConfig(epochs=40, max_steps=1000), 50_000, batch) == 3
    # a last batch of one image is skipped (BatchNorm), so it is no step: 129 rows are 1 step an epoch
    assert planned_epochs(TrainConfig(epochs=1, min_steps=10), 129, batch) == 10
    assert planned_epochs(TrainConfig(epochs=1, min_steps=10), 130, batch) == 5


def test_the_default_budget_fits_the_dataset_size():
    """The defaults give a 600-image set 1,000 steps (200 epochs), a 50,000-image set its 40 epochs."""
    assert planned_epochs(TrainConfig(), 600, 128) == 200
    assert planned_epochs(TrainConfig(), 50_000, 128) == TrainConfig().epochs == 40
    assert TrainConfig().patience > 0 and TrainConfig().max_steps == 0


def test_no_budget_is_the_epochs():
    r = run(epochs=3)
    assert [h["epoch"] for h in r.history] == [0, 1, 2] and r.stop_reason == "epochs"
    assert r.steps == 3 * 4 == r.history[-1]["total_steps"] and r.history[-1]["stop_reason"] == "epochs"


def test_min_steps_adds_epochs_and_max_steps_stops_mid_epoch():
    r = run(epochs=1, min_steps=10)  # 4 steps an epoch: 3 epochs
    assert len(r.history) == 3 and r.steps == 12
    r = run(epochs=5, max_steps=6)
    assert r.steps == 6 and [h["steps"] for h in r.history] == [4, 2] and r.stop_reason == "max_steps"
    assert r.history[-1]["stop_reason"] == "max_steps"


def test_patience_stops_after_no_improvement_but_not_before_min_steps():
    full = run(epochs=30)
    from ffr.metrics import selection_key

    keys = [selection_key({m: h[f"val/{m}"] for m in ("worst_group_acc", "balanced_acc", "worst_group_loss")})
            for h in full.history]  # the selection's order
    best, best_epoch, since, stop = None, -1, 0, None  # where patience 2 must stop, from the full run
    for i, k in enumerate(keys):
        if best is None or k > best:
            best, best_epoch, since = k, i, 0
        else:
            since += 1
        if since >= 2:
            stop = i
            break
    assert stop is not None, keys
    early = run(epochs=30, patience=2)
    assert early.stop_reason == "patience" and len(early.history) == stop + 1
    assert early.best_epoch == best_epoch
    strip = lambda hs: [{k: v for k, v in h.items() if k != "stop_reason"} for h in hs]  # noqa: E731
    assert strip(early.history) == strip(full.history[:stop + 1])  # the same epochs, then it stopped
    later = run(epochs=30, patience=2, min_steps=4 * (stop + 3))
    assert len(later.history) >= stop + 3


def test_a_plateau_ends_a_stage_before_its_floor_once_warmed_up():
    """4 steps an epoch, a floor of 400 steps (100 epochs): the tiny signal is learnt in a few
    epochs, so after the 40-step warm-up a stage whose last 40 steps did not improve validation WGA
    ends there — the floor is a ceiling for a stage that stopped learning. warmup_steps 0 trains the
    whole floor, as before."""
    floor = run(epochs=1, min_steps=400, patience=2, warmup_steps=0)
    assert floor.steps >= 400 and floor.stop_reason in ("patience", "epochs")
    early = run(epochs=1, min_steps=400, patience=2, warmup_steps=40)
    assert early.stop_reason == "plateau" and early.history[-1]["stop_reason"] == "plateau"
    assert 40 <= early.steps < 400
    last_best = early.history[early.best_epoch]["total_steps"]
    assert early.steps - last_best >= 40                                  # 40 steps without a better WGA
    assert all(early.steps - h["total_steps"] < 40 or h["epoch"] <= early.best_epoch for h in early.history[:-1])
    # the same epochs as the full run up to the stop, and the same model chosen
    strip = lambda hs: [{k: v for k, v in h.items() if k != "stop_reason"} for h in hs]  # noqa: E731
    assert strip(early.history) == strip(floor.history[:len(early.history)])
    assert early.best_epoch == floor.best_epoch or floor.history[floor.best_epoch]["total_steps"] > early.steps
    # no patience, no early stop of any kind
    assert run(epochs=1, min_steps=400, patience=0, warmup_steps=40).steps >= 400


def test_patience_waits_for_the_end_of_lpfts_head_only_epochs():
    r = run(epochs=30, patience=2, lpft_epochs=6)
    assert len(r.history) >= 6 + 2


def test_a_cell_trained_without_the_budget_is_not_reused_under_the_default_budget():
    from ffr.config import load_config
    from ffr.experiment import cell_id

    from ffr.grid import Cell

    ids = {name: cell_id(Cell("none", 0.95, 0, {}, load_config(None, sets))) for name, sets in {
        "default": [], "off": [f"{s}.{k}=0" for s in ("train", "pretrain", "finetune") for k in ("min_steps", "patience")],
        "equal_search": ["equal_search=true"]}.items()}
    assert ids["default"] != ids["off"]  # 0 was the default before the budget had one: those cells keep their ids
    assert ids["equal_search"] == ids["default"]  # a check, not a setting


@pytest.mark.parametrize("bad, field", [({"min_steps": -1}, "min_steps"), ({"max_steps": -2}, "max_steps"),
                                        ({"patience": -1}, "patience"), ({"warmup_steps": -5}, "warmup_steps")])
def test_bad_budgets_are_refused(bad, field):
    with pytest.raises(ConfigError, match=field):
        refuse(TrainConfig(**bad).problems())


@pytest.mark.parametrize("min_steps", [0, 40])
def test_an_explicit_epoch_count_is_honoured_or_its_raise_announced(tmp_path, capsys, min_steps):
    """`ffr train --set train.epochs=2`: with no step floor it trains exactly 2 epochs; a floor that
    needs more says so on stderr (and how to turn it off) and records the epochs planned in the
    stage's summary; either way a line per epoch shows the progress."""
    import json

    from ffr.train.stage import stage_files
    from test_hostile_input import _train

    out = tmp_path / "m.pt"
    _train(tmp_path, out, "--set", f"train.min_steps={min_steps}")
    err = capsys.readouterr().err
    _, history_file, summary_file = stage_files(out)
    planned = json.loads(summary_file.read_text())["meta"]["epochs_planned"]
    history = [json.loads(line) for line in history_file.read_text().splitlines()]
    assert len(history) == planned and f"epoch {planned}/{planned}" in err and "s left" in err
    if min_steps == 0:
        assert planned == 2 and "raised" not in err
    else:
        assert planned > 2 and f"2 epochs raised to {planned} to reach min_steps=40" in err
        assert "set min_steps=0 to train exactly 2" in err


def test_the_raise_says_a_plateau_may_end_it_sooner():
    from ffr.train.stage import announce_budget

    said, meta = [], {}
    planned = announce_budget("finetune", TrainConfig(epochs=40, batch_size=128), 600, meta, said.append)
    assert planned == meta["epochs_planned"] == 200
    assert said == ["finetune: 40 epochs raised to 200 to reach min_steps=1000 optimizer steps on 600 images; it "
                    "ends sooner if validation WGA stops improving for 800 steps (set min_steps=0 to train exactly 40)"]
    said.clear()
    announce_budget("finetune", TrainConfig(epochs=3, lpft_epochs=5, min_steps=0), 600, {}, said.append)
    assert said == ["finetune: all 3 epochs train the head alone (lpft_epochs=5 is not below the stage's epochs; "
                    "set lpft_epochs=0 to fine-tune the whole model)"]
