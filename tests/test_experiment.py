"""Grid planning and cell identity."""

from __future__ import annotations

from ffr.config import ExperimentConfig, with_overrides
from ffr.experiment import cell_id
from ffr.grid import Cell, plan_cells


def test_plan_cells_applies_overrides_and_search():
    cfg = ExperimentConfig(strategies=["none", "asb", "ffr"], bias_rates=[0.9, 0.99], seeds=[0, 1],
                           search={"ffr": {"finetune.lr": [1e-3, 1e-4]}, "*": {"train.epochs": [5]}},
                           overrides={"asb": {"train.lr": 1e-4}})  # the paper's ASB learning rate
    cells = plan_cells(cfg)
    assert len(cells) == (1 + 1 + 2) * 2 * 2
    asb = [c for c in cells if c.strategy == "asb"][0]
    assert asb.config.train.lr == 1e-4 and asb.config.train.epochs == 5
    ffr_lrs = sorted({c.config.finetune.lr for c in cells if c.strategy == "ffr"})
    assert ffr_lrs == [1e-4, 1e-3]


def test_cell_id_tracks_what_matters():
    cfg = ExperimentConfig()
    a = cell_id(Cell("ffr", 0.95, 0, {}, cfg))
    assert a == cell_id(Cell("ffr", 0.95, 0, {}, ExperimentConfig()))
    assert a != cell_id(Cell("ffr", 0.95, 1, {}, cfg))
    assert a != cell_id(Cell("ffr", 0.95, 0, {}, with_overrides(cfg, {"finetune.lr": 0.5})))
    # the grid's own axes are not part of a cell's identity
    assert a == cell_id(Cell("ffr", 0.95, 0, {}, with_overrides(cfg, {"seeds": [7, 8]})))
