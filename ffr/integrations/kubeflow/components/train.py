"""Component: stages of one strategy, trained with the requests of the run plan."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from ffr.integrations.kubeflow.components.image import COMPONENT_OPTIONS


@dsl.component(**COMPONENT_OPTIONS)
def train_model(
    training_sets: Input[Dataset],
    val_data: Input[Dataset],
    run_plan: dict,
    model: Output[Model],
    strategy: str = "ffr",
    stage: str = "",
    init_model: Input[Model] = None,
    mlflow_uri: str = "",
    mlflow_experiment: str = "ffr",
    pipeline_run_id: str = "",
):
    """Train stages of a strategy: one (FFR's pretraining, its fine-tuning) or all of them in order
    (a baseline).

    Each stage is trained with its request in the run plan (the check step's: settings, model,
    objective, seed, device, processes) and keeps the epoch with the best worst-group accuracy on
    the real validation split of ``val_data``. With a tracking server (``mlflow_uri`` or
    ``$MLFLOW_TRACKING_URI``) each stage logs a run nested under the pipeline run's: parameters,
    datasets, per-epoch metrics, system metrics, the model.

    Args:
        training_sets: ``balance_data``'s output: one folder per stage of ``strategy``.
        val_data: The prepared dataset (``prepare_data``'s ``dataset``) whose real ``val`` rows
            select the checkpoint.
        run_plan: The check step's run plan (``check_config``'s ``plan``).
        strategy: The strategy whose stages are trained (``none``, ``usb``, ``asb``, ``ffr``, or
            any registered strategy).
        stage: The stage to train (``pretrain`` or ``finetune`` for FFR); empty: every stage of
            ``strategy`` in its plan's order.
        init_model: The model the stage starts from when it is planned to start from a stage
            trained in an earlier step (FFR's step 2 from step 1).
        mlflow_uri: MLflow tracking server URI; empty: ``$MLFLOW_TRACKING_URI`` (from the
            ``ffr-mlflow`` secret on a cluster); neither set: nothing is tracked.
        mlflow_experiment: MLflow experiment of the pipeline's run.
        pipeline_run_id: The Kubeflow run id (``dsl.PIPELINE_JOB_ID_PLACEHOLDER``) that finds
            the pipeline's MLflow run; empty: a standalone run.

    Returns:
        model: ``model.pt`` (the last stage's selected weights; an earlier stage's in
            ``<stage>/model.pt``); its metadata holds the strategy, stage, backbone, objective,
            best epoch, steps, why it stopped and the validation accuracies.
    """
    import os

    from ffr.integrations.dvc import dir_digest
    from ffr.steps import train_planned

    init = os.path.join(init_model.path, "model.pt") if init_model is not None else None
    tracking = {"tracking_uri": mlflow_uri, "pipeline_run_id": pipeline_run_id, "experiment": mlflow_experiment}
    meta = train_planned(run_plan, strategy, [stage] if stage else None, training_sets.path, val_data.path,
                         model.path, init, tracking)
    model.metadata.update({**meta, "train_dvc_md5": dir_digest(os.path.join(training_sets.path, meta["stage"]))})
