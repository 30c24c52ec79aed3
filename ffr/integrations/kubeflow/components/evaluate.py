"""Component: group metrics of a model on the real test split, for the Kubeflow UI."""

from kfp import dsl
from kfp.dsl import HTML, ClassificationMetrics, Dataset, Input, Metrics, Model, Output

from ffr.integrations.kubeflow.components.image import COMPONENT_OPTIONS


@dsl.component(**COMPONENT_OPTIONS)
def evaluate_model(
    model: Input[Model],
    data: Input[Dataset],
    metrics: Output[Metrics],
    confusion: Output[ClassificationMetrics],
    report: Output[HTML],
    strategy: str = "ffr",
    split: str = "test",
    synthetic: Input[Dataset] = None,
    device: str = "auto",
    mlflow_uri: str = "",
    mlflow_experiment: str = "ffr",
    pipeline_run_id: str = "",
):
    """Group metrics of a model on the real rows of one split, for the Kubeflow UI.

    Worst-group, balanced and average accuracy and each group's accuracy (scalars under stable
    names, e.g. ``test/worst_group_acc``), the confusion matrix, and an HTML report. With a
    tracking server (``mlflow_uri`` or ``$MLFLOW_TRACKING_URI``) the evaluation is also logged in
    a run nested under the pipeline run's: metrics, group table, per-group accuracy figure, test
    dataset.

    Args:
        model: The trained model (``train_model``'s ``model``).
        data: The prepared dataset (``prepare_data``'s ``dataset``); only its real rows count.
        strategy: The balancing strategy that trained ``model`` (``none``, ``usb``, ``asb``,
            ``ffr``): the result's name in reports and metric prefixes.
        split: The split evaluated: ``test`` (default), ``val`` or ``train``.
        synthetic: The synthetic pool whose images the report shows; none: no images.
        device: ``auto`` (a GPU when there is one, else the CPU), ``cpu``, ``cuda`` or
            ``cuda:N``.
        mlflow_uri: MLflow tracking server URI; empty: ``$MLFLOW_TRACKING_URI`` (from the
            ``ffr-mlflow`` secret on a cluster); neither set: nothing is tracked.
        mlflow_experiment: MLflow experiment of the pipeline's run.
        pipeline_run_id: The Kubeflow run id (``dsl.PIPELINE_JOB_ID_PLACEHOLDER``) that finds
            the pipeline's MLflow run; empty: a standalone run.

    Returns:
        metrics: The scalars, and the full result as JSON for later steps.
        confusion: The confusion matrix over the classes.
        report: HTML with the group table and a few ``synthetic`` images per group.
    """
    import os

    from ffr.metrics import flat_metrics
    from ffr.steps import evaluate_strategy

    m = evaluate_strategy(os.path.join(model.path, "model.pt"), data.path, strategy, metrics.path, report.path, split,
                          device, synthetic.path if synthetic is not None else None, dict(model.metadata),
                          {"tracking_uri": mlflow_uri, "pipeline_run_id": pipeline_run_id,
                           "experiment": mlflow_experiment})
    for name, value in flat_metrics(m, split).items():
        metrics.log_metric(name, value)
    confusion.log_confusion_matrix(m["classes"], m["confusion"])
