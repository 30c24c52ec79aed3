"""Kubeflow Pipelines components: one thin lightweight component per pipeline step.

Each module holds one ``@dsl.component``: a typed signature (the interface KFP shows), a body
that imports ``ffr`` and maps artifact paths onto one library call. Only the standard library,
``kfp`` and :mod:`components.image` are imported at module level, so compiling a pipeline needs
neither torch nor a GPU. Every component runs in the project's image (:func:`base_image`).
"""

from ffr.integrations.kubeflow.components.balance import balance_data
from ffr.integrations.kubeflow.components.check import check_config, plan_baselines
from ffr.integrations.kubeflow.components.collect import collect_shards
from ffr.integrations.kubeflow.components.evaluate import evaluate_model
from ffr.integrations.kubeflow.components.image import base_image
from ffr.integrations.kubeflow.components.prepare import prepare_data
from ffr.integrations.kubeflow.components.register import register_model
from ffr.integrations.kubeflow.components.report import comparison_report
from ffr.integrations.kubeflow.components.synthesize import synthesize_shard
from ffr.integrations.kubeflow.components.data_revision import fetch_data_revision
from ffr.integrations.kubeflow.components.mlflow_run import finish_tracking, start_tracking
from ffr.integrations.kubeflow.components.sweep import (check_sweep_config, evaluate_sweep_batch, plan_sweep_stages,
                                           prepare_sweep_data, register_sweep_selection, sweep_report, sweep_work,
                                           train_sweep_batch)
from ffr.integrations.kubeflow.components.train import train_model

ALL = [check_config, plan_baselines, prepare_data, synthesize_shard, collect_shards, balance_data, train_model, evaluate_model,
       comparison_report, start_tracking, finish_tracking, fetch_data_revision, register_model, check_sweep_config,
       prepare_sweep_data, plan_sweep_stages, sweep_work, train_sweep_batch, evaluate_sweep_batch, sweep_report,
       register_sweep_selection]

__all__ = ["ALL", "base_image", "check_config", "plan_baselines", "finish_tracking", "prepare_data", "synthesize_shard", "collect_shards", "balance_data",
           "train_model", "evaluate_model", "comparison_report", "start_tracking", "fetch_data_revision",
           "register_model", "check_sweep_config", "prepare_sweep_data", "plan_sweep_stages", "sweep_work",
           "train_sweep_batch", "evaluate_sweep_batch", "sweep_report", "register_sweep_selection"]
