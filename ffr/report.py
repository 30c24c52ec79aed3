"""Results of a grid: hyperparameter selection by mean validation WGA over seeds, and the
mean ± std table (Markdown and CSV)."""

from __future__ import annotations

import csv
import json
import math
import os
from collections import defaultdict
from pathlib import Path

STRATEGY_ORDER = ["none", "usb", "asb", "ffr"]


def _hp_key(hp: dict) -> str:
    return json.dumps(hp or {}, sort_keys=True)


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def _std(xs):
    xs = [x for x in xs if x is not None]
    if len(xs) < 2:
        return 0.0 if xs else None
    m = sum(xs) / len(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def mark_selected(records: list[dict]) -> list[dict]:
    """Set ``selected`` on every record: True for the hyperparameters with the best mean
    validation worst-group accuracy across seeds within its (strategy, objective, bias rate).
    Test numbers never take part in the choice."""
    by_cell: dict[tuple, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        by_cell[(r["strategy"], r["objective"], r["bias_rate"])][_hp_key(r.get("hparams"))].append(r)
    for cands in by_cell.values():
        def score(k):
            vals = [r["val"]["worst_group_acc"] for r in cands[k]]
            m = _mean(vals)
            return (m if m is not None else -1.0, _mean([r["val"]["balanced_acc"] for r in cands[k]]) or -1.0)
        best = max(sorted(cands), key=score)
        for k, rs in cands.items():
            for r in rs:
                r["selected"] = k == best
    return records


def summary_rows(records: list[dict]) -> list[dict]:
    """One row per (objective, bias rate, strategy) over the selected records: test WGA,
    balanced and average accuracy (mean, std over seeds), validation WGA, the hyperparameters."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        if r.get("selected", True):
            groups[(r["objective"], r["bias_rate"], r["strategy"])].append(r)
    order = {s: i for i, s in enumerate(STRATEGY_ORDER)}
    rows = []
    for (obj, rate, strat), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], order.get(kv[0][2], 99), kv[0][2])):
        row = {"objective": obj, "bias_rate": rate, "strategy": strat, "seeds": len(rs),
               "hparams": _hp_key(rs[0].get("hparams"))}
        for split, metric in (("test", "worst_group_acc"), ("test", "balanced_acc"), ("test", "average_acc"),
                              ("val", "worst_group_acc")):
            vals = [r[split][metric] for r in rs]
            row[f"{split}_{metric}_mean"] = _mean(vals)
            row[f"{split}_{metric}_std"] = _std(vals)
        rows.append(row)
    return rows


def _pm(m, s) -> str:
    return "—" if m is None else f"{m:.3f} ± {s:.3f}"


def markdown_table(records: list[dict]) -> str:
    """The comparison table in Markdown: test WGA and balanced accuracy, mean ± std over seeds."""
    rows = summary_rows(records)
    lines = ["| objective | bias rate | strategy | test WGA | test balanced acc | test avg acc | val WGA | seeds | hparams |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['objective']} | {r['bias_rate']} | {r['strategy']} | "
            f"{_pm(r['test_worst_group_acc_mean'], r['test_worst_group_acc_std'])} | "
            f"{_pm(r['test_balanced_acc_mean'], r['test_balanced_acc_std'])} | "
            f"{_pm(r['test_average_acc_mean'], r['test_average_acc_std'])} | "
            f"{_pm(r['val_worst_group_acc_mean'], r['val_worst_group_acc_std'])} | {r['seeds']} | "
            f"`{r['hparams']}` |")
    return "\n".join(lines)


def write_results(records: list[dict], out_dir: str | os.PathLike) -> dict[str, Path]:
    """``results.json`` (every record), ``results.md`` and ``results.csv`` (the selected summary)."""
    out = Path(out_dir)
    paths = {"json": out / "results.json", "md": out / "results.md", "csv": out / "results.csv"}
    tmp = paths["json"].with_suffix(".json.tmp")
    tmp.write_text(json.dumps(records, indent=2) + "\n")
    os.replace(tmp, paths["json"])
    paths["md"].write_text(markdown_table(records) + "\n")
    rows = summary_rows(records)
    with paths["csv"].open("w", newline="") as f:
        if rows:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    return paths
