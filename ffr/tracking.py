"""The tracker protocol: what the library reports while it runs, with no tracking backend imported.

Entry points (``run_cell``, ``compare``, ``train_stage``, ``evaluate_stage``) take an optional
tracker and call these few methods at their record points; :class:`NullTracker` is the default.
The MLflow implementation lives in :mod:`ffr.integrations.tracking`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class Tracker(Protocol):
    """A sink for one run's parameters, metrics, datasets, evaluations and model."""

    def child(self, name: str) -> "Tracker":
        """A nested run (one per stage or grid cell), already started. An entry point closes it
        when done; one left open by an exception is closed as failed with its parent."""

    def close(self) -> None:
        """Mark this (nested) run finished."""

    def log_params(self, params: dict[str, Any]) -> None:
        """Flat parameters (see :func:`flatten`)."""

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Scalars with stable names (``val/worst_group_acc``, ``train/loss`` ...)."""

    def log_dataset(self, manifest, context: str, location: str | None = None) -> None:
        """A manifest the run read (``context``: train / validation / test), with where it lives."""

    def log_evaluation(self, metrics: dict, prefix: str) -> None:
        """A group evaluation (:func:`ffr.metrics.metrics_from_tally`): scalars, table and figure."""

    def log_history(self, history: list[dict]) -> None:
        """The per-epoch records of one training call (for the validation-WGA-by-epoch figure)."""

    def log_model(self, model, meta: dict) -> None:
        """The selected model of a training call, with its checkpoint metadata."""

    def log_artifact(self, path: str) -> None:
        """A file produced by the run."""


class NullTracker:
    """Records nothing: the default when no tracker is given."""

    def child(self, name: str) -> "NullTracker":
        return self

    def close(self): pass
    def log_params(self, params): pass
    def log_metrics(self, metrics, step=None): pass
    def log_dataset(self, manifest, context, location=None): pass
    def log_evaluation(self, metrics, prefix): pass
    def log_history(self, history): pass
    def log_model(self, model, meta): pass
    def log_artifact(self, path): pass


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config (dataclasses, dicts) as ``{"finetune.lr": 0.001, ...}``; lists stay values."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}{k}."))
        if not obj and prefix:
            out[prefix[:-1]] = "{}"
        return out
    return {prefix[:-1]: obj}


def epoch_metrics(record: dict) -> tuple[dict[str, float], int]:
    """The scalars of one ``fit`` log record and its epoch (the step)."""
    return {k: float(v) for k, v in record.items()
            if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool)}, int(record["epoch"])
