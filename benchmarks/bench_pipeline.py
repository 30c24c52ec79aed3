"""Orchestration overhead of the local pipeline run.

Runs ``ffr_pipeline`` with the KFP local runner (``ffr run``: one subprocess per task, artifacts
passed through files), then the same steps in this process — each component's ``python_func``
called in order on the same settings — and prints the wall time of both and their ratio. The
difference is what the runner adds: interpreter and import start-up per task, executor
(de)serialisation, and the runner's bookkeeping.

    python benchmarks/bench_pipeline.py [--per-digit 20] [--epochs 2] [--shards 2]

The last line is a one-line summary.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def in_process(params: dict, workdir: Path) -> tuple[float, list[tuple[str, float]]]:
    """The ffr pipeline's steps, called one after the other in this process."""
    from kfp.dsl import HTML, Artifact, ClassificationMetrics, Dataset, Metrics, Model

    from ffr.integrations.kubeflow.components import (balance_data, collect_shards, evaluate_model, prepare_data,
                                                      synthesize_shard, train_model)

    def art(cls, name):
        return cls(name=name, uri=str(workdir / name), metadata={})

    steps: list[tuple[str, float]] = []

    def timed(name, fn, **kw):
        t = time.perf_counter()
        out = fn.python_func(**kw)
        steps.append((name, time.perf_counter() - t))
        return out

    t0 = time.perf_counter()
    ds, card = art(Dataset, "dataset"), art(Artifact, "card")
    work = timed("prepare", prepare_data, dataset=ds, card=card, bias_rate=params["bias_rate"],
                 demo_per_digit=params["demo_per_digit"], synthesis_for=["ffr"], num_shards=params["num_shards"])
    shards = []
    for i, item in enumerate(work):
        shards.append(art(Dataset, f"shard{i}"))
        timed(f"synthesize {i}", synthesize_shard, card=card, work=item, shard=shards[-1])
    pool = art(Dataset, "pool")
    timed("collect", collect_shards, card=card, shards=shards, pool=pool)
    sets = art(Dataset, "sets")
    timed("balance", balance_data, real=ds, synthetic=pool, training_sets=sets, strategy="ffr")
    step1, step2 = art(Model, "step1"), art(Model, "step2")
    common = dict(training_sets=sets, val_data=ds, device=params["device"], min_steps=0, patience=0)  # exactly --epochs
    timed("train step 1", train_model, model=step1, stage="pretrain", epochs=params["pretrain_epochs"], lr=1e-4,
          **common)
    timed("train step 2", train_model, model=step2, stage="finetune", init_model=step1,
          epochs=params["finetune_epochs"], lr=1e-3, **common)
    timed("evaluate", evaluate_model, model=step2, data=ds, metrics=art(Metrics, "metrics"),
          confusion=art(ClassificationMetrics, "confusion"), report=art(HTML, "report"), synthetic=pool,
          device=params["device"])
    return time.perf_counter() - t0, steps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-digit", type=int, default=20, help="demo images per digit")
    ap.add_argument("--epochs", type=int, default=2, help="epochs of each training step")
    ap.add_argument("--shards", type=int, default=2, help="synthesis shards per group")
    a = ap.parse_args()
    params = {"demo_per_digit": a.per_digit, "bias_rate": 0.95, "num_shards": a.shards, "pretrain_epochs": a.epochs,
              "finetune_epochs": a.epochs, "min_steps": 0, "patience": 0, "device": "cpu"}

    from ffr.integrations.kubeflow.pipelines.run import run_local

    with tempfile.TemporaryDirectory(prefix="ffr-bench-") as tmp:
        tmp = Path(tmp)
        run = run_local("ffr", params, tmp / "runs", progress=False)
        (tmp / "inproc").mkdir()
        inproc, steps = in_process(params, tmp / "inproc")
    n = len(steps)
    print(f"settings: {params}")
    for name, sec in steps:
        print(f"  in-process {name:<14} {sec:7.2f} s")
    print(f"local pipeline run (KFP SubprocessRunner): {run.seconds:7.2f} s for {n} tasks")
    print(f"same steps in one process:                 {inproc:7.2f} s")
    print(f"local pipeline {run.seconds:.1f} s vs in-process steps {inproc:.1f} s: orchestration overhead "
          f"ratio {run.seconds / inproc:.2f}x ({(run.seconds - inproc) / n:+.1f} s per task, {n} tasks)")


if __name__ == "__main__":
    main()
