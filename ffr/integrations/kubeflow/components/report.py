"""Component: the comparison report of several strategies' evaluations."""

from typing import List

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Metrics, Output

from ffr.integrations.kubeflow.components.image import COMPONENT_OPTIONS


@dsl.component(**COMPONENT_OPTIONS)
def comparison_report(
    baselines: Input[List[Metrics]],
    product: Input[Metrics],
    report: Output[HTML],
    summary: Output[Metrics],
    synthetic: Input[Dataset] = None,
    mlflow_uri: str = "",
    mlflow_experiment: str = "ffr",
    pipeline_run_id: str = "",
):
    """The baselines' and FFR's test metrics side by side, in one report (what ``ffr report``
    writes from evaluation files).

    With a tracking server (``mlflow_uri`` or ``$MLFLOW_TRACKING_URI``) the pipeline's own MLflow
    run gets the comparison table (Markdown and HTML) and the per-group figure of every strategy.

    Args:
        baselines: The baselines' ``evaluate_model`` metrics files (one per baseline).
        product: The pipeline's own strategy's (FFR's) ``evaluate_model`` metrics file.
        synthetic: The synthetic pool whose images the report shows; none: no images.
        mlflow_uri: MLflow tracking server URI; empty: ``$MLFLOW_TRACKING_URI`` (from the
            ``ffr-mlflow`` secret on a cluster); neither set: nothing is tracked.
        mlflow_experiment: MLflow experiment of the pipeline's run.
        pipeline_run_id: The Kubeflow run id (``dsl.PIPELINE_JOB_ID_PLACEHOLDER``) that finds
            the pipeline's MLflow run; empty: nothing is logged.

    Returns:
        report: HTML with every strategy's group table and a few synthetic images per
            group.
        summary: Each strategy's worst-group accuracy and FFR's gain over the best
            baseline (``ffr_gain_wga``) as scalars, and every result as JSON.
    """
    import json
    import os
    import shutil
    import tempfile

    from ffr.data.manifest import Manifest
    from ffr.results.views import write_comparison

    evaluations = [json.load(open(a.path)) for a in [*baselines, product]]
    pool = Manifest.load(synthetic.path, check_files=False) if synthetic is not None else None
    with tempfile.TemporaryDirectory() as tmp:
        md, page = os.path.join(tmp, "comparison.md"), os.path.join(tmp, "comparison.html")
        s = write_comparison(evaluations, summary.path, page, md, pool)
        shutil.copyfile(page, report.path)
        for name, m in s["results"].items():
            if m["worst_group_acc"] is not None:
                summary.log_metric(f"{name}/test/worst_group_acc", m["worst_group_acc"])
        if s["ffr_gain"]:
            summary.log_metric("ffr_gain_wga", s["ffr_gain"]["ffr_gain_wga"])
        uri = mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
        if uri and pipeline_run_id:
            from ffr.integrations.mlflow_runs import log_summary_to

            log_summary_to(uri, mlflow_experiment, pipeline_run_id, s["results"],
                           {"comparison/comparison.md": md, "comparison/comparison.html": page},
                           metrics=False, table=open(md).read())
