"""Component: the comparison report of several strategies' evaluations."""

from typing import List

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Metrics, Output

from components.image import COMPONENT_OPTIONS


@dsl.component(**COMPONENT_OPTIONS)
def comparison_report(
    baselines: Input[List[Metrics]],
    ffr: Input[Metrics],
    report: Output[HTML],
    summary: Output[Metrics],
    synthetic: Input[Dataset] = None,
    mlflow_uri: str = "",
    mlflow_experiment: str = "ffr",
    pipeline_run_id: str = "",
):
    """The baselines' and FFR's test metrics side by side, in one report.

    With a tracking server (``mlflow_uri`` or ``$MLFLOW_TRACKING_URI``) the pipeline's own MLflow
    run gets the comparison table (Markdown and HTML) and the per-group figure of every strategy.

    Args:
        baselines: The baselines' ``evaluate_model`` metrics files (one per baseline).
        ffr: FFR's ``evaluate_model`` metrics file.
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

    from ffr.data.manifest import Manifest
    from ffr.results.tables import STRATEGY_ORDER
    from ffr.results.views import evaluation_report_html, ffr_gain

    found = [json.load(open(a.path)) for a in [*baselines, ffr]]
    rank = {s: i for i, s in enumerate(STRATEGY_ORDER)}
    results = {m["strategy"]: m for m in sorted(found, key=lambda m: (rank.get(m["strategy"], 99), m["strategy"]))}
    gain = ffr_gain(results)
    for name, m in results.items():
        if m["worst_group_acc"] is not None:
            summary.log_metric(f"{name}/test/worst_group_acc", m["worst_group_acc"])
    if gain:
        summary.log_metric("ffr_gain_wga", gain["ffr_gain_wga"])
    with open(summary.path, "w") as f:
        json.dump({"results": results, "ffr_gain": gain}, f, indent=2)
    pool = Manifest.load(synthetic.path, check_files=False) if synthetic is not None else None
    html = evaluation_report_html(results, "Strategies compared: test split", pool)
    with open(report.path, "w") as f:
        f.write(html)
    uri = mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    if uri and pipeline_run_id:
        import tempfile

        from ffr.integrations.mlflow_tracking import log_summary_to
        from ffr.results.views import format_group_table

        with tempfile.TemporaryDirectory() as tmp:
            md, page = os.path.join(tmp, "comparison.md"), os.path.join(tmp, "comparison.html")
            with open(md, "w") as f:
                f.write("# Strategies compared: test split\n\n```\n" + format_group_table(results) + "\n```\n"
                        + (f"\nFFR's gain in worst-group accuracy over the best baseline: "
                           f"{gain['ffr_gain_wga']:+.3f}\n" if gain else ""))
            with open(page, "w") as f:
                f.write(html)
            log_summary_to(uri, mlflow_experiment, pipeline_run_id, results,
                           {"comparison/comparison.md": md, "comparison/comparison.html": page})
