"""Component: register the trained model in the MLflow model registry and run the promotion gate."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Model, Output

from ffr.integrations.kubeflow.components.image import COMPONENT_OPTIONS


@dsl.component(**COMPONENT_OPTIONS)
def register_model(
    model: Input[Model],
    metrics: Input[Metrics],
    data: Input[Dataset],
    decision: Output[Metrics],
    registered_model_name: str = "ffr",
    mlflow_uri: str = "",
    mlflow_experiment: str = "ffr",
    pipeline_run_id: str = "",
    gate_margin: float = 0.005,
    gate_tolerance: float = 0.02,
    gate_floor: float = 0.5,
    source_data: Input[Dataset] = None,
) -> str:
    """Register the model in the MLflow model registry as the challenger; promote it if it wins.

    Logs ``model`` to MLflow (with its test evaluation and test data), registers it as a version
    of ``registered_model_name`` with alias ``challenger``, and moves ``champion`` to it only if
    it beats the champion on the same test data. The decision, both models' numbers and the
    lineage (pipeline run id, git commit, data digests, the data revision of ``source_data``)
    become version tags. Without a tracking server (``mlflow_uri`` empty and no
    ``$MLFLOW_TRACKING_URI``) nothing is registered.

    Args:
        model: The model to register (``train_model``'s ``model``; FFR's step 2).
        metrics: Its test evaluation (``evaluate_model``'s ``metrics``).
        data: The prepared dataset whose test split both models are compared on.
        registered_model_name: Registered model name in the MLflow model registry.
        mlflow_uri: MLflow tracking server (and model registry) URI; empty:
            ``$MLFLOW_TRACKING_URI`` (from the ``ffr-mlflow`` secret on a cluster); neither set:
            nothing is registered.
        mlflow_experiment: MLflow experiment of the pipeline's run.
        pipeline_run_id: The Kubeflow run id (``dsl.PIPELINE_JOB_ID_PLACEHOLDER``) that finds
            the pipeline's MLflow run; empty: a standalone run.
        gate_margin: Worst-group accuracy (a fraction, 0-1) the challenger must gain over the
            champion to be promoted, e.g. 0.005 = half a point.
        gate_tolerance: Largest drop of any group's accuracy (a fraction) a promoted challenger
            may have against the champion.
        gate_floor: Worst-group accuracy (a fraction) every champion must reach, the first one
            included.
        source_data: The fetched data revision (``fetch_data_revision``'s ``dataset``), whose
            metadata becomes the version's data lineage; none: no data revision recorded.

    Returns:
        Output: The decision in one line.
        decision: The decision as JSON (registered, version, promoted, reasons); scalar
            ``promoted`` 1 or 0.
    """
    import json
    import os

    from ffr.integrations.dvc import dir_digest
    from ffr.integrations.model_registry import register_pipeline_model
    from ffr.promotion import GatePolicy

    lineage = {"pipeline_run_id": pipeline_run_id, "data.test.dvc_md5": dir_digest(data.path),
               "data.test.uri": data.uri, "model.uri": model.uri,
               "train_digest": str(model.metadata.get("train_digest", "")),
               **{f"data.source.{k}": str(v) for k, v in (source_data.metadata if source_data else {}).items()}}
    with open(metrics.path) as f:
        result = register_pipeline_model(mlflow_uri, registered_model_name, os.path.join(model.path, "model.pt"),
                                         json.load(f), data.path, lineage,
                                         GatePolicy(gate_margin, gate_tolerance, gate_floor),
                                         str(model.metadata.get("mlflow_model_uri") or ""), mlflow_experiment,
                                         pipeline_run_id)
    with open(decision.path, "w") as f:
        json.dump(result, f, indent=2)
    decision.metadata.update({k: v for k, v in result.items() if k != "reasons"})
    if result["registered"]:
        decision.log_metric("promoted", float(result["promoted"]))
    return result["summary"]
