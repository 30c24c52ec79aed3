"""Kubeflow pipelines of ffr, and how to launch them: locally with the KFP local runner (the
default, no cluster), compiled to YAML, submitted to or scheduled on a Kubeflow Pipelines endpoint.

The registry :data:`PIPELINES` maps a name (``ffr``, ``comparison``, ``retrain``) to a builder
taking a :class:`Platform`; :func:`get_pipeline` builds (once) and returns one; ``ffr_pipeline``,
``comparison_pipeline`` and ``retrain_pipeline`` are the default builds. :mod:`pipelines.run` holds
the launchers behind ``ffr run / compile``, :mod:`pipelines.cluster` those behind ``ffr submit /
schedule / upload``.
"""

from ffr.integrations.kubeflow.pipelines import definitions
from ffr.integrations.kubeflow.pipelines.definitions import (PIPELINES, build_comparison_pipeline, build_ffr_pipeline, build_retrain_pipeline,
                                   get_pipeline)
from ffr.integrations.kubeflow.pipelines.platform import Platform
from ffr.integrations.kubeflow.pipelines.sweep import build_sweep_pipeline  # registers the sweep pipeline

__all__ = ["PIPELINES", "Platform", "get_pipeline", "build_ffr_pipeline", "build_comparison_pipeline",
           "build_retrain_pipeline", "build_sweep_pipeline", "ffr_pipeline", "comparison_pipeline", "retrain_pipeline"]


def __getattr__(attr: str):
    return getattr(definitions, attr)  # ffr_pipeline, comparison_pipeline, retrain_pipeline: built on first use
