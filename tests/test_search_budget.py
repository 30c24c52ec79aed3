"""Equal search budgets: how many hyperparameter candidates each strategy chooses among, a config
that requires them equal (``equal_search``), and the count beside every result."""

from __future__ import annotations

import pytest

from ffr.checks import check_experiment
from ffr.cli import main
from ffr.config import ConfigError, load_config
from ffr.grid import search_budget, unequal_budgets
from ffr.results.tables import markdown_table, summary_rows

PAPER = ["search={none: {train.lr: [1.0e-3, 1.0e-4]}, ffr: {finetune: [{lr: 1.0e-3}, {lr: 1.0e-4}, {l2sp: 0.1}]}}",
         "strategies=[none, ffr]", "objectives=[erm, dfr]"]


def test_the_candidates_of_each_strategy_are_counted_per_objective():
    cfg = load_config(None, PAPER)
    assert search_budget(cfg) == {"erm": {"none": 2, "ffr": 3}, "dfr": {"none": 2, "ffr": 3}}
    assert unequal_budgets(cfg) == ["erm: none 2, ffr 3", "dfr: none 2, ffr 3"]
    # a key that cannot change a strategy's cells is not a candidate of that strategy
    cfg = load_config(None, ["search={'*': {objective_options.groupdro.eta: [0.01, 0.1]}}", "objectives=[erm, groupdro]"])
    assert search_budget(cfg)["erm"] == {s: 1 for s in ("none", "usb", "asb", "ffr")}
    assert search_budget(cfg)["groupdro"] == {s: 2 for s in ("none", "usb", "asb", "ffr")}


def test_equal_search_refuses_a_grid_that_favours_one_strategy():
    check_experiment(load_config(None, PAPER))  # without the flag, allowed (the paper's protocol)
    with pytest.raises(ConfigError, match=r"equal_search: .*\(erm: none 2, ffr 3\)"):
        check_experiment(load_config(None, PAPER + ["equal_search=true"]))
    even = PAPER[1:] + ["equal_search=true", "search={none: {train.lr: [1.0e-3, 1.0e-4], train.weight_decay: [0, 1.0e-3]}, "
                        "ffr: {finetune: [{lr: 1.0e-3}, {lr: 1.0e-4}, {l2sp: 0.1}, {lpft_epochs: 2}]}}"]
    assert search_budget(check_experiment(load_config(None, even)))["erm"] == {"none": 4, "ffr": 4}


def test_the_cli_names_the_unequal_counts(tmp_path, capsys):
    args = ["compare", "--out", str(tmp_path / "cmp")]
    for s in PAPER + ["equal_search=true"]:
        args += ["--set", s]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "ffr: error:" in err and "erm: none 2, ffr 3" in err and "Traceback" not in err
    assert not (tmp_path / "cmp").exists() or not any((tmp_path / "cmp").rglob("record.json"))


def test_the_shipped_equal_budget_configs_are_equal():
    for path, n in (("configs/sweep_demo_equal.yaml", 7), ("configs/sweep_faces.yaml", 7),
                    ("configs/sweep_galaxies.yaml", 7)):
        cfg = check_experiment(load_config(path, []))
        assert cfg.equal_search and not unequal_budgets(cfg), path
        assert set(search_budget(cfg)["erm"].values()) == {n}, path


def _record(strategy, lr, seed, wga):
    metrics = {"worst_group_acc": wga, "balanced_acc": wga, "average_acc": wga, "n": 4, "groups": {}}
    return {"strategy": strategy, "objective": "erm", "bias_rate": 0.95, "seed": seed, "hparams": {"train.lr": lr},
            "val": metrics, "test": metrics}


def test_every_result_says_how_many_candidates_it_was_chosen_among():
    from ffr.results.tables import mark_selected

    records = mark_selected([_record("none", lr, s, w) for lr, w in ((1e-3, 0.5), (1e-4, 0.7), (3e-4, 0.6))
                             for s in (0, 1)])
    [row] = summary_rows(records)
    assert row["candidates"] == 3 and row["seeds"] == 2 and "1e-04" in row["hparams"] or "0.0001" in row["hparams"]
    assert "| candidates |" in markdown_table(records) and "| 2 | 3 |" in markdown_table(records)
