"""The default budget before and after the plateau stop (issue 26 item 2), and what `ffr compare`
reaches with only the data given (the "defaults" row): on each built-in benchmark, the
comparison with ffr's defaults (small_cnn, 40 epochs, min_steps 1000, patience 10, LP-FT step 2,
the baselines' evidence-chosen settings), with ``warmup_steps: 0`` (the whole floor trained, the
budget before), with a 200-step plateau window (about half the steps) and with the default
window. Per benchmark and budget: each strategy's mean test WGA with its 95% interval, the
optimizer steps of all stages, the stages that ended early and the wall time of the grid (data,
synthesis and training).

The grid's settings besides the data are ffr's defaults; only the CPU threads per cell are fixed
(``num_threads: 1``, so two cell processes share two cores and rerun exactly) and the bias rates
and seeds are chosen here.

Then the choice of the default ``warmup_steps`` by validation alone (``--replay``): every stage
of the whole-floor grids is replayed epoch by epoch under each candidate window with the loop's own
rule (:func:`ffr.train.loop.early_stop`, selection by :func:`ffr.metrics.selection_key`): the
steps it would have taken and the validation WGA of the checkpoint it would have chosen, against
the whole floor's. The default is the smallest window that loses at most ``--tolerance`` (0.01)
validation WGA per stage on average on every benchmark (0, off, when none does).

    python benchmarks/bench_budget.py --out runs/bench_budget                          # 3 benchmarks
    python benchmarks/bench_budget.py --benchmarks faces --seeds 0 --out runs/b        # a quick look
    python benchmarks/bench_budget.py --out runs/bench_budget --budgets floor --replay  # the choice
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from common import ROOT, write_json

# name: (the grid's folder, its budget settings): the whole floor (the budget before the plateau
# stop), a 200-step window (a budget that halves the steps), and the default window.
BUDGETS = {"whole floor (before)": ("floor", ["warmup_steps=0"]), "window 200": ("plateau", ["warmup_steps=200"]),
           "default (after)": ("default", [])}


def grid(benchmark: str, budget: list[str], out: Path, rates: str, seeds: str, workers: int, extra: list[str]) -> float:
    cmd = [sys.executable, "-m", "ffr.cli", "compare", "--out", str(out), "--quiet", "--workers", str(workers),
           "--set", f"data.demo={{name: {benchmark}}}", "--set", f"bias_rates=[{rates}]", "--set", f"seeds=[{seeds}]"]
    cmd += [a for s in extra for a in ("--set", s)]
    for stage in ("train", "pretrain", "finetune"):
        cmd += ["--set", f"{stage}.num_threads=1"] + [a for s in budget for a in ("--set", f"{stage}.{s}")]
    t = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def stage_steps(record: dict) -> list[tuple[int, str]]:
    """(optimizer steps, stop reason) of each stage of a grid record, from its history."""
    out = []
    for stage in record["stages"]:
        lines = Path(stage["history"]).read_text().splitlines()
        last = json.loads(lines[-1]) if lines else {}
        out.append((int(last.get("total_steps", 0)), last.get("stop_reason", "epochs")))
    return out


def summarize(records: list[dict]) -> list[dict]:
    from ffr.results.tables import summary_rows

    rows = []
    for row in summary_rows(records):
        mine = [r for r in records if (r["strategy"], r["bias_rate"]) == (row["strategy"], row["bias_rate"])]
        steps = [s for r in mine for s in stage_steps(r)]
        rows.append({"strategy": row["strategy"], "bias_rate": row["bias_rate"], "seeds": row["seeds"],
                     "test_wga": row["test_worst_group_acc_mean"], "ci": (row["test_worst_group_acc_ci_low"],
                                                                          row["test_worst_group_acc_ci_high"]),
                     "test_balanced": row["test_balanced_acc_mean"], "stages": len(steps),
                     "steps": sum(n for n, _ in steps), "early": sum(why in ("plateau", "patience") for _, why in steps)})
    return rows


WINDOWS = (100, 200, 300, 400, 500, 600, 800)


def replay(history: list[dict], settings) -> tuple[int, int]:
    """(steps taken, selected epoch index) of a stage's recorded ``history`` had it been trained
    under ``settings``' early stop."""
    from ffr.metrics import selection_key
    from ffr.train.loop import early_stop

    def key(h):
        return selection_key({m: h.get(f"val/{m}") for m in ("worst_group_acc", "balanced_acc", "worst_group_loss")},
                             settings.tie_break)
    best, best_i, best_steps, since = None, -1, 0, 0
    for i, h in enumerate(history):
        if best is None or key(h) > best:
            best, best_i, best_steps, since = key(h), i, h["total_steps"], 0
        else:
            since += 1
        if i < len(history) - 1 and early_stop(settings, h["epoch"], h["total_steps"], since, best_steps):
            return h["total_steps"], best_i
    return history[-1]["total_steps"], best_i


def choose_window(grids: dict[str, Path], tolerance: float) -> tuple[int, list[str]]:
    """The rule: replay every stage of each benchmark's whole-floor grid under each window."""
    from ffr.config import TrainConfig

    histories = {b: [[json.loads(line) for line in f.read_text().splitlines()]
                     for f in sorted(out.glob("stages/*/model.pt.history.jsonl"))] for b, out in grids.items()}
    lines = ["| warmup_steps | " + " | ".join(f"{b}: steps, val WGA lost (mean / max)" for b in histories) + " |",
             "|---|" + "---|" * len(histories)]
    chosen = 0
    for w in WINDOWS:
        cells, ok = [], True
        for b, hs in histories.items():
            full = [replay(h, TrainConfig(warmup_steps=0)) for h in hs]
            cut = [replay(h, TrainConfig(warmup_steps=w)) for h in hs]
            lost = [h[f[1]]["val/worst_group_acc"] - h[c[1]]["val/worst_group_acc"] for h, f, c in zip(hs, full, cut)]
            mean = sum(lost) / len(lost)
            ok &= mean <= tolerance
            cells.append(f"{sum(c[0] for c in cut) / sum(f[0] for f in full):.2f}, {mean:.3f} / {max(lost):.2f}")
        lines.append(f"| {w} | " + " | ".join(cells) + " |")
        if ok and not chosen:
            chosen = w
    return chosen, lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--benchmarks", default="digits,faces,galaxies")
    p.add_argument("--bias-rates", default="0.95")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--budgets", default="floor,plateau,default",
                   help="which budgets to run (floor, plateau, default); the report also reads the others' finished "
                        "grids")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--replay", action="store_true", help="choose the default warmup_steps from the whole-floor "
                                                         "grids' validation histories")
    p.add_argument("--tolerance", type=float, default=0.01)
    p.add_argument("--set", dest="extra", action="append", default=[],
                   help="another config override for every grid (a smoke test: train.min_steps=20 ...)")
    p.add_argument("--out", type=Path, required=True, help="the grids and the report (resumable: a rerun reuses "
                                                           "finished cells)")
    args = p.parse_args()
    report, lines = {}, ["| benchmark | budget | strategy | test WGA (95% CI) | test balanced | stages (ended early) "
                         "| optimizer steps | grid wall time |", "|---|---|---|---|---|---|---|---|"]
    for bench in args.benchmarks.split(","):
        for name, (folder, budget) in BUDGETS.items():
            out = args.out / f"{bench}-{folder}"
            if folder in args.budgets.split(","):
                wall = grid(bench, budget, out, args.bias_rates, args.seeds, args.workers, args.extra)
                (out / "wall_s.json").write_text(json.dumps(wall))
            elif (out / "wall_s.json").is_file():
                wall = json.loads((out / "wall_s.json").read_text())
            else:
                continue
            records = json.loads((out / "results.json").read_text())
            rows = summarize(records)
            cell_seconds = sum(r.get("seconds", 0.0) for r in records)
            report[f"{bench}/{name}"] = {"wall_s": wall, "cell_seconds": cell_seconds, "rows": rows}
            for i, r in enumerate(rows):
                lo, hi = r["ci"]
                lines.append(f"| {bench if i == 0 else ''} | {name if i == 0 else ''} | {r['strategy']} | "
                             f"{r['test_wga']:.3f} [{lo:.3f}, {hi:.3f}] | {r['test_balanced']:.3f} | "
                             f"{r['stages']} ({r['early']}) | {r['steps']} | "
                             f"{f'{wall / 60:.1f} min' if i == 0 else ''} |")
            total = sum(r["steps"] for r in rows)
            print(f"{bench} {name}: {total} optimizer steps, {wall / 60:.1f} min", flush=True)
    if args.replay:
        grids = {b: args.out / f"{b}-floor" for b in args.benchmarks.split(",")}
        chosen, table = choose_window(grids, args.tolerance)
        report["replay"] = {"tolerance": args.tolerance, "chosen": chosen, "table": table}
        lines += ["", f"**warmup_steps by validation** (the smallest window losing at most {args.tolerance} "
                  f"validation WGA per stage on average on every benchmark): {chosen or 'none, off'}", ""] + table
    write_json(str(args.out / "bench_budget.json"), report)
    (args.out / "bench_budget.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
