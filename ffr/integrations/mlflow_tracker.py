"""The :class:`ffr.tracker.Tracker` the library reports to, backed by one MLflow run.

A run records the resolved config as parameters, per-epoch metrics under stable names, the test
evaluation (scalars, a group table, a per-group accuracy figure), the validation-WGA-by-epoch
figure, its dataset inputs (with their DVC digest and URI) and the selected model as the servable
image classifier (:mod:`ffr.integrations.serving`). Opening and closing runs:
:mod:`ffr.integrations.mlflow_runs`.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ffr.integrations.mlflow_server import TrackingError
from ffr.metrics import flat_metrics
from ffr.paths import redact_uri


_BAD_KEY = re.compile(r"[^\w\-. /:]")

# What a run is, as tags every run carries (a nested run inherits its parent's): the MLflow runs
# table groups, filters (tags.`ffr.strategy` = 'ffr') and compares runs by them.
WHAT = ("ffr.pipeline", "ffr.strategy", "ffr.objective", "ffr.bias_rate", "ffr.seed", "ffr.candidate")
STAGE_TAG = "ffr.stage"
NOTE = "mlflow.note.content"   # the description MLflow's UI shows (Markdown) for a run or an experiment


def is_count(key: str) -> bool:
    """A group's image count (``test/group/<g>/n``): a fact about the data, not something learned;
    logged as a parameter, never as a metric (a flat chart per group)."""
    return key.endswith("/n")


def _key(k: str) -> str:
    return _BAD_KEY.sub("_", k)


class MlflowTracker:
    """A :class:`ffr.tracker.Tracker` writing to one MLflow run (``run_id``)."""

    def __init__(self, run_id: str, client=None):
        from mlflow import MlflowClient

        self.run_id = run_id
        self.client = client or MlflowClient()
        self.model_uri: str | None = None
        self.what: dict[str, str] = {}   # the WHAT tags set on this run, inherited by its children
        self.source: dict[str, str] = {}  # its Source (mlflow.source.*), inherited too
        self._selection: dict[str, float] = {}
        self._selection_logged = True
        self._children: list[MlflowTracker] = []
        self._closed = False

    # -- runs
    def child(self, name: str) -> "MlflowTracker":
        import mlflow

        run = mlflow.start_run(run_name=name, nested=True, parent_run_id=self.run_id,
                               tags={**self.what, **self.source})
        t = MlflowTracker(run.info.run_id, self.client)
        t.what, t.source = dict(self.what), dict(self.source)
        self._children.append(t)
        return t

    def close(self, status: str = "FINISHED") -> None:
        import mlflow

        self._flush_selection()
        for c in self._children:
            c.broken = getattr(self, "broken", False) or getattr(c, "broken", False)
            c.close("FAILED" if status != "FINISHED" else status)
        if self._closed:
            return
        self._closed = True
        try:
            active = mlflow.active_run()
            if active is not None and active.info.run_id == self.run_id:
                mlflow.end_run(status)
            else:
                self.client.set_terminated(self.run_id, status)
        except Exception as e:
            if getattr(self, "broken", False):  # the failure was reported already (compare's warning)
                return
            first = (str(e).strip().splitlines() or [""])[0]
            raise TrackingError(redact_uri(f"could not close MLflow run {self.run_id}: {type(e).__name__}: "
                                           f"{first}")) from None

    # -- values
    def log_params(self, params: dict[str, Any]) -> None:
        from mlflow.entities import Param

        items = [Param(_key(k), str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i:i + 100])

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        from mlflow.entities import Metric

        counts = {k: int(v) for k, v in metrics.items() if is_count(k) and v is not None}
        if counts and not any(k.startswith("epoch/") for k in counts):  # per-epoch copies: the same numbers
            self.log_params(counts)
        ts = int(time.time() * 1000)
        items = [Metric(_key(k), float(v), ts, step or 0) for k, v in metrics.items()
                 if v is not None and not is_count(k)]
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[i:i + 1000])

    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.what.update({k: str(v) for k, v in tags.items() if k in WHAT and v is not None})
        self.client.log_batch(self.run_id, tags=[RunTag(_key(k), str(v)) for k, v in tags.items() if v is not None])

    def set_description(self, text: str) -> None:
        """The run's description, under a ``## Comparison`` section (other sections are kept)."""
        describe(self.client, self.run_id, "Comparison", text)

    def log_artifact(self, path: str) -> None:
        if Path(path).is_file():
            self.client.log_artifact(self.run_id, path)

    # -- datasets
    def log_dataset(self, dataset, context: str, location: str | None = None) -> None:
        """A dataset input (a manifest, or :func:`ffr.tracker.dataset_record`'s record of one)
        whose digest is DVC's version of the manifest folder (when it is on disk) and whose source
        is its URI; its profile holds the rows and the images per group; tags carry the content
        digest and the image root's DVC version too. The same values become run tags
        ``data.<context>.*`` for lineage."""
        from mlflow.entities import Dataset, DatasetInput, InputTag

        from ffr.integrations.dvc import dataset_digests
        from ffr.paths import is_remote
        from ffr.tracker import dataset_record

        record = dataset if isinstance(dataset, dict) else dataset_record(dataset)
        info = {"digest": record["digest"], "rows": str(record["rows"])}
        if location is not None:
            local = location
            if is_remote(location):
                from ffr.integrations.s3 import local_mirror

                local = local_mirror(location)
            if Path(local).exists():
                info.update(dataset_digests(local, record["location"]))
            info["uri"] = location if is_remote(location) else str(Path(location).resolve())
        source = info.get("uri") or record["location"]
        entity = Dataset(name=f"{record['name']}-{context}", digest=info.get("dvc_md5", info["digest"][:32]),
                         source_type="s3" if is_remote(source) else "local", source=json.dumps({"uri": source}),
                         schema=json.dumps({"mlflow_colspec": [{"type": "string", "name": c, "required": True}
                                                               for c in record.get("columns", [])]}),
                         profile=json.dumps({"num_rows": record["rows"], "synthetic": record.get("synthetic", 0),
                                             "groups": record.get("groups", {})}))
        tags = [InputTag("mlflow.data.context", context)] + [InputTag(f"ffr.{k}", v) for k, v in info.items()]
        self._log_inputs([DatasetInput(entity, tags)])
        self.set_tags({f"data.{context}.{k}": v for k, v in info.items()})

    def _log_inputs(self, inputs: list, attempts: int = 4) -> None:
        """``log_inputs``, again when a concurrent run created the same dataset first: MLflow's
        SQL store creates a dataset by "look up, then insert", so two steps of a pipeline logging
        the same test split at once make one of them fail on the table's unique key; the next
        attempt finds the dataset and links it."""
        from mlflow.exceptions import MlflowException

        for attempt in range(attempts):
            try:
                return self.client.log_inputs(self.run_id, inputs)
            except MlflowException as e:
                if "UNIQUE constraint" not in str(e) and "IntegrityError" not in str(e) or attempt + 1 == attempts:
                    raise
                time.sleep(0.2 * (attempt + 1))

    # -- evaluations and figures
    def log_evaluation(self, metrics: dict, prefix: str) -> None:
        import pandas as pd

        self.log_metrics(flat_metrics(metrics, prefix))
        rows = [{"group": g, "label": g.rsplit("_", 1)[0], "bias": g.rsplit("_", 1)[-1],
                 "acc": v["acc"], "n": v["n"]} for g, v in metrics["groups"].items()]
        self.client.log_table(self.run_id, pd.DataFrame(rows), f"{prefix}/groups.json")
        self.client.log_dict(self.run_id, {k: v for k, v in metrics.items()}, f"{prefix}/metrics.json")
        if metrics.get("data_digest"):
            self.set_tags({f"data.{prefix}.eval_digest": metrics["data_digest"]})
        self._figure(lambda ax: _group_bars(ax, metrics, prefix), f"{prefix}/group_accuracy.png")

    def log_selection(self, val: dict, best_epoch: int) -> None:
        """The selected checkpoint's validation metrics as the run's ``val/*`` metrics (step: its
        epoch), ``best_epoch`` as a metric and a tag. Logged once: linked to the model when one is
        logged next (its page in the MLflow UI shows them), else when the run closes."""
        self._selection = {**flat_metrics(val, "val"), "best_epoch": float(best_epoch)}
        self._selection_logged = False
        self.set_tags({"ffr.best_epoch": int(best_epoch)})

    def _flush_selection(self, model_id: str | None = None) -> None:
        if self._selection_logged or not self._selection:
            return
        self._selection_logged = True
        step = int(self._selection.get("best_epoch", 0))
        if model_id is None:
            self.log_metrics(self._selection, step=step)
        else:
            self.log_params({k: int(v) for k, v in self._selection.items() if is_count(k)})
            self.log_model_metrics(model_id, self._selection, step=step)

    def log_history(self, history: list[dict]) -> None:
        if history:
            best = self._selection.get("best_epoch")
            self._figure(lambda ax: _wga_by_epoch(ax, history, best), "figures/val_wga_by_epoch.png")

    def _figure(self, draw: Callable, artifact_file: str) -> None:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5))
        try:
            draw(ax)
            fig.tight_layout()
            self.client.log_figure(self.run_id, fig, artifact_file, save_kwargs={"bbox_inches": "tight"})
        finally:
            plt.close(fig)

    # -- model
    def log_model(self, model, meta: dict) -> None:
        """Log the model as the servable image classifier (:mod:`ffr.integrations.serving`: an
        MLflow pyfunc that takes encoded images, applies the model's own preprocessing and answers
        with the class, the probabilities and the version), once per training run."""
        from ffr.integrations.serving import log_servable

        with _active(self.run_id):  # the model says what it is and where it was logged from, as its run does
            info = log_servable(copy_to_cpu(model), _plain(meta), tags={**self.what, **self.source} or None)
        self.model_uri = info.model_uri
        self.set_tags({"ffr.model_uri": info.model_uri, "ffr.model_classes": json.dumps(meta["classes"])})
        self._flush_selection(info.model_id)  # the Logged Model page shows the selected checkpoint's numbers

    def log_model_metrics(self, model_id: str, metrics: dict[str, float], step: int = 0) -> None:
        """``metrics`` linked to the logged model ``model_id`` (its page in the MLflow UI)."""
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(_key(k), float(v), ts, step, model_id=model_id)
                                                    for k, v in metrics.items() if v is not None and not is_count(k)])


def _sections(note: str) -> dict[str, str]:
    out, title = {}, ""
    for line in (note or "").splitlines(keepends=True):
        if line.startswith("## "):
            title = line[3:].strip()
        out[title] = out.get(title, "") + line
    return out


def describe(client, run_id: str, title: str, text: str) -> None:
    """Set section ``title`` (a ``## title`` Markdown section) of run ``run_id``'s description,
    keeping its other sections: the comparison and the gate's verdict are written by different
    steps of a pipeline."""
    sections = _sections(client.get_run(run_id).data.tags.get(NOTE, ""))
    body = "\n".join(line for line in text.strip().splitlines() if not line.startswith("# "))  # no 2nd title
    sections[title] = f"## {title}\n\n{body.strip()}\n\n"
    client.set_tag(run_id, NOTE, "".join(sections[k] for k in sorted(sections, key=_SECTION_ORDER))[:60000])


def _SECTION_ORDER(title: str) -> tuple:
    order = ["", "Comparison", "Promotion gate"]
    return (order.index(title) if title in order else len(order), title)


def copy_to_cpu(model: torch.nn.Module) -> torch.nn.Module:
    import copy

    return copy.deepcopy(model).cpu()


def _plain(meta: dict) -> dict:
    return json.loads(json.dumps(meta, default=str))


@contextlib.contextmanager
def _active(run_id: str):
    """Make ``run_id`` the active fluent run for APIs that log to the active run only."""
    import mlflow

    active = mlflow.active_run()
    if active is not None and active.info.run_id == run_id:
        yield
        return
    mlflow.start_run(run_id=run_id, nested=active is not None)
    try:
        yield
    finally:
        # Ending the resumed run marks it finished: set it back to running.
        mlflow.end_run("RUNNING")


def _group_bars(ax, metrics: dict, prefix: str) -> None:
    groups = list(metrics["groups"])
    accs = [metrics["groups"][g]["acc"] or 0.0 for g in groups]
    colors = ["tab:red" if g == metrics.get("worst_group") else "tab:blue" for g in groups]
    ax.bar(groups, accs, color=colors)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    wga = metrics.get("worst_group_acc")
    ax.set_title(f"{prefix}: per-group accuracy (worst {wga:.3f})" if wga is not None else prefix)
    ax.tick_params(axis="x", rotation=30)


def _strategy_bars(ax, results: dict[str, dict]) -> None:
    """Per-group test accuracy, one bar per strategy in each group."""
    groups = list(next(iter(results.values()))["groups"])
    width = 0.8 / max(1, len(results))
    for i, (strategy, m) in enumerate(results.items()):
        xs = [g + (i - (len(results) - 1) / 2) * width for g in range(len(groups))]
        wga = m.get("worst_group_acc")
        ax.bar(xs, [m["groups"][g]["acc"] or 0.0 for g in groups], width,
               label=f"{strategy} (worst {wga:.3f})" if wga is not None else strategy)
    ax.set_xticks(range(len(groups)), groups, rotation=30)
    ax.set_ylim(0, 1)
    ax.set_ylabel("test accuracy")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="strategy")  # beside, not over, bars
    ax.set_title("per-group test accuracy by strategy")


def _wga_by_epoch(ax, history: list[dict], best_epoch: float | None = None) -> None:
    epochs = [r["epoch"] for r in history]
    ax.plot(epochs, [r.get("val/worst_group_acc", np.nan) for r in history], marker="o", label="val worst-group")
    ax.plot(epochs, [r.get("val/balanced_acc", np.nan) for r in history], marker=".", label="val balanced")
    if best_epoch is not None:
        ax.axvline(best_epoch, color="tab:red", linestyle="--", label=f"selected (epoch {int(best_epoch)})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the curves, never over them
    ax.set_title("validation accuracy by epoch")
