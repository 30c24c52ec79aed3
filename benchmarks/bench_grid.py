"""Wall time of the demo ``ffr compare`` grid (configs/demo.yaml: none/usb/asb/ffr at one bias
rate and seed, 2 cell processes as ``make demo``), end to end through the CLI: demo data, synthetic pool, image cache, training,
report. Then the same command again, which finds every cell done (the resume path).

By default the stages are cut to ``--epochs`` epochs so the run stays short; ``--full`` keeps the
config's 30 epochs per stage (what ``make demo`` runs).

    python benchmarks/bench_grid.py            # ~2-3 min on 2 cores
    python benchmarks/bench_grid.py --full
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

from common import ROOT, add_common_args, setup, write_json


def run(cmd: list[str], env: dict) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.add_argument("--config", default=str(ROOT / "configs" / "demo.yaml"))
    p.add_argument("--epochs", type=int, default=3, help="epochs per stage (ignored with --full)")
    p.add_argument("--full", action="store_true", help="the config's own epochs")
    p.add_argument("--workers", type=int, default=2, help="cell processes (make demo uses 2)")
    p.add_argument("--keep", action="store_true", help="keep the grid's output directory")
    args = p.parse_args()
    device, info = setup(args)
    out = args.workdir / "grid"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "ffr.cli", "compare", "--config", args.config, "--out", str(out), "--quiet",
           "--workers", str(args.workers), "--set", f"device={args.device}"]
    if not args.full:
        for stage in ("train", "pretrain", "finetune"):
            cmd += ["--set", f"{stage}.epochs={args.epochs}", "--set", f"{stage}.min_steps=0",
                    "--set", f"{stage}.patience=0"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    fresh = run(cmd, env)
    resumed = run(cmd, env)
    records = json.loads((out / "results.json").read_text())
    cells = records if isinstance(records, list) else records.get("records", [])
    train_s = sum(r.get("seconds", 0.0) for r in cells)
    result = {"machine": info, "fresh_s": fresh, "resumed_s": resumed, "cells": len(cells),
              "cell_seconds": train_s, "full": args.full, "command": " ".join(cmd)}
    write_json(args.json, result)
    if not args.keep:
        shutil.rmtree(out, ignore_errors=True)
    epochs = "config epochs" if args.full else f"{args.epochs} epochs/stage"
    print(f"  fresh run {fresh:.1f}s (the cells' own times add up to {train_s:.1f}s over {args.workers} processes); "
          f"rerun with every cell done {resumed:.1f}s")
    print(f"demo grid ({len(cells)} cells, {epochs}): {fresh:.1f}s; resumed: {resumed:.1f}s")


if __name__ == "__main__":
    main()
