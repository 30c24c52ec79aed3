"""Components of the ``sweep`` pipeline: the paper's protocol (``ffr sweep``) on the cluster —
the config checked, the data prepared once, every trained stage planned once by key, trained in
batches level by level into a shared stage store, the cells evaluated from it, the selection and
the tables made, the selected FFR model registered."""

from typing import List

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Markdown, Metrics, Output

from ffr.integrations.kubeflow.components.image import COMPONENT_OPTIONS


@dsl.component(**COMPONENT_OPTIONS)
def check_sweep_config(config: str, stage_store: str = "", stages_per_task: int = 8, cells_per_task: int = 16) -> str:
    """Check the sweep's config and settings before any data step.

    The config is what ``ffr sweep --config`` reads (datasets or one dataset, strategies,
    objectives, bias rates, seeds, the search per strategy, ``equal_search``), checked by the
    same validator; every problem is listed at once.

    Args:
        config: The sweep config, YAML.
        stage_store: Where the trained stages are kept, every task reaching it: ``s3://bucket/prefix``
            (credentials from the ``ffr-s3`` secret) or a shared folder.
        stages_per_task: Stages one training task trains.
        cells_per_task: Cells one evaluation task evaluates.

    Returns:
        Output: The datasets of the sweep, comma-separated.
    """
    from ffr.rules import check, refuse
    from ffr.sweep_plan import sweep_datasets
    from ffr.checks import sweep_config
    from ffr.sweep_tasks import open_store

    cfg = sweep_config(config)
    refuse(check("count", stages_per_task, "stages_per_task") + check("count", cells_per_task, "cells_per_task"),
           "run configuration")
    open_store(stage_store)
    return ",".join(sweep_datasets(cfg))


@dsl.component(**COMPONENT_OPTIONS)
def prepare_sweep_data(config: str, data: Output[Dataset]):
    """Each dataset of the sweep, prepared once for every task: the real data, the synthetic pool
    every strategy and bias rate draws from, and the decoded-image cache.

    Args:
        config: The sweep config, YAML.

    Returns:
        data: One folder per dataset (``data/``, ``synthetic/``, ``cache/``).
    """
    from ffr.checks import sweep_config
    from ffr.sweep_tasks import sweep_data

    data.metadata.update(sweep_data(sweep_config(config), data.path))


@dsl.component(**COMPONENT_OPTIONS)
def plan_sweep_stages(config: str, data: Input[Dataset], stages_per_task: int = 8, cells_per_task: int = 16) -> dict:
    """The sweep's work: every distinct trained stage once, by key, at its dependency level, in
    batches; the cells in batches.

    Args:
        config: The sweep config, YAML.
        data: ``prepare_sweep_data``'s folder.
        stages_per_task: Stages one training task trains.
        cells_per_task: Cells one evaluation task evaluates.

    Returns:
        Output: ``{"levels": [[batch]], "cells": [batch], "stages", "depth"}``.
    """
    from ffr.checks import sweep_config
    from ffr.sweep_tasks import sweep_plan

    return sweep_plan(sweep_config(config), data.path, stages_per_task, cells_per_task)


@dsl.component(**COMPONENT_OPTIONS)
def sweep_work(plan: dict, level: int = -1) -> List[dict]:
    """The batches of one level of the plan (``level`` ≥ 0), or the cells' batches (``-1``).

    Args:
        plan: ``plan_sweep_stages``' plan.
        level: The dependency level; -1: the cells.

    Returns:
        Output: The batches, one task each.
    """
    if level < 0:
        return list(plan["cells"])
    levels = plan["levels"]
    return list(levels[level]) if level < len(levels) else []


@dsl.component(**COMPONENT_OPTIONS)
def train_sweep_batch(config: str, data: Input[Dataset], batch: dict, stage_store: str) -> dict:
    """Train one batch of stages into the stage store, each once across all tasks.

    A stage another task committed is found, not trained; one another task is training is
    waited for (its claim), then read.

    Args:
        config: The sweep config, YAML.
        data: ``prepare_sweep_data``'s folder.
        batch: One batch of ``sweep_work``.
        stage_store: The stage store (``s3://…`` or a shared folder).

    Returns:
        Output: ``{"trained": keys, "found": keys}``.
    """
    from ffr.checks import sweep_config
    from ffr.sweep_tasks import open_store, train_batch

    return train_batch(sweep_config(config), data.path, batch, open_store(stage_store))


@dsl.component(**COMPONENT_OPTIONS)
def evaluate_sweep_batch(config: str, data: Input[Dataset], batch: dict, stage_store: str, records: Output[Dataset]):
    """Evaluate one batch of cells from the stage store (every stage found, none trained).

    Args:
        config: The sweep config, YAML.
        data: ``prepare_sweep_data``'s folder.
        batch: One cells batch of ``sweep_work``.
        stage_store: The stage store.

    Returns:
        records: One folder per cell (record, histories, finalized models).
    """
    from ffr.checks import sweep_config
    from ffr.sweep_tasks import evaluate_batch, open_store

    done = evaluate_batch(sweep_config(config), data.path, batch, open_store(stage_store), records.path)
    records.metadata["cells"] = len(done)


@dsl.component(**COMPONENT_OPTIONS)
def sweep_report(
    config: str,
    records: Input[List[Dataset]],
    results: Output[Dataset],
    table: Output[Markdown],
    page: Output[HTML],
    summary: Output[Metrics],
    mlflow_uri: str = "",
    mlflow_experiment: str = "ffr",
    pipeline_run_id: str = "",
):
    """Every cell collected, hyperparameters selected by mean validation WGA over seeds, the tables.

    The same ``results.json/md/csv/html`` and plots as ``ffr sweep``; with a tracking server, the
    pipeline's MLflow run gets the tables and the headline, and one nested run per cell, tagged
    with its strategy, objective, bias rate, seed and candidate.

    Args:
        config: The sweep config, YAML.
        records: Every ``evaluate_sweep_batch``'s folder.
        mlflow_uri: MLflow tracking server URI; empty: ``$MLFLOW_TRACKING_URI``; neither set:
            nothing is tracked.
        mlflow_experiment: MLflow experiment of the pipeline's run.
        pipeline_run_id: The Kubeflow run id that finds the pipeline's MLflow run.

    Returns:
        results: results.json/md/csv/html and the plots.
        table: The results table (Markdown).
        page: The results page (HTML).
        summary: The selected rows' mean test worst-group accuracy per column.
    """
    from pathlib import Path

    from ffr.results.tables import summary_metrics
    from ffr.checks import sweep_config
    from ffr.sweep_tasks import report_to_mlflow, sweep_report as report

    cfg = sweep_config(config)
    done = report(cfg, [r.path for r in records], results.path)
    Path(table.path).write_text(Path(results.path, "results.md").read_text())
    Path(page.path).write_text(Path(results.path, "results.html").read_text())
    for k, v in summary_metrics(done).items():
        summary.log_metric(k, v)
    results.metadata["cells"] = len(done)
    report_to_mlflow(cfg, done, results.path, mlflow_uri, mlflow_experiment, pipeline_run_id)


@dsl.component(**COMPONENT_OPTIONS)
def register_sweep_selection(
    config: str,
    data: Input[Dataset],
    results: Input[Dataset],
    records: Input[List[Dataset]],
    stage_store: str,
    decision: Output[Metrics],
    registered_model_name: str = "ffr",
    mlflow_uri: str = "",
    mlflow_experiment: str = "ffr",
    pipeline_run_id: str = "",
    gate_margin: float = 0.005,
    gate_tolerance: float = 0.02,
    gate_floor: float = 0.5,
) -> str:
    """Register the FFR configuration validation chose, through the promotion gate.

    Among FFR's selected candidates, the one with the best mean validation WGA; of its seeds, the
    cell with the best validation WGA: its model becomes the challenger, with the candidate, the
    seeds, its column's numbers and the best baseline's as lineage.

    Args:
        config: The sweep config, YAML.
        data: ``prepare_sweep_data``'s folder.
        results: ``sweep_report``'s results.
        records: Every ``evaluate_sweep_batch``'s folder.
        stage_store: The stage store.
        registered_model_name: Registered model name in the MLflow model registry.
        mlflow_uri: MLflow tracking server URI; empty: ``$MLFLOW_TRACKING_URI``; neither set:
            nothing is registered.
        mlflow_experiment: MLflow experiment of the pipeline's run.
        pipeline_run_id: The Kubeflow run id that finds the pipeline's MLflow run.
        gate_margin: Worst-group accuracy the challenger must gain over the champion.
        gate_tolerance: Largest drop of any group's accuracy a promoted challenger may have.
        gate_floor: Worst-group accuracy every champion must reach.

    Returns:
        Output: The decision in one line.
        decision: The decision as JSON; scalar ``promoted`` 1 or 0.
    """
    import json

    from ffr.promotion import GatePolicy
    from ffr.checks import sweep_config
    from ffr.sweep_tasks import open_store, register_selection

    result = register_selection(sweep_config(config), data.path, results.path, [r.path for r in records],
                                open_store(stage_store), registered_model_name,
                                GatePolicy(gate_margin, gate_tolerance, gate_floor), mlflow_uri, mlflow_experiment,
                                pipeline_run_id)
    with open(decision.path, "w") as f:
        json.dump(result, f, indent=2)
    decision.metadata.update({k: v for k, v in result.items() if k not in ("reasons", "lineage")})
    if result.get("registered"):
        decision.log_metric("promoted", float(result["promoted"]))
    return result["summary"]
