"""Defaults from evidence: the recipe a user gets without a grid, chosen from the grids' validation
results by one written rule (docs/sweep.md, "Defaults from evidence").

The rule. For each strategy, take every column of the equal-budget grids — one (dataset,
objective, bias rate) — in which that strategy chose among its search candidates. Within a
column, rank the candidates by their mean validation worst-group accuracy over seeds (1 = best;
equal values share the mean of their ranks). The default is the candidate with the lowest mean
rank over all columns; a tie goes to the candidate that was selected in more columns, then to the
simpler one (fewer settings). Test numbers are never read: the Markdown parser takes the
validation column only, and the records' ``test`` entries are not touched.

The evidence is a grid's ``results.json`` (every record) or, for grids whose records were not
kept, the "hyperparameter candidates" table of its ``results.md`` (validation WGA rounded to three
decimals there, so a few more candidates share a rank)."""

from __future__ import annotations

import json
import os
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from ffr.results.tables import STRATEGY_ORDER, _hp_key, _mean


class EvidenceError(ValueError):
    """A results file that holds no candidate table, or one that cannot be read."""


@dataclass(frozen=True)
class Candidate:
    """One hyperparameter candidate of one grid column: its mean validation WGA over seeds."""

    dataset: str
    objective: str
    bias_rate: float
    strategy: str
    hparams: str          # canonical JSON of the candidate's overrides
    val_wga: float
    selected: bool


def candidates_from_records(records: list[dict]) -> list[Candidate]:
    """The candidates of the columns where a strategy searched (two or more hyperparameter sets),
    from a grid's records: mean validation WGA over the seeds of each."""
    by: dict[tuple, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        by[(r.get("dataset") or "", r["objective"], float(r["bias_rate"]), r["strategy"])][
            _hp_key(r.get("hparams"))].append(r)
    out = []
    for (ds, obj, rate, strat), cands in by.items():
        if len(cands) < 2:
            continue
        for hp, rs in cands.items():
            val = _mean([(r.get("val") or {}).get("worst_group_acc") for r in rs])
            if val is not None:
                out.append(Candidate(ds, obj, rate, strat, hp, val, bool(rs[0].get("selected"))))
    return out


_ROW = re.compile(r"^\|\s*(?P<ds>[^|]*?)\s*\|\s*(?P<obj>[^|]+?)\s*\|\s*(?P<rate>[0-9.]+)\s*\|\s*(?P<strat>[^|]+?)\s*\|"
                  r"\s*`(?P<hp>[^`]*)`\s*\|\s*(?P<val>[0-9.]+)[^|]*\|[^|]*\|\s*(?P<sel>✓?)\s*\|\s*$")


def candidates_from_markdown(text: str, where: str = "results.md") -> list[Candidate]:
    """The candidates of a ``results.md`` "hyperparameter candidates" table (its validation column;
    the test column is skipped unread)."""
    if "**hyperparameter candidates**" not in text:
        raise EvidenceError(f"{where}: no 'hyperparameter candidates' table (a grid without a search?)")
    body = text.split("**hyperparameter candidates**", 1)[1]
    out = []
    for n, line in enumerate(body.splitlines(), 1):
        m = _ROW.match(line)
        if m:
            hp = _hp_key(json.loads(m["hp"]))
            out.append(Candidate(m["ds"], m["obj"], float(m["rate"]), m["strat"], hp, float(m["val"]), m["sel"] == "✓"))
        elif line.startswith("| ") and "---" not in line and not line.startswith("| dataset"):
            raise EvidenceError(f"{where}: candidates table row {n} cannot be read: {line[:80]}")
    if not out:
        raise EvidenceError(f"{where}: the 'hyperparameter candidates' table has no row")
    return out


def read_evidence(path: str | os.PathLike) -> list[Candidate]:
    """Candidates from a grid's ``results.json`` or ``results.md`` (or the folder holding one;
    ``results.json`` preferred)."""
    p = Path(path)
    if p.is_dir():
        p = p / "results.json" if (p / "results.json").exists() else p / "results.md"
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise EvidenceError(f"{p}: cannot be read ({e.strerror or e})") from None
    if p.suffix == ".json":
        try:
            records = json.loads(text)
        except json.JSONDecodeError as e:
            raise EvidenceError(f"{p}: not JSON ({e.msg}, line {e.lineno})") from None
        if not isinstance(records, list):
            raise EvidenceError(f"{p}: not a list of grid records")
        return candidates_from_records(records)
    return candidates_from_markdown(text, str(p))


def _ranks(values: list[float]) -> list[float]:
    """Rank 1 for the highest value; equal values share the mean of their ranks."""
    order = sorted(range(len(values)), key=lambda i: -values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


@dataclass
class Standing:
    """How one candidate did across the columns of one strategy."""

    hparams: str
    mean_rank: float
    columns: int
    selected: int         # columns where validation chose it


def standings(candidates: list[Candidate], strategy: str) -> list[Standing]:
    """Every candidate of ``strategy`` ordered by the rule (best first). Only candidates present in
    every column take part, so that the mean ranks are over the same columns."""
    columns: dict[tuple, dict[str, Candidate]] = defaultdict(dict)
    for c in candidates:
        if c.strategy == strategy:
            columns[(c.dataset, c.objective, c.bias_rate)][c.hparams] = c
    if not columns:
        return []
    common = set.intersection(*(set(col) for col in columns.values()))
    ranks: dict[str, list[float]] = defaultdict(list)
    chosen: dict[str, int] = defaultdict(int)
    for col in columns.values():
        hps = sorted(common)
        for hp, rank in zip(hps, _ranks([col[hp].val_wga for hp in hps])):
            ranks[hp].append(rank)
            chosen[hp] += col[hp].selected
    rows = [Standing(hp, sum(r) / len(r), len(r), chosen[hp]) for hp, r in ranks.items()]
    return sorted(rows, key=lambda s: (s.mean_rank, -s.selected, len(flat_overrides(s.hparams)), s.hparams))


def choose(candidates: list[Candidate]) -> dict[str, Standing]:
    """The rule's choice per strategy that searched: strategy → its best :class:`Standing`."""
    strategies = sorted({c.strategy for c in candidates},
                        key=lambda s: (STRATEGY_ORDER.index(s) if s in STRATEGY_ORDER else 99, s))
    out = {}
    for s in strategies:
        rows = standings(candidates, s)
        if rows:
            out[s] = rows[0]
    return out


def flat_overrides(hparams: str) -> dict:
    """``{"finetune": {"lpft_epochs": 5}}`` → ``{"finetune.lpft_epochs": 5}``."""
    out = {}

    def walk(prefix, value):
        if isinstance(value, dict) and value:
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else k, v)
        elif prefix:
            out[prefix] = value
    walk("", json.loads(hparams))
    return out


def ties(candidates: list[Candidate]) -> dict[str, tuple[int, int]]:
    """Per dataset: (columns whose best mean validation WGA is shared by two or more candidates,
    columns) — how often accuracy alone could not choose and a tie-break (or the order) did."""
    columns: dict[tuple, list[float]] = defaultdict(list)
    for c in candidates:
        columns[(c.dataset, c.objective, c.bias_rate, c.strategy)].append(c.val_wga)
    out: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for (ds, *_), vals in columns.items():
        out[ds][0] += vals.count(max(vals)) > 1
        out[ds][1] += 1
    return {ds: (t, n) for ds, (t, n) in sorted(out.items())}


def report(candidates: list[Candidate]) -> str:
    """A Markdown report: per strategy, every candidate's mean rank and selection count, the
    choice marked; then, per dataset, how many of its columns had a tie at the top."""
    lines = []
    for s, best in choose(candidates).items():
        rows = standings(candidates, s)
        lines += [f"**{s}** ({best.columns} columns)", "", "| candidate | mean validation rank | selected in | default |",
                  "|---|---|---|---|"]
        for r in rows:
            lines.append(f"| `{r.hparams}` | {r.mean_rank:.2f} | {r.selected} | {'✓' if r.hparams == best.hparams else ''} |")
        lines.append("")
    lines += ["**ties at the top** (columns whose best mean validation WGA two or more candidates share)", "",
              "| dataset | tied columns |", "|---|---|"]
    lines += [f"| {ds} | {t} of {n} |" for ds, (t, n) in ties(candidates).items()]
    return "\n".join(lines)


def disagreements(candidates: list[Candidate]) -> list[str]:
    """Where the project's defaults (:class:`ffr.config.ExperimentConfig` with each strategy's
    ``overrides``) differ from the rule's choice, one line each (empty: they agree). Every key any
    candidate of a strategy sets is compared; a key the chosen candidate leaves out is at its
    stage's plain default (:class:`ffr.config.TrainConfig`), as in the grids' base settings."""
    from ffr.config import ExperimentConfig, TrainConfig, with_overrides

    cfg = ExperimentConfig()
    plain = TrainConfig()
    out = []
    for strategy, best in choose(candidates).items():
        keys = sorted({k for c in candidates if c.strategy == strategy for k in flat_overrides(c.hparams)})
        chosen = flat_overrides(best.hparams)
        effective = with_overrides(cfg, cfg.overrides.get(strategy, {}))
        for key in keys:
            stage, _, name = key.partition(".")
            if stage not in ("train", "pretrain", "finetune") or not hasattr(plain, name):
                continue  # e.g. objective_options.*: not a default of a stage
            want = chosen.get(key, getattr(plain, name))
            have = getattr(getattr(effective, stage), name)
            if have != want:
                out.append(f"{strategy}: {key} is {have!r} by default; the evidence chooses {want!r} ({best.hparams})")
    return out
