"""One rank of a training stage run data-parallel over several processes of one machine (one per
GPU): what :func:`ffr.train.stage.run_distributed` starts under ``torchrun`` when a Kubeflow
training step has ``processes > 1``, so that one pod uses all the accelerators it was given. Each
rank runs :func:`ffr.steps.train_stage` with the request it was handed (and so the one stage driver); rank 0 writes the
checkpoint and reports to MLflow. Several machines: launch ``torchrun`` yourself
(docs/performance.md).

    python -m ffr.launch SPEC.json      # what run_distributed runs, under torchrun
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(spec_path: str) -> None:
    """One rank: the stage request of ``spec_path`` (``{"request": ..., "tracking": ...}``, what
    :func:`ffr.train.stage.run_distributed` wrote), reported by rank 0."""
    import contextlib

    from ffr.train.request import StageRequest
    from ffr.steps import train_stage
    from ffr.train import distributed as dist

    spec = json.loads(Path(spec_path).read_text())
    request, tracking = StageRequest.from_dict(spec["request"]), spec.get("tracking")
    request.processes = 1  # this process is one of them: it trains, it does not launch
    dist.init_from_env()
    run = contextlib.nullcontext()
    if tracking and dist.is_main():
        from ffr.integrations.mlflow_runs import optional_run

        run = optional_run(system_metrics=True, **tracking)
    with run as tracker:
        train_stage(request, tracker=tracker)


if __name__ == "__main__":
    main(sys.argv[1])
