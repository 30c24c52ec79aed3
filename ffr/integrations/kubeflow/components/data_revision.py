"""Component: a dataset at a DVC revision (the retraining pipeline's input)."""

from kfp import dsl
from kfp.dsl import Dataset, Output

from ffr.integrations.kubeflow.components.image import COMPONENT_OPTIONS


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
