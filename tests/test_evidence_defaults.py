"""Defaults from evidence (docs/sweep.md): the rule that turns the equal-budget grids' validation
results into ffr's defaults, and the check that the defaults are what the committed results choose."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ffr.cli import main
from ffr.results.defaults import (Candidate, EvidenceError, _ranks, candidates_from_markdown, candidates_from_records,
                                  choose, disagreements, flat_overrides, read_evidence, standings, ties)

ROOT = Path(__file__).resolve().parents[1]
EVIDENCE = [ROOT / "docs/results" / name / "results.md" for name in ("sweep_equal", "galaxies", "faces")]


def test_the_defaults_are_what_the_committed_grids_choose(capsys):
    """ffr.config's defaults equal the rule's choice over the three equal-budget grids: changing a
    default, or rerunning a grid that chooses otherwise, fails here until the two agree."""
    assert main(["defaults", *map(str, EVIDENCE), "--check"]) == 0
    out = capsys.readouterr().out
    assert "the defaults (ffr.config) are the evidence's choice" in out
    candidates = [c for p in EVIDENCE for c in read_evidence(p)]
    chosen = {s: json.loads(b.hparams) for s, b in choose(candidates).items()}
    assert chosen["ffr"] == {"finetune": {"lpft_epochs": 5}}
    assert chosen["usb"] == {"train": {"lr": 0.0003, "weight_decay": 0.001}}
    # 23 columns each (digits 8, galaxies 9, faces 6), 7 candidates in every one
    assert {s: b.columns for s, b in choose(candidates).items()} == {"none": 23, "usb": 23, "asb": 23, "ffr": 23}
    # how often validation accuracy could not choose: on faces almost always (23 of 24 with the
    # 10-image validation floor, 22 of 24 on the whole split the committed faces grid uses)
    assert ties(candidates) == {"demo": (11, 32), "demo-faces": (22, 24), "demo-galaxies": (15, 36)}
    assert "| demo-faces | 22 of 24 |" in out


def test_a_default_that_differs_from_the_evidence_is_named(monkeypatch, capsys):
    from ffr import config

    monkeypatch.setitem(config.BASELINES, "usb", {"lr": config.LR})
    differ = disagreements([c for p in EVIDENCE for c in read_evidence(p)])
    assert differ == ["usb: train.lr is 0.001 by default; the evidence chooses 0.0003 "
                      '({"train": {"lr": 0.0003, "weight_decay": 0.001}})',
                      "usb: train.weight_decay is 1e-05 by default; the evidence chooses 0.001 "
                      '({"train": {"lr": 0.0003, "weight_decay": 0.001}})']
    assert main(["defaults", *map(str, EVIDENCE), "--check"]) == 1
    assert "2 default(s) differ" in capsys.readouterr().out


def _record(strategy, hp, seed, val, test, dataset="d", objective="erm", rate=0.95):
    return {"dataset": dataset, "strategy": strategy, "objective": objective, "bias_rate": rate, "seed": seed,
            "hparams": hp, "val": {"worst_group_acc": val, "balanced_acc": val},
            "test": {"worst_group_acc": test, "balanced_acc": test}}


def test_the_rule_ranks_on_validation_and_never_reads_test():
    a, b = {"finetune": {"lr": 1e-3}}, {"finetune": {"lpft_epochs": 5}}
    records = []
    for col, (va, vb) in enumerate([(0.6, 0.5), (0.2, 0.4), (0.3, 0.7)]):
        for seed in (0, 1):
            # test says the opposite of validation everywhere: it must not matter
            records += [_record("ffr", a, seed, va, 1 - va, dataset=f"d{col}"),
                        _record("ffr", b, seed, vb, 1 - vb, dataset=f"d{col}")]
    cands = candidates_from_records(records)
    [first, second] = standings(cands, "ffr")
    assert json.loads(first.hparams) == b and first.mean_rank == pytest.approx(4 / 3) and first.columns == 3
    assert second.mean_rank == pytest.approx(5 / 3)
    # a column where one strategy has a single candidate did not search: it is not evidence
    assert candidates_from_records([_record("none", {}, 0, 0.5, 0.5)]) == []


def test_ties_share_their_rank_and_the_simpler_candidate_wins_a_tied_mean():
    assert _ranks([0.5, 0.7, 0.5, 0.1]) == [2.5, 1.0, 2.5, 4.0]
    col = [Candidate("d", "erm", 0.95, "ffr", json.dumps(hp, sort_keys=True), 0.5, False)
           for hp in ({"finetune": {"l2sp": 0.1, "lpft_epochs": 5}}, {"finetune": {"l2sp": 0.1}})]
    assert json.loads(choose(col)["ffr"].hparams) == {"finetune": {"l2sp": 0.1}}
    assert flat_overrides('{"finetune": {"l2sp": 0.1, "lpft_epochs": 5}}') == {"finetune.l2sp": 0.1,
                                                                                "finetune.lpft_epochs": 5}


def test_markdown_evidence_reads_the_validation_column_only():
    text = (ROOT / "docs/results/faces/results.md").read_text()
    cands = candidates_from_markdown(text, "faces")
    assert len(cands) == 6 * 4 * 7
    rows = [line.split("|") for line in text.splitlines() if line.startswith("| demo-faces | erm | 0.95 | ffr |")]
    read = {c.hparams: c.val_wga for c in cands if (c.objective, c.bias_rate, c.strategy) == ("erm", 0.95, "ffr")}
    assert read == {json.dumps(json.loads(r[5].strip(" `")), sort_keys=True): float(r[6].split("±")[0]) for r in rows}
    assert sum(c.selected for c in cands if c.hparams in read and (c.objective, c.bias_rate) == ("erm", 0.95)
               and c.strategy == "ffr") == 1


@pytest.mark.parametrize("text, needle", [
    ("| a | b |\n", "no 'hyperparameter candidates' table"),
    ("**hyperparameter candidates** (chosen by validation WGA)\n\n| dataset | objective |\n|---|---|\n", "has no row"),
    ("**hyperparameter candidates**\n\n| d | erm | 0.95 | ffr | `{}` | high | 0.1 | |\n", "row 3 cannot be read"),
])
def test_unreadable_evidence_is_named(tmp_path, capsys, text, needle):
    path = tmp_path / "results.md"
    path.write_text(text)
    with pytest.raises(EvidenceError, match=needle):
        read_evidence(path)
    assert main(["defaults", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ffr: error: {path}") and needle in err and "Traceback" not in err
    assert main(["defaults", str(tmp_path / "missing.json")]) == 2
    assert "missing.json: cannot be read" in capsys.readouterr().err
