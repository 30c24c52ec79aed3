"""The default budget before and after the plateau stop (issue 26 item 2), and what `ffr compare`
reaches with only the data given (the "defaults" row): on each built-in benchmark, the
comparison with ffr's defaults (small_cnn, 40 epochs, min_steps 1000, patience 10, LP-FT step 2,
the baselines' evidence-chosen settings), once with ``warmup_steps: 0`` (the whole floor trained,
the budget before) and once with the default plateau stop. Per benchmark and budget: each
strategy's mean test WGA with its 95% interval, the optimizer steps of every stage (sum and
per-stage mean), the stages that ended early and the wall time of the grid.

The grid's settings besides the data are ffr's defaults; only the CPU threads per cell are fixed
(``num_threads: 1``, so two cell processes share two cores and rerun exactly) and the bias rates
and seeds are chosen here.

    python benchmarks/bench_budget.py --out runs/bench_budget                          # 3 benchmarks
    python benchmarks/bench_budget.py --benchmarks faces --seeds 0 --out runs/b        # a quick look
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

BUDGETS = {"floor (before)": ["warmup_steps=0"], "plateau (after)": []}


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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--benchmarks", default="digits,faces,galaxies")
    p.add_argument("--bias-rates", default="0.95")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--set", dest="extra", action="append", default=[],
                   help="another config override for every grid (a smoke test: train.min_steps=20 ...)")
    p.add_argument("--out", type=Path, required=True, help="the grids and the report (resumable: a rerun reuses "
                                                           "finished cells)")
    args = p.parse_args()
    report, lines = {}, ["| benchmark | budget | strategy | test WGA (95% CI) | test balanced | stages (ended early) "
                         "| optimizer steps | grid wall time |", "|---|---|---|---|---|---|---|---|"]
    for bench in args.benchmarks.split(","):
        for name, budget in BUDGETS.items():
            out = args.out / f"{bench}-{name.split()[0]}"
            wall = grid(bench, budget, out, args.bias_rates, args.seeds, args.workers, args.extra)
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
    write_json(str(args.out / "bench_budget.json"), report)
    (args.out / "bench_budget.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
