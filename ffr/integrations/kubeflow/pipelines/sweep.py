"""The ``sweep`` pipeline: the paper's protocol — several seeds, the same search budget for every
strategy, hyperparameters chosen by mean validation worst-group accuracy, 95% intervals — on the
cluster, the grid of ``ffr sweep --config`` from the run form's ``sweep_config``.

check → open MLflow run → prepare the data (real, synthetic pool, image cache; once) → plan (every
distinct trained stage once, by key, at its dependency level, in batches of ``sweep_stages_per_task``) →
for each level, a fan-out of training tasks (``--parallelism`` wide, each on its own pod, GPU
settings as the other training steps) into the stage store → a fan-out evaluating the cells from
the store → the report (selection, tables, plots, MLflow) → the selected FFR model registered
through the promotion gate.
"""

import json

from kfp import dsl

from ffr.balance import STRATEGIES
from ffr.integrations.kubeflow.components import (check_sweep_config, evaluate_sweep_batch, plan_sweep_stages,
                                     prepare_sweep_data, register_sweep_selection, sweep_report, sweep_work,
                                     train_sweep_batch)
from ffr.integrations.kubeflow.pipelines.definitions import PIPELINES, _exit_handler, _tracked, _tracking
from ffr.integrations.kubeflow.pipelines.parameters import MIN_FORM_NOTE, documented
from ffr.integrations.kubeflow.pipelines.platform import CHECK, DATA, EVALUATE, SYNTHESIS, TRACK, TRAIN, Platform
from ffr.promotion import GATE_FLOOR, GATE_MARGIN, GATE_TOLERANCE
from ffr.runform import short_names

# What the run form starts with: the built-in digits benchmark, every strategy, ERM, 3 seeds and
# the equal-budget protocol with 2 candidates each — a small grid that runs as it is. One line of
# JSON (which is YAML): a compiled pipeline's header repeats every default in a comment, and KFP
# comments out only the first line of a multi-line one.
DEFAULT_CONFIG = json.dumps({
    "data": {"dataset": "demo", "image_size": 32}, "backbone": "tiny_cnn", "objectives": ["erm"],
    "strategies": ["none", "usb", "asb", "ffr"], "bias_rates": [0.95], "seeds": [0, 1, 2],
    "train": {"epochs": 10, "min_steps": 200}, "pretrain": {"epochs": 10, "min_steps": 200, "lr": 1e-3},
    "finetune": {"epochs": 10, "min_steps": 200}, "overrides": {}, "equal_search": True,
    "search": {**{s: {"train": [{"lr": 1e-3}, {"lr": 1e-4}]} for s in ("none", "usb", "asb")},
               "ffr": {"finetune": [{"lpft_epochs": 0}, {"lpft_epochs": 5}]}}})


def plan_depth() -> int:
    """The longest chain of stages of any registered strategy (FFR: 2): how many training levels
    the pipeline lays out."""
    def depth(strategy) -> int:
        plans = {p.name: p for p in strategy.stages}

        def of(name):
            return 1 + (of(plans[name].init_from) if plans[name].init_from else 0)
        return max(of(p.name) for p in strategy.stages)

    return max(depth(STRATEGIES.get(n)) for n in STRATEGIES.names())


@PIPELINES.register("sweep")
def build_sweep_pipeline(platform: Platform | None = None):
    """The sweep pipeline for ``platform``."""
    p = platform or Platform()

    @dsl.pipeline(name="ffr-sweep", description="The paper's protocol on the cluster: the grid of `ffr sweep` "
                                                "(config: datasets, strategies, objectives, bias rates, seeds, "
                                                "the search), every shared stage trained once into the stage "
                                                "store, hyperparameters chosen by mean validation WGA over seeds, "
                                                "tables with 95% intervals, the chosen FFR registered. Fill in "
                                                "sweep_config (YAML) and sweep_stage_store (s3://bucket/prefix)." + MIN_FORM_NOTE)
    @documented()
    def sweep_pipeline(
        sweep_config: str = DEFAULT_CONFIG,
        sweep_stage_store: str = "",
        sweep_stages_per_task: int = 8,
        sweep_cells_per_task: int = 16,
        mlflow_uri: str = "",
        mlflow_experiment: str = "ffr",
        mlflow_artifacts: str = "",
        mlflow_registered_model: str = "ffr",
        gate_margin: float = GATE_MARGIN,
        gate_tolerance: float = GATE_TOLERANCE,
        gate_floor: float = GATE_FLOOR,
    ):
        """check → prepare data → plan → train the stages level by level (fan-outs of batches) →
        evaluate the cells (a fan-out) → report → register the selected FFR model."""
        scope = short_names(locals())
        config, stage_store = sweep_config, sweep_stage_store
        stages_per_task, cells_per_task = sweep_stages_per_task, sweep_cells_per_task
        registered_model_name = mlflow_registered_model
        with _exit_handler(p, mlflow_uri, mlflow_experiment):
            check = p.apply(check_sweep_config(config=config, stage_store=stage_store, stages_per_task=stages_per_task,
                                               cells_per_task=cells_per_task), CHECK, "check configuration")
            tracking = _tracking(p, check, "sweep", scope)
            data = p.apply(prepare_sweep_data(config=config), SYNTHESIS, "prepare data")
            data.after(check)
            plan = p.apply(plan_sweep_stages(config=config, data=data.outputs["data"],
                                             stages_per_task=stages_per_task, cells_per_task=cells_per_task),
                           DATA, "plan stages")
            previous = None
            for level in range(plan_depth()):
                work = p.apply(sweep_work(plan=plan.output, level=level), CHECK, f"stages of level {level}")
                if previous is not None:
                    work.after(previous)
                with dsl.ParallelFor(work.output, name=f"level-{level}", parallelism=p.parallelism or None) as b:
                    previous = p.apply(train_sweep_batch(config=config, data=data.outputs["data"], batch=b,
                                                         stage_store=stage_store), TRAIN, f"train level {level}")
            cells = p.apply(sweep_work(plan=plan.output, level=-1), CHECK, "cells")
            cells.after(previous)
            with dsl.ParallelFor(cells.output, name="cells", parallelism=p.parallelism or None) as b:
                ev = p.apply(evaluate_sweep_batch(config=config, data=data.outputs["data"], batch=b,
                                                  stage_store=stage_store), EVALUATE, "evaluate cells")
            report = p.apply(_tracked(sweep_report(config=config, records=dsl.Collected(ev.outputs["records"]),
                                                   **tracking[0]), tracking), EVALUATE, "report")
            p.apply(_tracked(register_sweep_selection(
                config=config, data=data.outputs["data"], results=report.outputs["results"],
                records=dsl.Collected(ev.outputs["records"]), stage_store=stage_store,
                registered_model_name=registered_model_name, gate_margin=gate_margin, gate_tolerance=gate_tolerance,
                gate_floor=gate_floor, **tracking[0]), tracking), TRACK, "register + promotion gate")

    return sweep_pipeline
