"""The tracker protocol: what the library reports while it runs, with no tracking backend imported.

Entry points (the stage driver :func:`ffr.train.stage.run_stage` and so ``train_stage``,
``compare``, ``evaluate_step``) take an optional tracker and call these few methods at their
record points; :class:`NullTracker` is the default. ``compare`` reports each finished cell from
its record (:func:`log_cell`), so cells run in worker processes are reported alike.
The MLflow implementation lives in :mod:`ffr.integrations.mlflow_tracker`.
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

    def set_description(self, text: str) -> None:
        """The run's description (Markdown): a parent run's comparison table."""

    def set_tags(self, tags: dict[str, Any]) -> None:
        """Tags that say what the run is (strategy, objective, ...), for grouping and filtering."""

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        """Scalars with stable names (``val/worst_group_acc``, ``train/loss`` ...)."""

    def log_dataset(self, dataset, context: str, location: str | None = None) -> None:
        """A dataset the run read (``context``: train / validation / test): a manifest, or what
        :func:`dataset_record` kept of one; ``location``: where it lives."""

    def log_evaluation(self, metrics: dict, prefix: str) -> None:
        """A group evaluation (:func:`ffr.metrics.metrics_from_tally`): scalars, table and figure."""

    def log_selection(self, val: dict, best_epoch: int) -> None:
        """The selected checkpoint of one training call: its validation evaluation (the run's
        ``val/*`` metrics: the model you get, not the last epoch's) and its epoch."""

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
    def set_description(self, text): pass
    def set_tags(self, tags): pass
    def log_metrics(self, metrics, step=None): pass
    def log_dataset(self, dataset, context, location=None): pass
    def log_evaluation(self, metrics, prefix): pass
    def log_selection(self, val, best_epoch): pass
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
    """The scalars of one ``fit`` log record, named ``epoch/<name>`` (the curves: a run's own
    ``val/*`` metrics are its selected checkpoint's, :meth:`Tracker.log_selection`), and its epoch
    (the step)."""
    return {f"epoch/{k}": float(v) for k, v in record.items()
            if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool)}, int(record["epoch"])


def dataset_record(manifest, location: str | None = None) -> dict:
    """What a tracker records of a dataset a run read: the card's name, the content digest, rows,
    synthetic rows, images per group, the columns and where it lies (``location``, else its
    root). A cell's record keeps these, so a cell is reported without drawing its data again."""
    from ffr.data.manifest import group_key

    return {"name": manifest.card.name, "digest": manifest.digest(), "rows": len(manifest),
            "synthetic": int(manifest.is_synthetic().sum()),
            "groups": {group_key(*g): int(n) for g, n in manifest.group_counts().items()},
            "columns": [str(c) for c in manifest.frame.columns], "location": str(location or manifest.root)}


def log_cell(tracker: Tracker, cfg, record: dict, log_model: bool = True) -> None:
    """Report one finished ``compare`` cell from its record (:func:`ffr.experiment.run_cell`), so
    cells run in worker processes, resumed or shared through the stage cache are reported alike:
    the cell's parameters, its validation/test datasets and metrics, and a nested run per stage
    with its training set, settings, per-epoch metrics, test evaluation and (last stage) model.
    Nothing is split, balanced or evaluated again; the last stage's checkpoint is read for its
    model."""
    import json
    from pathlib import Path

    from ffr.metrics import flat_metrics

    import json as _json

    tracker.set_tags({"ffr.strategy": record["strategy"], "ffr.objective": record["objective"],
                      "ffr.bias_rate": record["bias_rate"], "ffr.seed": record["seed"],
                      "ffr.candidate": _json.dumps(record.get("hparams") or {}, sort_keys=True)})
    tracker.log_params({"strategy": record["strategy"], "bias_rate": record["bias_rate"], "seed": record["seed"],
                        **flatten(record.get("hparams") or {}, "hparams."), **flatten(cfg)})
    for context, info in (record.get("datasets") or {}).items():
        tracker.log_dataset(info, context)
    for i, stage in enumerate(record["stages"]):
        st = tracker.child(stage["name"])
        st.set_tags({"ffr.stage": stage["name"]})
        settings = (stage.get("request") or {}).get("settings") or cfg.stage_settings(stage["name"])
        st.log_params({"stage": stage["name"], "stage_key": stage.get("key"),
                       **flatten(settings, f"{stage['name']}.")})
        if stage.get("train_data"):
            st.log_dataset(stage["train_data"], "train")
        ckpt = Path(stage["checkpoint"])
        history_file = Path(stage.get("history") or ckpt.parent / "history.jsonl")
        history = [json.loads(line) for line in history_file.read_text().splitlines()] if history_file.is_file() else []
        for rec in history:
            st.log_metrics(*epoch_metrics(rec))
        if stage.get("val") is not None and stage.get("best_epoch") is not None:
            st.log_selection(stage["val"], stage["best_epoch"])
        st.log_history(history)
        st.log_evaluation(stage["test"], "test")
        if log_model and i == len(record["stages"]) - 1:
            from ffr.train.loop import load_checkpoint

            model, meta = load_checkpoint(ckpt)
            st.log_model(model, meta)
        st.close()
    tracker.log_metrics(flat_metrics(record["val"], "val"))
    tracker.log_evaluation(record["test"], "test")
