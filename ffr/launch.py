"""A training stage data-parallel over several processes of one machine (one per GPU): what a
Kubeflow training step with ``processes > 1`` runs, so that one pod uses all the accelerators it
was given. ``torchrun`` starts the processes; each runs :func:`ffr.stages.train_stage`, rank 0
writes the checkpoint and reports to MLflow. Several machines: launch ``torchrun`` yourself
(docs/performance.md).

    python -m ffr.launch SPEC.json      # what train_stage_distributed runs, under torchrun
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def train_stage_distributed(processes: int, train_dir, val_dir, out_path, cfg=None, tracking: dict | None = None,
                            **kwargs) -> dict:
    """:func:`ffr.stages.train_stage` in ``processes`` data-parallel processes (``torchrun
    --standalone``); returns its summary. ``tracking``: :func:`ffr.integrations.tracking.optional_run`'s
    arguments (``tracking_uri``, ``run_name``, ``pipeline_run_id``, ``experiment``) for the run
    rank 0 opens; ``kwargs``: the rest of ``train_stage``'s (JSON-able) arguments."""
    from ffr.train.loop import TrainConfig

    if processes < 1:
        raise ValueError(f"processes must be at least 1, got {processes}")
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    spec = {"train_dir": str(train_dir), "val_dir": str(val_dir), "out_path": str(out_path),
            "cfg": dataclasses.asdict(cfg or TrainConfig()), "tracking": tracking,
            **{k: (str(v) if isinstance(v, os.PathLike) else v) for k, v in kwargs.items()}}
    with tempfile.NamedTemporaryFile("w", suffix=".json", dir=out_path.parent, delete=False) as f:
        json.dump(spec, f)
    try:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
               "-m", "ffr.launch", f.name]
        rc = subprocess.run(cmd).returncode  # the processes' output goes to this step's log
    finally:
        os.unlink(f.name)
    if rc != 0:
        raise RuntimeError(f"data-parallel training of {out_path} in {processes} processes failed (exit {rc}); "
                           "the ranks' errors are in the log above")
    return json.loads(out_path.with_name(out_path.name + ".json").read_text())


def main(spec_path: str) -> None:
    """One rank: the stage of ``spec_path``, reported by rank 0."""
    import contextlib

    from ffr.config import from_dict
    from ffr.stages import train_stage
    from ffr.train import distributed as dist
    from ffr.train.loop import TrainConfig

    spec = json.loads(Path(spec_path).read_text())
    cfg, tracking = from_dict(TrainConfig, spec.pop("cfg"), "cfg"), spec.pop("tracking")
    dist.init_from_env()
    run = contextlib.nullcontext()
    if tracking and dist.is_main():
        from ffr.integrations.tracking import optional_run

        run = optional_run(system_metrics=True, **tracking)
    with run as tracker:
        train_stage(cfg=cfg, tracker=tracker, **spec)


if __name__ == "__main__":
    main(sys.argv[1])
