"""Components: open the pipeline's MLflow run (its steps nest under it), and fetch a dataset at a
DVC revision (the retraining pipeline's input)."""

from typing import List

from kfp import dsl
from kfp.dsl import Dataset, Output

from components.image import COMPONENT_OPTIONS


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
    import os

    uri = mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri:
        return ""
    from ffr.integrations.mlflow_tracking import log_params_to, open_run

    run_id = open_run(uri, experiment, f"{pipeline_name} {pipeline_run_id}".strip(),
                      {"ffr.pipeline": pipeline_name, "ffr.pipeline_run_id": pipeline_run_id},
                      artifact_location or None)
    def integer(v):
        try:
            f = float(v)
        except (TypeError, ValueError):
            return v
        return int(f) if f.is_integer() else v

    typed = {k: (integer(v) if k in set(integer_params) else v) for k, v in params.items()}
    log_params_to(uri, run_id, typed)
    return run_id


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
        from ffr.integrations.mlflow_tracking import finish_pipeline_run

        task, error = getattr(status, "pipeline_task_name", ""), getattr(status, "error_message", "")
        finish_pipeline_run(uri, experiment, pipeline_run_id, succeeded=state.upper() == "SUCCEEDED",
                            reason=f"{task}: {error}".strip(": ") or state)
    return state


@dsl.component(**COMPONENT_OPTIONS)
def fetch_data_revision(
    dataset: Output[Dataset],
    repo: str = "",
    path: str = "data",
    rev: str = "",
    endpoint_url: str = "",
    demo_name: str = "digits",
):
    """A dataset folder as it is at one git revision of a DVC project.

    Downloaded from the project's remote (S3: credentials from the ``ffr-s3`` secret). Its
    metadata — repo, path, revision, commit, DVC version — becomes the registered model's data
    lineage.

    Args:
        repo: The DVC project's git URL (or a local path); empty: the built-in benchmark
            ``demo_name`` (so the run form works as it is).
        path: The dataset folder inside the project.
        rev: A tag, branch or commit of ``repo``; empty: its default branch.
        endpoint_url: S3 endpoint of a non-AWS remote (MinIO, Ceph); empty:
            ``$AWS_ENDPOINT_URL``, else AWS.
        demo_name: ``repo`` empty only: the built-in benchmark built (``digits``, ``faces``,
            ``galaxies``; docs/datasets.md).

    Returns:
        dataset: The dataset folder (manifest.csv + card.json + images).
    """
    import os

    if repo:
        from ffr.integrations.dvc import get_revision

        info = get_revision(repo, path, dataset.path, rev or None, endpoint_url or os.environ.get("AWS_ENDPOINT_URL"))
    else:
        from ffr.data.builtin import make_builtin, run_form_options
        from ffr.integrations.dvc import dir_digest

        make_builtin(dataset.path, run_form_options(demo_name))
        info = {"repo": "demo", "demo_name": demo_name, "dvc_md5": dir_digest(dataset.path)}
    dataset.metadata.update(info)
