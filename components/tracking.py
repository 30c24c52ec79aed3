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
    """Open the pipeline run's parent MLflow run, tagged with the pipeline run id and holding the
    pipeline's parameters, and return its id: the training and evaluation steps nest their runs
    under it and the register step closes it. ``integer_params`` names the parameters that are
    integers (a dict parameter carries only doubles: 5 arrives as 5.0 and is logged as 5). ``mlflow_uri`` empty: ``$MLFLOW_TRACKING_URI`` (from
    the ``ffr-mlflow`` secret on a cluster); neither set: no tracking, returns ""."""
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
def fetch_data_revision(
    dataset: Output[Dataset],
    repo: str = "",
    path: str = "data",
    rev: str = "",
    endpoint_url: str = "",
):
    """The dataset folder ``path`` (manifest.csv + card.json + images) as it is at git revision
    ``rev`` (a tag, branch or commit; empty: the default branch) of the DVC project ``repo``,
    downloaded from the project's remote (S3: credentials from the ``ffr-s3`` secret;
    ``endpoint_url`` for a non-AWS endpoint, default ``$AWS_ENDPOINT_URL``). Its metadata — repo,
    path, revision, commit, DVC version — becomes the registered model's data lineage. ``repo``
    empty: the built-in demo benchmark (so the run form works as it is)."""
    import os

    if repo:
        from ffr.integrations.dvc import get_revision

        info = get_revision(repo, path, dataset.path, rev or None, endpoint_url or os.environ.get("AWS_ENDPOINT_URL"))
    else:
        from ffr.data.demo import make_demo
        from ffr.integrations.dvc import dir_digest

        make_demo(dataset.path)
        info = {"repo": "demo", "dvc_md5": dir_digest(dataset.path)}
    dataset.metadata.update(info)
