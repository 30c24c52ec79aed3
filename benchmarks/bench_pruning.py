"""Harmful-sample pruning measured (issue 26 item 4): on each built-in benchmark, the comparison
with ffr's defaults (as ``benchmarks/bench_budget.py``'s "default" grid: small_cnn, the default
budget, LP-FT step 2, the baselines' evidence-chosen settings; bias rate 0.95, 3 seeds) with the
synthetic pool as rendered and with the pool pruned by the ``harmful`` filter
(``synthesis.filters=[harmful]``: scorers trained on the real training split, the bias test and
the class test at its default calibration, :mod:`ffr.synthesis.harmful`). Every strategy draws
the same number of synthetic images per group in both grids: a pruned image is replaced by the
generator's next attempt. Per benchmark and pool: each strategy's mean test WGA with its 95%
interval, the test balanced accuracy, and the pruned attempts per group. (The grid with the pool
as rendered is bench_budget.py's "default" grid: copy a finished one into ``OUT/<benchmark>-plain``
and it is reused.)

    python benchmarks/bench_pruning.py --out runs/bench_pruning                 # 3 benchmarks
    python benchmarks/bench_pruning.py --benchmarks faces --seeds 0 --out runs/p  # a quick look
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

from bench_budget import grid, summarize
from common import write_json

POOLS = {"as rendered": ("plain", ["synthesis.filters=[]"]), "pruned": ("pruned", ["synthesis.filters=[harmful]"])}


def pruned_per_group(out: Path) -> dict[str, int]:
    """Rejected attempts per group in a grid's synthetic pool (its ``rejections.csv``)."""
    counts: dict[str, int] = {}
    for path in sorted(out.glob("synthetic/*/rejections.csv")):
        with open(path, newline="") as f:
            for row in csv.DictReader(f):
                counts[row["group"]] = counts.get(row["group"], 0) + 1
    return counts


def pool_size(out: Path) -> dict[str, int]:
    """Images per group in a grid's synthetic pool."""
    info = sorted(out.glob("synthetic/*/synthesis.json"))
    return json.loads(info[0].read_text()).get("counts", {}) if info else {}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--benchmarks", default="digits,galaxies,faces")
    p.add_argument("--bias-rates", default="0.95")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--strategies", default="none,usb,asb,ffr")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--set", dest="extra", action="append", default=[],
                   help="another config override for every grid (a smoke test: train.min_steps=20 ...)")
    p.add_argument("--out", type=Path, required=True, help="the grids and the report (resumable)")
    args = p.parse_args()
    report, lines = {}, ["| benchmark | synthetic pool | strategy | test WGA (95% CI) | test balanced | "
                         "pruned attempts per group (pool images per group) |",
                         "|---|---|---|---|---|---|"]
    for bench in args.benchmarks.split(","):
        for name, (folder, sets) in POOLS.items():
            out = args.out / f"{bench}-{folder}"
            extra = args.extra + sets + [f"strategies=[{args.strategies}]"]
            wall = grid(bench, [], out, args.bias_rates, args.seeds, args.workers, extra)
            rows = summarize(json.loads((out / "results.json").read_text()))
            pruned, size = pruned_per_group(out), pool_size(out)
            report[f"{bench}/{name}"] = {"wall_s": wall, "rows": rows, "pruned": pruned, "pool": size}
            groups = ", ".join(f"{g} {pruned.get(g, 0)} ({n})" for g, n in sorted(size.items()))
            for i, r in enumerate(rows):
                lo, hi = r["ci"]
                lines.append(f"| {bench if i == 0 else ''} | {name if i == 0 else ''} | {r['strategy']} | "
                             f"{r['test_wga']:.3f} [{lo:.3f}, {hi:.3f}] | {r['test_balanced']:.3f} | "
                             f"{groups if i == 0 else ''} |")
            print(f"{bench} {name}: {wall / 60:.1f} min", flush=True)
    write_json(str(args.out / "bench_pruning.json"), report)
    (args.out / "bench_pruning.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
