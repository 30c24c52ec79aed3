"""Components: open the pipeline's parent MLflow run (its steps nest under it) and close it, whatever
happened (the pipeline's exit handler)."""

from typing import List

from kfp import dsl

from ffr.integrations.kubeflow.components.image import COMPONENT_OPTIONS


@dsl.component(**COMPONENT_OPTIONS)
def start_tracking(
    mlflow_uri: str = "",
    experiment: str = "ffr",
    artifact_location: str = "",
    pipeline_name: str = "ffr",
    pipeline_run_id: str = "",
    params: dict = {},
    integer_params: List[str] = [],
) -> str:
    """Open the pipeline run's parent MLflow run.

    The run is tagged with the pipeline run id and holds the pipeline's parameters: the training
    and evaluation steps nest their runs under it and the register step closes it.

    Args:
        mlflow_uri: MLflow tracking server URI; empty: ``$MLFLOW_TRACKING_URI`` (from the
            ``ffr-mlflow`` secret on a cluster); neither set: no tracking.
        experiment: MLflow experiment of the run (created if missing).
        artifact_location: Artifact root of a new experiment (e.g. ``s3://bucket/mlflow``);
            empty: the server's default.
        pipeline_name: The pipeline's name (``ffr``, ``comparison``, ``retrain``), in the run's
            name and tags.
        pipeline_run_id: The Kubeflow run id (``dsl.PIPELINE_JOB_ID_PLACEHOLDER``) the steps
            find the run by.
        params: The pipeline's scalar parameters, logged as the run's parameters.
        integer_params: The names in ``params`` that are integers (a dict parameter carries only
            doubles: 5 arrives as 5.0 and is logged as 5).

    Returns:
        Output: The MLflow run id; "" without a tracking server.
    """
    from ffr.integrations.mlflow_runs import open_pipeline_run

    return open_pipeline_run(mlflow_uri, experiment, pipeline_name, pipeline_run_id, params, integer_params,
                             artifact_location)


@dsl.component(**COMPONENT_OPTIONS)
def finish_tracking(
    status: dsl.PipelineTaskFinalStatus,
    mlflow_uri: str = "",
    experiment: str = "ffr",
    pipeline_run_id: str = "",
) -> str:
    """Close the pipeline run's MLflow runs, whatever happened (the pipeline's exit handler).

    The parent run ends FINISHED when every step succeeded; otherwise FAILED, tagged
    ``ffr.failure`` with the failing step and its error, and any step run a killed pod left open
    FAILED too. Without tracking it does nothing.

    Args:
        status: The pipeline's final status (filled in by Kubeflow: state, failing task, error).
        mlflow_uri: Tracking server URI; empty: ``$MLFLOW_TRACKING_URI`` (the ``ffr-mlflow``
            secret on a cluster); neither set: nothing to close.
        experiment: The MLflow experiment holding the pipeline's runs.
        pipeline_run_id: The Kubeflow run id the pipeline's runs are tagged with.

    Returns:
        Output: The final state of the pipeline as Kubeflow reported it (e.g. ``SUCCEEDED``, ``FAILED``).
    """
    import os

    uri = mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    state = str(getattr(status, "state", "") or "")
    if uri:
        from ffr.integrations.mlflow_runs import finish_pipeline_run

        task, error = getattr(status, "pipeline_task_name", ""), getattr(status, "error_message", "")
        finish_pipeline_run(uri, experiment, pipeline_run_id, succeeded=state.upper() == "SUCCEEDED",
                            reason=f"{task}: {error}".strip(": ") or state)
    return state
