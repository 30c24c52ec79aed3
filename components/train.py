"""Component: one call of the training loop (FFR's pretraining, its fine-tuning, or a baseline)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components.image import COMPONENT_OPTIONS


@dsl.component(**COMPONENT_OPTIONS)
def train_model(
    training_sets: Input[Dataset],
    val_data: Input[Dataset],
    model: Output[Model],
    stage: str = "train",
    init_model: Input[Model] = None,
    backbone: str = "small_cnn",
    weights: str = "",
    objective: str = "erm",
    epochs: int = 40,
    min_steps: int = 1000,
    max_steps: int = 0,
    patience: int = 10,
    lr: float = 1e-3,
    batch_size: int = 128,
    weight_decay: float = 1e-5,
    image_size: int = 32,
    seed: int = 0,
    device: str = "auto",
    options: dict = {},
    objective_options: dict = {},
    processes: int = 1,
    mlflow_uri: str = "",
    mlflow_experiment: str = "ffr",
    pipeline_run_id: str = "",
):
    """One call of the training loop: FFR's pretraining, its fine-tuning, or a baseline.

    Keeps the epoch with the best worst-group accuracy on the real validation split of
    ``val_data``. With a tracking server (``mlflow_uri`` or ``$MLFLOW_TRACKING_URI``) the step
    logs a run nested under the pipeline run's: parameters, datasets, per-epoch metrics, system
    metrics, the model.

    Args:
        training_sets: ``balance_data``'s output; the ``stage`` folder is trained on.
        val_data: The prepared dataset (``prepare_data``'s ``dataset``) whose real ``val`` rows
            select the checkpoint.
        stage: The folder of ``training_sets`` to train on: ``train`` (none, usb, asb),
            ``pretrain`` (FFR step 1, synthetic) or ``finetune`` (FFR step 2, real).
        init_model: Weights to start from (FFR's step 2 starts from step 1); none: ``weights``.
        backbone: ``small_cnn``, ``tiny_cnn``, ``resnet18``, ``resnet18_small``, ``resnet50``,
            ``resnet50_small`` (``_small``: a stem for 32-64 px images).
        weights: Pretrained backbone weights, a torchvision-format state dict file every pod can
            read; empty: random init.
        objective: ``erm``, ``resample`` (group-balanced sampling), ``groupdro`` (online
            GroupDRO) or ``dfr`` (ERM, then the last layer refit on the real validation split).
        epochs: Training epochs (raised by ``min_steps``, lowered by ``max_steps``).
        min_steps: At least this many optimizer steps (more epochs on a small dataset); 0: off.
        max_steps: At most this many optimizer steps; 0: no cap.
        patience: Stop after this many epochs without a better validation worst-group accuracy
            (never before ``min_steps``); 0: no early stopping.
        lr: Learning rate.
        batch_size: Images per batch (over all processes).
        weight_decay: Weight decay of the optimizer.
        image_size: Images are resized to this many pixels square.
        seed: Seed of the model's initialisation and the data order.
        device: ``auto`` (a GPU when there is one, else the CPU), ``cpu``, ``cuda`` or
            ``cuda:N``.
        options: Any other training setting (a ``TrainConfig`` field), e.g. FFR step-2 variants
            ``{"freeze_stages": 2}``, ``{"l2sp": 0.1}``, ``{"lpft_epochs": 5}``,
            ``{"backbone_lr_mult": 0.1}``, ``{"select_init": true}``; not ``epochs``, ``lr``,
            ``batch_size`` or ``weight_decay``, which are parameters of their own.
        objective_options: The objective's options, e.g. ``{"eta": 0.01}`` for GroupDRO,
            ``{"n_refits": 20}`` for DFR.
        processes: More than 1: data-parallel in that many processes of this pod (``torchrun``;
            one per GPU the step was given), the checkpoint and the MLflow run from rank 0.
        mlflow_uri: MLflow tracking server URI; empty: ``$MLFLOW_TRACKING_URI`` (from the
            ``ffr-mlflow`` secret on a cluster); neither set: nothing is tracked.
        mlflow_experiment: MLflow experiment of the pipeline's run.
        pipeline_run_id: The Kubeflow run id (``dsl.PIPELINE_JOB_ID_PLACEHOLDER``) that finds
            the pipeline's MLflow run; empty: a standalone run.

    Returns:
        model: ``model.pt`` (the selected epoch's weights); its metadata holds the stage,
            backbone, objective, best epoch and validation accuracies.
    """
    import os

    from ffr.config import ConfigError, TrainConfig, from_dict
    from ffr.integrations.dvc import dir_digest
    from ffr.integrations.mlflow_tracking import optional_run
    from ffr.stages import train_stage

    explicit = {"epochs": epochs, "min_steps": min_steps, "max_steps": max_steps, "patience": patience, "lr": lr,
                "batch_size": batch_size, "weight_decay": weight_decay}
    clash = sorted(set(options) & set(explicit))
    if clash:
        raise ConfigError(f"train step {stage!r}: options {clash} are parameters of their own; set them there")
    cfg = from_dict(TrainConfig, {**explicit, **options}, f"train step {stage!r} options")
    init = os.path.join(init_model.path, "model.pt") if init_model is not None else None
    strategy = training_sets.metadata.get("strategy")
    name = f"{stage} {strategy}" if strategy and stage == "train" else stage
    args = dict(train_dir=os.path.join(training_sets.path, stage), val_dir=val_data.path,
                out_path=os.path.join(model.path, "model.pt"), cfg=cfg, backbone=backbone, objective=objective,
                objective_options=dict(objective_options) or None, init=init, weights=weights or None,
                image_size=image_size, seed=seed, device=device, stage=stage)
    tracking = dict(tracking_uri=mlflow_uri, run_name=name, pipeline_run_id=pipeline_run_id,
                    experiment=mlflow_experiment)
    if processes > 1:  # rank 0 of torchrun's processes opens the run
        s = train_stage(processes=processes, tracking=tracking, **args)
    else:
        # System metrics (CPU, memory, GPU) are sampled where the work is: in the training steps.
        with optional_run(system_metrics=True, **tracking) as tracker:
            s = train_stage(tracker=tracker, **args)
    if s.get("mlflow_model_uri"):
        # the register step registers this logged model (from this step's run, rank 0's under
        # torchrun): one model per training run, whose source run holds the training parameters
        model.metadata["mlflow_model_uri"] = s["mlflow_model_uri"]
    model.metadata.update({"framework": "pytorch", "stage": stage, "backbone": backbone, "objective": objective,
                           "best_epoch": s["best_epoch"], "steps": s["meta"].get("steps", 0),
                           "stop_reason": s["meta"].get("stop_reason", ""), "processes": processes, "train_digest": s["meta"]["train_digest"],
                           "train_dvc_md5": dir_digest(os.path.join(training_sets.path, stage)),
                           **{f"val_{k}": v for k, v in s["val"].items() if k.endswith("_acc")}})
