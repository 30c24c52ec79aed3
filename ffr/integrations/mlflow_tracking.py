"""MLflow tracking: the :class:`ffr.tracking.Tracker` the library reports to, backed by MLflow.

One parent run per pipeline / ``compare`` run (:func:`mlflow_run`), a nested run per stage or grid
cell (:meth:`MlflowTracker.child`). A run records the resolved config as parameters, per-epoch
metrics under stable names, the test evaluation (scalars, a group table, a per-group accuracy
figure), the validation-WGA-by-epoch figure, its dataset inputs (with their DVC digest and URI),
system metrics, and the selected model as the servable image classifier
(:mod:`ffr.integrations.serving`: encoded images in, class and probabilities out, with a
signature, an input example and pinned requirements).

Talking to a server is bounded: the server must answer ``/health`` within a few attempts, and
each request is retried a bounded number of times (``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` etc.,
defaulted here to small values when unset); then a :class:`TrackingError` names the server.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import base64
import re
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from ffr.integrations import ServiceError
from ffr.paths import redact_uri
from ffr.metrics import flat_metrics

# Bounded retries for every request the MLflow client makes (MLflow's own defaults wait minutes).
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5", "MLFLOW_HTTP_REQUEST_TIMEOUT": "30"}
_BAD_KEY = re.compile(r"[^\w\-. /:]")


class TrackingError(ServiceError):
    """The tracking server or registry could not be used; the message says which and why."""


def _is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


def _health_request(tracking_uri: str) -> urllib.request.Request:
    """``GET <tracking_uri>/health``, the URI's user info sent as a Basic ``Authorization``
    header (as MLflow's client does) instead of being left in the host name."""
    parts = urllib.parse.urlsplit(tracking_uri)
    userinfo, _, hostport = parts.netloc.rpartition("@")
    url = urllib.parse.urlunsplit((parts.scheme, hostport, parts.path.rstrip("/") + "/health", parts.query, ""))
    request = urllib.request.Request(url)
    if userinfo:
        user, _, password = userinfo.partition(":")
        pair = f"{urllib.parse.unquote(user)}:{urllib.parse.unquote(password)}".encode()
        request.add_header("Authorization", "Basic " + base64.b64encode(pair).decode())
    return request


def check_server(tracking_uri: str, attempts: int = 3, delay: float = 1.0) -> None:
    """For an HTTP tracking URI, wait for ``/health`` to answer (bounded attempts with backoff);
    raise :class:`TrackingError` when it never does. Local stores need no check. The message
    shows the URI redacted (:func:`redact_uri`)."""
    if not _is_http(tracking_uri):
        return
    request = _health_request(tracking_uri)
    last: Exception | None = None
    for attempt in range(attempts):
        try:
            with urllib.request.urlopen(request, timeout=5) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError, ValueError) as e:  # ValueError: a malformed URI (port)
            last = e
        if attempt + 1 < attempts:
            time.sleep(delay * 2 ** attempt)
    raise TrackingError(redact_uri(f"MLflow server {tracking_uri} is not reachable ({attempts} attempts to "
                                   f"{request.full_url}: {last}); start it or set --mlflow / MLFLOW_TRACKING_URI "
                                   "to a running one"))


def configure(tracking_uri: str) -> None:
    """Point MLflow at ``tracking_uri`` with bounded HTTP retries, after checking the server."""
    import mlflow

    for k, v in HTTP_DEFAULTS.items():
        os.environ.setdefault(k, v)
    if redact_uri(tracking_uri) != tracking_uri:  # MLflow prints "View run ... at: <URI>/#/..." otherwise
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    check_server(tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)


def client_for(tracking_uri: str):
    """An ``MlflowClient`` for a checked ``tracking_uri``."""
    from mlflow import MlflowClient

    configure(tracking_uri)
    return MlflowClient(tracking_uri, registry_uri=tracking_uri)


def guarded(action: str) -> Callable:
    """Turn MLflow and connection failures of ``action`` into a :class:`TrackingError` (whose
    message shows any URI in them redacted: MLflow's name the request URL, credentials included)."""

    def wrap(fn):
        @functools.wraps(fn)
        def inner(*args, **kwargs):
            from mlflow.exceptions import MlflowException

            try:
                return fn(*args, **kwargs)
            except TrackingError:
                raise
            except (MlflowException, OSError) as e:
                raise TrackingError(redact_uri(f"{action} failed: {type(e).__name__}: {e}")) from e
        return inner

    return wrap


def provenance() -> dict[str, str]:
    """What produced a run or a model: the ffr version, the git revision of the code that runs
    (the checkout ffr is imported from; in an image without one, ``$FFR_GIT_COMMIT``, which the
    image sets from its build argument) and, in a cluster, the component image (``$FFR_IMAGE``,
    set on every step by the pipeline). Tags ``ffr.version``, ``ffr.git_commit``, ``ffr.image``."""
    import ffr
    from ffr.revision import code_revision

    commit, dirty = code_revision()
    out = {"ffr.version": ffr.__version__,
           "ffr.git_commit": commit and commit + ("-dirty" if dirty else ""),
           "ffr.image": os.environ.get("FFR_IMAGE")}
    return {k: v for k, v in out.items() if v}


def _key(k: str) -> str:
    return _BAD_KEY.sub("_", k)


class MlflowTracker:
    """A :class:`ffr.tracking.Tracker` writing to one MLflow run (``run_id``)."""

    def __init__(self, run_id: str, client=None):
        from mlflow import MlflowClient

        self.run_id = run_id
        self.client = client or MlflowClient()
        self.model_uri: str | None = None
        self._children: list[MlflowTracker] = []
        self._closed = False

    # -- runs
    def child(self, name: str) -> "MlflowTracker":
        import mlflow

        run = mlflow.start_run(run_name=name, nested=True, parent_run_id=self.run_id)
        t = MlflowTracker(run.info.run_id, self.client)
        self._children.append(t)
        return t

    def close(self, status: str = "FINISHED") -> None:
        import mlflow

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

        ts = int(time.time() * 1000)
        items = [Metric(_key(k), float(v), ts, step or 0) for k, v in metrics.items() if v is not None]
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.run_id, metrics=items[i:i + 1000])

    def set_tags(self, tags: dict[str, Any]) -> None:
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(_key(k), str(v)) for k, v in tags.items() if v is not None])

    def log_artifact(self, path: str) -> None:
        if Path(path).is_file():
            self.client.log_artifact(self.run_id, path)

    # -- datasets
    def log_dataset(self, manifest, context: str, location: str | None = None) -> None:
        """A dataset input whose digest is DVC's version of the manifest folder (when it is on
        disk) and whose source is its URI; tags carry the content digest and the image root's
        DVC version too. The same values become run tags ``data.<context>.*`` for lineage."""
        import mlflow
        from mlflow.entities import DatasetInput, InputTag

        from ffr.integrations.dvc import dataset_digests
        from ffr.paths import is_remote

        info = {"digest": manifest.digest(), "rows": str(len(manifest))}
        if location is not None:
            local = location
            if is_remote(location):
                from ffr.integrations.s3 import local_mirror

                local = local_mirror(location)
            if Path(local).exists():
                info.update(dataset_digests(local, manifest.root))
            info["uri"] = location if is_remote(location) else str(Path(location).resolve())
        source = info.get("uri") or str(manifest.root)
        with warnings.catch_warnings():  # schema hints about the optional integer 'seed' column
            warnings.simplefilter("ignore", UserWarning)
            ds = mlflow.data.from_pandas(manifest.frame, source=source, name=f"{manifest.card.name}-{context}",
                                         digest=info.get("dvc_md5", info["digest"][:32]))._to_mlflow_entity()
        tags = [InputTag("mlflow.data.context", context)] + [InputTag(f"ffr.{k}", v) for k, v in info.items()]
        self.client.log_inputs(self.run_id, [DatasetInput(ds, tags)])
        self.set_tags({f"data.{context}.{k}": v for k, v in info.items()})

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

    def log_history(self, history: list[dict]) -> None:
        if history:
            self._figure(lambda ax: _wga_by_epoch(ax, history), "figures/val_wga_by_epoch.png")

    def _figure(self, draw: Callable, artifact_file: str) -> None:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5))
        try:
            draw(ax)
            fig.tight_layout()
            self.client.log_figure(self.run_id, fig, artifact_file)
        finally:
            plt.close(fig)

    # -- model
    def log_model(self, model, meta: dict) -> None:
        """Log the model as the servable image classifier (:mod:`ffr.integrations.serving`: an
        MLflow pyfunc that takes encoded images, applies the model's own preprocessing and answers
        with the class, the probabilities and the version), once per training run."""
        from ffr.integrations.serving import log_servable

        with _active(self.run_id):
            info = log_servable(copy_to_cpu(model), _plain(meta))
        self.model_uri = info.model_uri
        self.set_tags({"ffr.model_uri": info.model_uri, "ffr.model_classes": json.dumps(meta["classes"])})


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
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("per-group test accuracy by strategy")


def _wga_by_epoch(ax, history: list[dict]) -> None:
    epochs = [r["epoch"] for r in history]
    ax.plot(epochs, [r.get("val/worst_group_acc", np.nan) for r in history], marker="o", label="val worst-group")
    ax.plot(epochs, [r.get("val/balanced_acc", np.nan) for r in history], marker=".", label="val balanced")
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.legend(loc="lower right")
    ax.set_title("validation accuracy by epoch")


def local_store(run_dir: str | os.PathLike) -> tuple[str, str]:
    """A local MLflow store inside a run folder: (SQLite tracking URI, artifact location)."""
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{run_dir / 'mlflow.db'}", (run_dir / "mlartifacts").as_uri()


def _experiment(name: str, artifact_location: str | None) -> str:
    import mlflow

    found = mlflow.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    return mlflow.create_experiment(name, artifact_location=artifact_location)


@contextlib.contextmanager
def mlflow_run(tracking_uri: str, experiment: str = "ffr", run_name: str | None = None,
               tags: dict[str, Any] | None = None, system_metrics: bool = True,
               artifact_location: str | None = None, parent_run_id: str | None = None) -> Iterator[MlflowTracker]:
    """An MLflow run as a tracker; nested runs left open by an exception end as FAILED with it.
    Lineage tags: the git commit of the working directory and ``tags`` (e.g. the pipeline run id).
    System metrics (CPU, memory, GPU) are sampled while it is open. ``artifact_location`` applies
    when the experiment is created (a local store keeps its artifacts beside it).
    ``parent_run_id`` nests the run under a run another process opened (:func:`open_run`): a
    pipeline step's run under its pipeline's."""
    import mlflow

    configure(tracking_uri)
    try:
        if parent_run_id:
            experiment_id = mlflow.MlflowClient(tracking_uri).get_run(parent_run_id).info.experiment_id
        else:
            experiment_id = _experiment(experiment, artifact_location)
        mlflow.set_experiment(experiment_id=experiment_id)
        run = mlflow.start_run(run_name=run_name, log_system_metrics=system_metrics,
                               parent_run_id=parent_run_id or None, nested=bool(parent_run_id),
                               tags={k: str(v) for k, v in {**provenance(),
                                                            **(tags or {})}.items() if v is not None})
    except Exception as e:
        raise TrackingError(redact_uri(f"could not start an MLflow run at {tracking_uri}: {type(e).__name__}: {e}")) from e
    tracker = MlflowTracker(run.info.run_id)
    try:
        yield tracker
    except BaseException:
        tracker.close("FAILED")
        raise
    tracker.close("FINISHED")


def pipeline_run(tracking_uri: str, experiment: str, pipeline_run_id: str) -> str | None:
    """The id of the parent run :func:`open_run` made for pipeline run ``pipeline_run_id`` (tag
    ``ffr.pipeline_run_id``), or None. Steps find it by the pipeline run id every step knows
    rather than by a value handed down from the opening step: kfp's local runner hands a loop's
    item instead of an outer task's output to the tasks inside a ``ParallelFor``."""
    import mlflow

    configure(tracking_uri)
    exp = mlflow.MlflowClient(tracking_uri).get_experiment_by_name(experiment)
    if exp is None or not pipeline_run_id:
        return None
    found = mlflow.MlflowClient(tracking_uri).search_runs(
        [exp.experiment_id], f"tags.`ffr.pipeline_run_id` = '{pipeline_run_id}'", order_by=["attributes.start_time ASC"])
    return next((r.info.run_id for r in found if "mlflow.parentRunId" not in r.data.tags), None)


@contextlib.contextmanager
def optional_run(tracking_uri: str | None, run_name: str, pipeline_run_id: str | None = None,
                 experiment: str = "ffr", **kwargs) -> Iterator[MlflowTracker | None]:
    """:func:`mlflow_run` when a tracking URI is given (or ``$MLFLOW_TRACKING_URI`` is set),
    else ``None``: how pipeline steps report when, and only when, tracking is configured. With
    ``pipeline_run_id`` the run nests under that pipeline run's parent run (:func:`pipeline_run`)."""
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        yield None
        return
    parent = pipeline_run(uri, experiment, pipeline_run_id) if pipeline_run_id else None
    with mlflow_run(uri, experiment, run_name=run_name, parent_run_id=parent,
                    tags={"ffr.pipeline_run_id": pipeline_run_id} if pipeline_run_id else None, **kwargs) as tracker:
        yield tracker


@guarded("opening the pipeline's MLflow run")
def open_run(tracking_uri: str, experiment: str, run_name: str, tags: dict[str, Any] | None = None,
             artifact_location: str | None = None) -> str:
    """Create a run that stays open after this process ends (a pipeline's parent run, which its
    steps nest under and its last step closes with :func:`close_run`); returns its id."""
    import mlflow

    configure(tracking_uri)
    client = mlflow.MlflowClient(tracking_uri)
    run = client.create_run(_experiment(experiment, artifact_location), run_name=run_name,
                            tags={k: str(v) for k, v in {**provenance(), **(tags or {})}.items()
                                  if v is not None})
    return run.info.run_id


@guarded("closing the pipeline's MLflow run")
def close_run(tracking_uri: str, run_id: str, status: str = "FINISHED") -> None:
    """Mark a run opened by :func:`open_run` finished (or FAILED)."""
    import mlflow

    configure(tracking_uri)
    mlflow.MlflowClient(tracking_uri).set_terminated(run_id, status)


@guarded("closing the pipeline's MLflow runs")
def finish_pipeline_run(tracking_uri: str, experiment: str, pipeline_run_id: str, succeeded: bool,
                        reason: str = "") -> str | None:
    """End pipeline run ``pipeline_run_id``'s MLflow runs: the parent FINISHED or, when the
    pipeline failed, FAILED with ``reason`` as its ``ffr.failure`` tag; any step run still open (a
    pod killed before its step could close it) FAILED. What the pipeline's exit handler calls,
    whatever happened. Returns the parent's id (None: no such run)."""
    import mlflow

    configure(tracking_uri)
    client = mlflow.MlflowClient(tracking_uri)
    exp = client.get_experiment_by_name(experiment)
    if exp is None or not pipeline_run_id:
        return None
    runs = client.search_runs([exp.experiment_id], f"tags.`ffr.pipeline_run_id` = '{pipeline_run_id}'")
    parent = next((r for r in runs if "mlflow.parentRunId" not in r.data.tags), None)
    for r in runs:
        if r is not parent and r.info.status == "RUNNING":
            client.set_terminated(r.info.run_id, "FAILED")
    if parent is None:
        return None
    if not succeeded:
        client.set_tag(parent.info.run_id, "ffr.failure", (reason or "a step failed")[:4000])
    if parent.info.status == "RUNNING" or not succeeded:
        client.set_terminated(parent.info.run_id, "FINISHED" if succeeded else "FAILED")
    return parent.info.run_id


@guarded("logging the pipeline's summary to its run")
def log_summary_to(tracking_uri: str, experiment: str, pipeline_run_id: str, results: dict[str, dict],
                   files: dict[str, str] | None = None) -> str | None:
    """Put a pipeline's headline on its parent run (found by ``pipeline_run_id``): per strategy of
    ``results`` (strategy → :func:`ffr.stages.evaluate_stage` metrics) ``<strategy>/test/
    worst_group_acc``, ``balanced_acc``, ``average_acc``; with several strategies the per-group
    accuracy figure; and ``files`` (artifact path → local file, e.g. the comparison table).
    Returns the parent run's id (None when there is none)."""
    parent = pipeline_run(tracking_uri, experiment, pipeline_run_id)
    if parent is None:
        return None
    tracker = MlflowTracker(parent)
    tracker.log_metrics({f"{s}/test/{k}": float(m[k]) for s, m in results.items()
                         for k in ("worst_group_acc", "balanced_acc", "average_acc") if m.get(k) is not None})
    if len(results) > 1:
        tracker._figure(lambda ax: _strategy_bars(ax, results), "figures/group_accuracy_by_strategy.png")
    for artifact_path, local in (files or {}).items():
        tracker.client.log_artifact(parent, local, os.path.dirname(artifact_path) or None)
    return parent


@guarded("logging the pipeline's parameters")
def log_params_to(tracking_uri: str, run_id: str, params: dict[str, Any]) -> None:
    """Log (flattened) ``params`` to the run ``run_id``, e.g. a pipeline's parameters to its parent run."""
    from ffr.tracking import flatten

    configure(tracking_uri)
    MlflowTracker(run_id).log_params(flatten(params))
