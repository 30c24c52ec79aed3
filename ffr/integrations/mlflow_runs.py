"""MLflow runs: one parent run per pipeline / ``compare`` run (:func:`mlflow_run`), a nested run
per stage or grid cell (:meth:`ffr.integrations.mlflow_tracker.MlflowTracker.child`), the parent
run of a Kubeflow pipeline that its steps find by the pipeline run id and its exit handler closes.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator

from ffr.integrations.mlflow_server import TrackingError, configure, guarded, provenance, source_tags
from ffr.integrations.mlflow_tracker import NOTE, WHAT, MlflowTracker, _strategy_bars, describe
from ffr.paths import redact_uri

EXPERIMENT_NOTE = (
    "Runs of [ffr](https://github.com/ffr-project/ffr) (From Fake to Real): a parent run per pipeline or "
    "`ffr compare`, a nested run per strategy, grid cell and training stage. Every run is tagged with what it "
    "is: `ffr.pipeline`, `ffr.strategy`, `ffr.objective`, `ffr.bias_rate`, `ffr.seed`, `ffr.candidate`, "
    "`ffr.stage`: group the runs table by `ffr.strategy` and chart `test/worst_group_acc` (the measure that "
    "matters) across runs. A parent run's description holds its comparison table and the promotion gate's "
    "verdict.")


def _experiment(name: str, artifact_location: str | None) -> str:
    """The experiment ``name``'s id, created when missing as a model-training experiment (kind
    ``custom_model_development``) with a description. In a store of ffr's own (a run folder's,
    ``artifact_location`` given) MLflow's unused ``Default`` experiment, whose artifacts would go to
    ``./mlruns`` outside the run folder, is removed."""
    import mlflow

    client = mlflow.MlflowClient()
    found = mlflow.get_experiment_by_name(name)
    if found is None:
        experiment_id = mlflow.create_experiment(name, artifact_location=artifact_location,
                                                 tags={"mlflow.experimentKind": "custom_model_development",
                                                       NOTE: EXPERIMENT_NOTE})
    else:
        experiment_id = found.experiment_id
        if "mlflow.experimentKind" not in found.tags:  # never overwrite what a user set
            client.set_experiment_tag(experiment_id, "mlflow.experimentKind", "custom_model_development")
        if NOTE not in found.tags:
            client.set_experiment_tag(experiment_id, NOTE, EXPERIMENT_NOTE)
    if artifact_location and mlflow.get_tracking_uri().startswith("sqlite:") and experiment_id != "0":
        default = client.get_experiment("0")
        if default.lifecycle_stage == "active" and not client.search_runs(["0"], max_results=1):
            client.delete_experiment("0")
    return experiment_id


def ui_link(tracking_uri: str, experiment_id: str | None = None) -> str:
    """Where a user opens the runs in MLflow's UI: the experiment's runs table in the model-training
    view (MLflow 3 opens a GenAI view by default, whatever the experiment's kind)."""
    base = tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    return f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning" if experiment_id else base


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
    tracker.what = {k: str(v) for k, v in (tags or {}).items() if k in WHAT and v is not None}
    tracker.source = {k: str(v) for k, v in (tags or {}).items() if k.startswith("mlflow.source.")}
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
    what = inherited(uri, parent, run_name) if parent else {}
    tags = {**what, **(kwargs.pop("tags", None) or {}),
            **({"ffr.pipeline_run_id": pipeline_run_id} if pipeline_run_id else {})}
    with mlflow_run(uri, experiment, run_name=run_name, parent_run_id=parent, tags=tags, **kwargs) as tracker:
        tracker.what.update({k: v for k, v in what.items() if k in WHAT})
        yield tracker


def inherited(tracking_uri: str, parent_id: str, run_name: str = "") -> dict[str, str]:
    """The tags a pipeline step's run takes from its pipeline's run: what the run is (pipeline,
    bias rate, seed, objective) and a Source naming the pipeline and the step."""
    import mlflow

    parent = mlflow.MlflowClient(tracking_uri).get_run(parent_id).data
    what = {k: v for k, v in parent.tags.items() if k in WHAT}
    return {**what, **source_tags(what.get("ffr.pipeline"), (run_name.split() or [None])[0])}


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
                   files: dict[str, str] | None = None, metrics: bool = True, table: str | None = None) -> str | None:
    """Put a pipeline's headline on its parent run (found by ``pipeline_run_id``): with
    ``metrics``, per strategy of ``results`` (strategy → :func:`ffr.steps.evaluate_step` metrics)
    ``<strategy>/test/worst_group_acc``, ``balanced_acc``, ``average_acc``, ``train_weighted_acc``
    (each evaluation step logs its own strategy's once; the report step adds none); with several
    strategies the per-group accuracy figure; ``files`` (artifact path → local file, e.g. the
    comparison table);
    ``table`` (Markdown) as the Comparison section of the run's description. Returns the parent
    run's id (None when there is none)."""
    parent = pipeline_run(tracking_uri, experiment, pipeline_run_id)
    if parent is None:
        return None
    tracker = MlflowTracker(parent)
    if metrics:
        tracker.log_metrics({f"{s}/test/{k}": float(m[k]) for s, m in results.items()
                             for k in ("worst_group_acc", "balanced_acc", "average_acc", "train_weighted_acc")
                             if m.get(k) is not None})
    if len(results) > 1:
        tracker._figure(lambda ax: _strategy_bars(ax, results), "figures/group_accuracy_by_strategy.png")
    for artifact_path, local in (files or {}).items():
        tracker.client.log_artifact(parent, local, os.path.dirname(artifact_path) or None)
    if table:
        describe(tracker.client, parent, "Comparison", table)
    return parent


@guarded("logging the pipeline's parameters")
def log_params_to(tracking_uri: str, run_id: str, params: dict[str, Any]) -> None:
    """Log (flattened) ``params`` to the run ``run_id``, e.g. a pipeline's parameters to its parent run."""
    from ffr.tracker import flatten

    configure(tracking_uri)
    MlflowTracker(run_id).log_params(flatten(params))


def open_pipeline_run(tracking_uri: str | None, experiment: str, pipeline_name: str, pipeline_run_id: str,
                      params: dict[str, Any], integer_params=(), artifact_location: str | None = None) -> str:
    """A Kubeflow pipeline's parent run, tagged with the pipeline and its run id (its steps find it
    by that id) and holding the pipeline's parameters; ``integer_params`` names those that are
    integers (a dict parameter carries only doubles: 5 arrives as 5.0 and is logged as 5).
    Returns its id; "" without a tracking server (none given, no ``$MLFLOW_TRACKING_URI``)."""
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri:
        return ""
    what = {f"ffr.{k}": params[k] for k in ("bias_rate", "seed", "objective") if params.get(k) not in (None, "")}
    if "seed" in integer_params and "ffr.seed" in what:
        what["ffr.seed"] = int(float(what["ffr.seed"]))
    run_id = open_run(uri, experiment, f"{pipeline_name} {pipeline_run_id}".strip(),
                      {"ffr.pipeline": pipeline_name, "ffr.pipeline_run_id": pipeline_run_id, **what,
                       **source_tags(pipeline_name)}, artifact_location or None)

    def integer(v):
        try:
            f = float(v)
        except (TypeError, ValueError):
            return v
        return int(f) if f.is_integer() else v

    log_params_to(uri, run_id, {k: (integer(v) if k in set(integer_params) else v) for k, v in params.items()})
    return run_id
