"""Planning a sweep for many workers: what a grid costs (:func:`grid_cost`), its trained stages
keyed and ordered by dependency, in batches of tasks (:func:`plan_sweep`, what the Kubeflow
``sweep`` pipeline fans out), and how long a cluster takes over it (:func:`cluster_estimate`).
Pure planning over the config, the data and the strategies' stage plans: nothing is trained."""

from __future__ import annotations

import json
import math
from dataclasses import asdict

from ffr.balance import STRATEGIES
from ffr.config import ExperimentConfig, with_overrides
from ffr.data.manifest import Manifest
from ffr.data.splits import bias_rate_split
from ffr.grid import plan_cells
from ffr.train.loop import planned_epochs
from ffr.train.stage import identity, objectives


def grid_cost(cfg: ExperimentConfig, real: Manifest) -> dict:
    """What the grid of ``cfg`` on ``real`` costs, without training: cells, distinct trained stages
    (after sharing: FFR's step 1 across objectives and variants, ERM's model for DFR), and the
    images those stages pass through the model in training and in per-epoch validation (at most:
    the step budget's epochs, before any early stop)."""
    splits: dict[tuple, tuple[int, int, dict]] = {}
    stages: dict[str, tuple[int, int]] = {}
    cells = plan_cells(cfg)
    for cell in cells:
        rate, seed = cell.bias_rate, cell.seed
        if (rate, seed) not in splits:
            split, _ = bias_rate_split(real, rate, seed, cfg.data.min_val_per_group)
            counts = split.select(split="train", source="real").group_counts()
            splits[(rate, seed)] = (sum(counts.values()), len(split.select(split="val", source="real")), counts)
        n_real, n_val, counts = splits[(rate, seed)]
        impl = STRATEGIES.get(cell.strategy)
        sizes = dict(impl.stage_sizes(n_real, sum(impl.synthetic_budget(counts).values())))
        init = None
        for plan in cell.stages:
            request = cell.request(plan)
            trainer = objectives(request)[1]
            # the stage's identity without its data: (stage or strategy, rate, seed) stands for it
            init = json.dumps([plan.name if plan.data == "synthetic" else cell.strategy, rate, seed,
                               asdict(request.loop_settings(plan.data != "real")), identity(trainer), init],
                              sort_keys=True, default=str)
            epochs = planned_epochs(request.settings, sizes[plan.name], request.settings.batch_size)
            stages[init] = (sizes[plan.name] * epochs, n_val * epochs)
    return {"cells": len(cells), "trained_stages": len(stages),
            "train_images": sum(t for t, _ in stages.values()), "val_images": sum(v for _, v in stages.values())}


def sweep_datasets(cfg: ExperimentConfig) -> dict[str, ExperimentConfig]:
    """The datasets of a sweep, each with its effective config: ``cfg.datasets``' names, or one
    dataset named ``grid`` (the config's own ``data``)."""
    if not cfg.datasets:
        return {"grid": cfg}
    out = {}
    for name, overrides in cfg.datasets.items():
        eff = with_overrides(cfg, dict(overrides or {}))
        eff.datasets = {}
        out[name] = eff
    return out


def plan_sweep(cfg: ExperimentConfig, data: dict[str, tuple[Manifest, Manifest | None]],
               stages_per_task: int = 8, cells_per_task: int = 16) -> dict:
    """The work of a sweep for many workers: every distinct trained stage once (by its key, as
    the stage cache shares them: FFR's step 1 across its step-2 candidates and objectives, ERM's
    stage for DFR), at the level of its dependency chain (a stage comes a level after the stage
    it starts from), in batches of ``stages_per_task`` per level; then every cell, in batches of
    ``cells_per_task``, to evaluate once all stages exist.

    Args:
        cfg: The sweep's (checked) config.
        data: Per dataset of :func:`sweep_datasets`: the real data and the synthetic pool.
        stages_per_task: Stages one training task trains, one after the other.
        cells_per_task: Cells one evaluation task evaluates.

    Returns:
        ``{"levels": [[batch, ...], ...], "cells": [batch, ...], "stages": n, "depth": n}``, a
        batch being ``{"level", "stages": [{"dataset", "cell", "stage", "key"}]}`` (``cell``: the
        cell's index in :func:`ffr.grid.plan_cells` of its dataset's config) or ``{"cells":
        [{"dataset", "cell"}]}``.
    """
    from ffr.grid import draw_cell, stage_keys

    level: dict[str, int] = {}
    entries: list[dict] = []
    cells = []
    for name, eff in sweep_datasets(cfg).items():
        real, pool = data[name]
        drawn: dict[tuple, object] = {}
        for i, cell in enumerate(plan_cells(eff)):
            cells.append({"dataset": name, "cell": i})
            coords = (cell.strategy, cell.bias_rate, cell.seed)
            if coords not in drawn:
                drawn[coords] = draw_cell(cell, real, pool)
            for stage, key, init_key in stage_keys(cell, drawn[coords]):
                if key in level:
                    continue
                level[key] = 0 if init_key is None else level[init_key] + 1
                entries.append({"dataset": name, "cell": i, "stage": stage, "key": key, "level": level[key]})
    depth = max(level.values(), default=-1) + 1
    size = max(1, int(stages_per_task))
    levels = []
    for lv in range(depth):
        here = [{k: e[k] for k in ("dataset", "cell", "stage", "key")} for e in entries if e["level"] == lv]
        levels.append([{"level": lv, "stages": here[j:j + size]} for j in range(0, len(here), size)])
    csize = max(1, int(cells_per_task))
    return {"levels": levels, "cells": [{"cells": cells[j:j + csize]} for j in range(0, len(cells), csize)],
            "stages": len(entries), "depth": depth}


def cluster_estimate(cost: dict, images_per_second: float, workers: int, stages_per_task: int = 8,
                     cells_per_task: int = 16) -> dict:
    """How long ``workers`` training pods take over a grid whose cost :func:`grid_cost` measured,
    at ``images_per_second`` (a figure measured on one such worker: training and validation image
    passes alike). An estimate: it assumes the stages spread evenly over the workers and counts
    neither pod start-up nor the wait between dependency levels."""
    images = cost["train_images"] + cost["val_images"]
    seconds = images / max(images_per_second, 1e-9) / max(1, workers)
    return {"training_tasks": math.ceil(cost["trained_stages"] / max(1, stages_per_task)),
            "evaluation_tasks": math.ceil(cost["cells"] / max(1, cells_per_task)),
            "image_passes": images, "hours": seconds / 3600}
