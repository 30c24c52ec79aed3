"""How often validation ties decide a grid's columns, and what the worst-group-loss tie-break
would have chosen instead of the grid's own choice (issue 26 item 3).

Reads a sweep's ``results.json`` (every cell's validation and test metrics). Per column (dataset,
objective, strategy, bias rate), each candidate's validation metrics are averaged over the seeds,
as the sweep's selection does; the column is *tied* when two or more candidates share the best
mean validation WGA. The replay then orders the candidates by :func:`ffr.metrics.selection_key`
with ``tie_break: worst_group_loss`` (WGA, then balanced accuracy, then the lower worst-group
loss) and compares that choice with the one the grid recorded (``selected``). Test numbers are
printed beside both, never used to choose. Only the choice among candidates is replayed: the
epochs inside each stage were chosen under the grid's own ``tie_break``.

    python benchmarks/tie_break_replay.py runs/sweep_faces_val/results.json
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict

import numpy as np

from ffr.metrics import selection_key

VAL_KEYS = ("worst_group_acc", "balanced_acc", "worst_group_loss")


def columns(records: list[dict]) -> dict[tuple, dict[str, list[dict]]]:
    """The records by column, then by candidate (its hyperparameters as JSON)."""
    out: dict[tuple, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for r in records:
        key = (r.get("dataset", ""), r["objective"], r["strategy"], r["bias_rate"])
        out[key][json.dumps(r["hparams"], sort_keys=True)].append(r)
    return out


DECIDERS = ("validation WGA", "balanced accuracy", "worst-group loss", "order")


def decided_by(val: list[dict]) -> str:
    """Which key of :func:`ffr.metrics.selection_key` (with the loss tie-break) separates the best
    of a column's candidates (their seed-mean validation metrics) from the runner-up: validation
    WGA, balanced accuracy, worst-group loss, or none of them ("order": the first candidate)."""
    if len(val) < 2:
        return DECIDERS[0]
    first, second = sorted((selection_key(v, "worst_group_loss") for v in val), reverse=True)[:2]
    return next((name for name, a, b in zip(DECIDERS, first, second) if a != b), DECIDERS[-1])


def replay(records: list[dict]) -> list[dict]:
    """One row per column: tied or not, and the test WGA of the recorded and the replayed choice."""
    rows = []
    for key, cands in sorted(columns(records).items()):
        val = {h: {k: float(np.mean([r["val"][k] for r in rs])) for k in VAL_KEYS} for h, rs in cands.items()}
        test = {h: float(np.mean([r["test"]["worst_group_acc"] for r in rs])) for h, rs in cands.items()}
        best = max(v["worst_group_acc"] for v in val.values())
        recorded = next(h for h, rs in cands.items() if all(r["selected"] for r in rs))
        by_loss = max(val, key=lambda h: selection_key(val[h], "worst_group_loss"))
        rows.append({"column": key, "candidates": len(cands),
                     "tied": sum(v["worst_group_acc"] == best for v in val.values()),
                     "decided_by": decided_by(list(val.values())),
                     "recorded": test[recorded], "worst_group_loss": test[by_loss], "same": recorded == by_loss})
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("results", help="a sweep's results.json")
    args = ap.parse_args(argv)
    rows = replay(json.loads(open(args.results).read()))
    print("| dataset | objective | strategy | bias rate | tied at the top | test WGA, grid's choice | "
          "test WGA, loss tie-break |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        ds, obj, strat, rate = r["column"]
        print(f"| {ds} | {obj} | {strat} | {rate} | {r['tied']} of {r['candidates']} | {r['recorded']:.3f} | "
              f"{r['worst_group_loss']:.3f}{'' if not r['same'] else ' (same)'} |")
    tied = sum(r["tied"] > 1 for r in rows)
    better = sum(r["worst_group_loss"] > r["recorded"] for r in rows)
    worse = sum(r["worst_group_loss"] < r["recorded"] for r in rows)
    print(f"\ncolumns tied at the top: {tied} of {len(rows)}; mean test WGA of the grid's choice "
          f"{np.mean([r['recorded'] for r in rows]):.3f}, of the loss tie-break's "
          f"{np.mean([r['worst_group_loss'] for r in rows]):.3f} (higher in {better} columns, lower in {worse}, "
          f"the same in {len(rows) - better - worse})")
    counts = {name: sum(r["decided_by"] == name for r in rows) for name in DECIDERS}
    print("columns decided by " + ", ".join(f"{name} {n}" for name, n in counts.items()) +
          " (the first that separates the best candidate from the runner-up)")


if __name__ == "__main__":
    main()
