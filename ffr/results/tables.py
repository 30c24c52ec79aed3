"""Results of a grid: hyperparameter selection by mean validation WGA over seeds, and the
mean ± std table with a 95% bootstrap interval (Markdown and CSV)."""

from __future__ import annotations

import csv
import json
import math
import os
from collections import defaultdict
from pathlib import Path

from ffr.paths import write_atomic, write_json

STRATEGY_ORDER = ["none", "usb", "asb", "ffr"]
OBJECTIVE_ORDER = ["erm", "resample", "groupdro", "dfr"]


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


BOOTSTRAP_REPLICATES = 2000


def bootstrap_interval(records: list[dict], metric: str = "worst_group_acc", split: str = "test",
                       replicates: int = BOOTSTRAP_REPLICATES, level: float = 0.95) -> tuple[float, float] | None:
    """A ``level`` interval of the mean ``metric`` (``worst_group_acc`` or ``balanced_acc``)
    over the seeds of ``records``, by a two-level bootstrap: each replicate draws the seeds with
    replacement and, within each drawn seed's evaluation, every group's images with replacement
    (a group's correct count ~ Binomial(n, its accuracy): test-set noise), then takes the mean
    over seeds. Seeded: the same records give the same interval. None without group counts."""
    import numpy as np

    seeds = []
    for r in records:
        groups = [g for g in (r.get(split) or {}).get("groups", {}).values() if g.get("n") and g.get("acc") is not None]
        if groups:
            seeds.append((np.array([g["n"] for g in groups]), np.array([g["acc"] for g in groups])))
    if not seeds:
        return None
    rng = np.random.default_rng(0)
    reduce = np.min if metric == "worst_group_acc" else np.mean
    picks = rng.integers(0, len(seeds), size=(replicates, len(seeds)))
    values = np.empty((replicates, len(seeds)))
    for j, (n, acc) in enumerate(seeds):
        resampled = rng.binomial(n, acc, size=(replicates, len(n))) / n  # every seed, every replicate
        values[:, j] = reduce(resampled, axis=1)
    means = np.take_along_axis(values, picks, axis=1).mean(1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def mark_selected(records: list[dict]) -> list[dict]:
    """Set ``selected`` on every record: True for the hyperparameters with the best mean
    validation worst-group accuracy across seeds within its (dataset, strategy, objective, bias
    rate); ties go to the better mean balanced accuracy, then — when the records were trained with
    the ``worst_group_loss`` tie-break (``tie_break`` in each record) — the lower mean worst-group
    loss, else to the first candidate in order (:func:`ffr.metrics.selection_key`). Test numbers
    never take part in the choice."""
    from ffr.metrics import selection_key

    by_cell: dict[tuple, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        by_cell[(r.get("dataset"), r["strategy"], r["objective"], r["bias_rate"])][_hp_key(r.get("hparams"))].append(r)
    for cands in by_cell.values():
        every = [r for rs in cands.values() for r in rs]
        tie_break = "worst_group_loss" if all(r.get("tie_break") == "worst_group_loss" for r in every) else "first"

        def score(k):
            def mean(metric):
                vals = [r["val"].get(metric) for r in cands[k]]
                return None if None in vals else _mean(vals)
            return selection_key({m: mean(m) for m in ("worst_group_acc", "balanced_acc", "worst_group_loss")},
                                 tie_break)
        best = max(sorted(cands), key=score)
        for k, rs in cands.items():
            for r in rs:
                r["selected"] = k == best
    return records


def summary_rows(records: list[dict]) -> list[dict]:
    """One row per (dataset, objective, bias rate, strategy) over the selected records: test WGA,
    balanced and average accuracy (mean, std over seeds; WGA and balanced accuracy with a 95%
    interval, :func:`bootstrap_interval`), validation WGA, the hyperparameters chosen and the
    number of candidates they were chosen among."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    searched: dict[tuple, set[str]] = defaultdict(set)
    for r in records:
        key = (r.get("dataset") or "", r["objective"], r["bias_rate"], r["strategy"])
        searched[key].add(_hp_key(r.get("hparams")))
        if r.get("selected", True):
            groups[key].append(r)
    order = {s: i for i, s in enumerate(STRATEGY_ORDER)}
    objective_order = {o: i for i, o in enumerate(OBJECTIVE_ORDER)}
    rows = []
    for (ds, obj, rate, strat), rs in sorted(groups.items(), key=lambda kv: (
            kv[0][0], objective_order.get(kv[0][1], 99), kv[0][1], kv[0][2], order.get(kv[0][3], 99), kv[0][3])):
        row = {"dataset": ds, "objective": obj, "bias_rate": rate, "strategy": strat, "seeds": len(rs),
               "candidates": len(searched[(ds, obj, rate, strat)]), "hparams": _hp_key(rs[0].get("hparams"))}
        for split, metric in (("test", "worst_group_acc"), ("test", "balanced_acc"), ("test", "average_acc"),
                              ("test", "train_weighted_acc"), ("val", "worst_group_acc")):
            vals = [r[split].get(metric) for r in rs]  # train_weighted_acc: absent from older records
            row[f"{split}_{metric}_mean"] = _mean(vals)
            row[f"{split}_{metric}_std"] = _std(vals)
        for metric in ("worst_group_acc", "balanced_acc"):
            ci = bootstrap_interval(rs, metric)
            row[f"test_{metric}_ci_low"], row[f"test_{metric}_ci_high"] = ci if ci else (None, None)
        rows.append(row)
    return rows


def summary_metrics(records: list[dict]) -> dict[str, float]:
    """The grid's headline as flat metrics for a parent run: per strategy the mean test worst-group,
    balanced and average accuracy of the selected records, named ``<strategy>/test/<metric>``;
    prefixed ``<objective>/`` and suffixed ``@<bias rate>`` when the grid has several of those."""
    rows = summary_rows(records)
    several_obj = len({r["objective"] for r in rows}) > 1
    several_rate = len({r["bias_rate"] for r in rows}) > 1
    several_ds = len({r["dataset"] for r in rows}) > 1
    out = {}
    for r in rows:
        name = (f"{r['dataset']}/" if several_ds else "") + (f"{r['objective']}/" if several_obj else "") + r["strategy"]
        for metric in ("worst_group_acc", "balanced_acc", "average_acc", "train_weighted_acc"):
            value = r[f"test_{metric}_mean"]
            if value is not None:
                out[f"{name}/test/{metric}" + (f"@{r['bias_rate']}" if several_rate else "")] = float(value)
    return out


def _pm(m, s) -> str:
    return "—" if m is None else f"{m:.3f} ± {s:.3f}"


def _ci(row: dict, metric: str) -> str:
    lo, hi = row.get(f"test_{metric}_ci_low"), row.get(f"test_{metric}_ci_high")
    return "—" if lo is None else f"[{lo:.3f}, {hi:.3f}]"


def markdown_table(records: list[dict]) -> str:
    """The comparison table in Markdown: test WGA (with its 95% bootstrap interval) and balanced
    accuracy, mean ± std over seeds."""
    rows = summary_rows(records)
    many = len({r["dataset"] for r in rows}) > 1
    weighted = any(r["test_train_weighted_acc_mean"] is not None for r in rows)  # records made before it: none
    lines = [("| dataset " if many else "") + "| objective | bias rate | strategy | test WGA | test WGA 95% CI "
             "| test balanced acc | test avg acc |" + (" test avg acc (train-weighted) |" if weighted else "")
             + " val WGA | seeds | candidates | hparams |",
             ("|---" if many else "") + "|---|---|---|---|---|---|---|---|---|---|---|" + ("---|" if weighted else "")]
    for r in rows:
        lines.append(
            (f"| {r['dataset']} " if many else "") + f"| {r['objective']} | {r['bias_rate']} | {r['strategy']} | "
            f"{_pm(r['test_worst_group_acc_mean'], r['test_worst_group_acc_std'])} | {_ci(r, 'worst_group_acc')} | "
            f"{_pm(r['test_balanced_acc_mean'], r['test_balanced_acc_std'])} | "
            f"{_pm(r['test_average_acc_mean'], r['test_average_acc_std'])} | "
            + (f"{_pm(r['test_train_weighted_acc_mean'], r['test_train_weighted_acc_std'])} | " if weighted else "") +
            f"{_pm(r['val_worst_group_acc_mean'], r['val_worst_group_acc_std'])} | {r['seeds']} | "
            f"{r['candidates']} | `{r['hparams']}` |")
    return "\n".join(lines)


def wga_pivot(records: list[dict], metric: str = "worst_group_acc") -> str:
    """Test ``metric`` (mean ± std over seeds) as one Markdown table per (dataset, bias rate):
    a row per strategy, a column per objective."""
    rows = summary_rows(records)
    out = []
    for ds, rate in sorted({(r["dataset"], r["bias_rate"]) for r in rows}):
        sub = [r for r in rows if (r["dataset"], r["bias_rate"]) == (ds, rate)]
        objs = [o for o in OBJECTIVE_ORDER if any(r["objective"] == o for r in sub)]
        objs += sorted({r["objective"] for r in sub} - set(objs))
        strats = [s for s in STRATEGY_ORDER if any(r["strategy"] == s for r in sub)]
        strats += sorted({r["strategy"] for r in sub} - set(strats))
        cell = {(r["strategy"], r["objective"]): r for r in sub}
        title = f"test {metric.replace('_', ' ')}" + (f", {ds}" if ds else "") + f", bias rate {rate}"
        out += [f"**{title}**", "", "| strategy | " + " | ".join(objs) + " |", "|---" * (len(objs) + 1) + "|"]
        for s in strats:
            vals = [cell.get((s, o)) for o in objs]
            out.append(f"| {s} | " + " | ".join(
                "—" if v is None else _pm(v[f"test_{metric}_mean"], v[f"test_{metric}_std"]) for v in vals) + " |")
        out.append("")
    return "\n".join(out).rstrip()


def candidates_table(records: list[dict]) -> str:
    """Every hyperparameter candidate of the cells that had several (validation WGA decides,
    marked ✓), with its test WGA — how the searched variants compare. Empty without a search."""
    by: dict[tuple, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        by[(r.get("dataset") or "", r["objective"], r["bias_rate"], r["strategy"])][_hp_key(r.get("hparams"))].append(r)
    lines = []
    for (ds, obj, rate, strat), cands in sorted(by.items(), key=lambda kv: tuple(map(str, kv[0]))):
        if len(cands) < 2:
            continue
        for hp, rs in sorted(cands.items()):
            val = [r["val"]["worst_group_acc"] for r in rs]
            test = [r["test"]["worst_group_acc"] for r in rs]
            lines.append(f"| {ds} | {obj} | {rate} | {strat} | `{hp}` | {_pm(_mean(val), _std(val))} | "
                         f"{_pm(_mean(test), _std(test))} | {'✓' if rs[0].get('selected') else ''} |")
    if not lines:
        return ""
    return "\n".join(["**hyperparameter candidates** (chosen by validation WGA)", "",
                      "| dataset | objective | bias rate | strategy | hparams | val WGA | test WGA | selected |",
                      "|---|---|---|---|---|---|---|---|"] + lines)


def absent_notes(records: list[dict]) -> list[str]:
    """A warning per (bias rate, split) whose cells lack some group entirely: their worst-group
    accuracy is over the groups present only."""
    seen: dict[tuple, set] = {}
    for r in records:
        for split, groups in (r.get("absent") or {}).items():
            seen.setdefault((r["bias_rate"], split), set()).update(groups)
    return [f"**warning**: at bias rate {rate} the {split} split has no image of group(s) "
            f"{', '.join(sorted(groups))}; worst-group accuracy there covers only the groups present."
            for (rate, split), groups in sorted(seen.items())]


def summary_html(records: list[dict]) -> str:
    """The selected summary as a self-contained HTML page (what a tracking UI shows as is)."""
    import html

    cols = [("dataset", "dataset"), ("objective", "objective"), ("bias rate", "bias_rate"), ("strategy", "strategy"),
            ("seeds", "seeds"), ("candidates", "candidates")]
    metrics = [("test WGA", "test_worst_group_acc"), ("test balanced", "test_balanced_acc"),
               ("test average", "test_average_acc"), ("test average (train-weighted)", "test_train_weighted_acc"),
               ("val WGA", "val_worst_group_acc")]
    head = "".join(f"<th>{html.escape(c)}</th>" for c, _ in cols + metrics)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(r[k]))}</td>" for _, k in cols)
                   + "".join(f"<td>{_pm(r[k + '_mean'], r[k + '_std'])}</td>" for _, k in metrics) + "</tr>"
                   for r in summary_rows(records))
    notes = "".join(f"<p>{html.escape(n.replace('**', ''))}</p>" for n in absent_notes(records))
    return ("<!doctype html><meta charset='utf-8'><title>ffr results</title><style>td,th{padding:2px 8px}"
            "td{text-align:right}</style><h1>Test results (mean ± std over seeds, hyperparameters chosen by "
            f"validation WGA)</h1><table><tr>{head}</tr>{body}</table>{notes}\n")


def write_results(records: list[dict], out_dir: str | os.PathLike) -> dict[str, Path]:
    """``results.json`` (every record), ``results.md``, ``results.html`` and ``results.csv`` (the
    selected summary)."""
    out = Path(out_dir)
    paths = {"json": out / "results.json", "md": out / "results.md", "csv": out / "results.csv",
             "html": out / "results.html"}
    write_json(paths["json"], records)
    cands = candidates_table(records)
    notes = absent_notes(records)
    paths["md"].write_text(markdown_table(records) + "\n\n" + wga_pivot(records) + "\n"
                           + (f"\n{cands}\n" if cands else "") + "".join(f"\n{n}\n" for n in notes))
    write_atomic(paths["html"], summary_html(records))
    rows = summary_rows(records)
    with paths["csv"].open("w", newline="") as f:
        if rows:
            w = csv.DictWriter(f, fieldnames=list(rows[0]))
            w.writeheader()
            w.writerows(rows)
    return paths
