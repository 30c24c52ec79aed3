"""Component: the pipeline's first step — the run form checked and turned into the run plan."""

from typing import List, NamedTuple

from kfp import dsl

from ffr.integrations.kubeflow.components.image import COMPONENT_OPTIONS


@dsl.component(**COMPONENT_OPTIONS)
def check_config(
    objective: str = "erm",
    backbone: str = "small_cnn",
    weights: str = "",
    image_size: int = 32,
    batch_size: int = 128,
    seed: int = 0,
    device: str = "auto",
    train_processes: int = 1,
    pretrain_epochs: int = 40,
    pretrain_lr: float = 1e-4,
    finetune_epochs: int = 40,
    finetune_lr: float = 1e-3,
    train_epochs: int = 40,
    baselines: List[dict] = [],
    min_steps: int = 1000,
    max_steps: int = 0,
    patience: int = 10,
    finetune_options: dict = {},
    objective_options: dict = {},
    bias_rate: float = 0.95,
    min_val_per_group: int = 10,
    source: str = "demo",
    source_adapter: str = "csv",
    source_options: dict = {},
    data_repo: str = "",
    demo_name: str = "digits",
    demo_per_digit: int = 0,
    synthesis_backend: str = "procedural",
    synthesis_seed: int = 0,
    synthesis_batch_size: int = 8,
    synthesis_filters: List[str] = [],
    num_shards: int = 2,
    gate_margin: float = 0.005,
    gate_tolerance: float = 0.02,
    gate_floor: float = 0.5,
) -> NamedTuple("Outputs", [("plan", dict), ("synthesis_for", List[str]), ("fingerprint", str)]):
    """Check the run form, plan the run, fingerprint the dataset.

    Runs first, in seconds: a misspelt objective, backbone, option or strategy, or a value out of
    range, fails here, before synthesis and training, with every problem listed and named by its
    run-form field (the same words ``ffr compile --param`` refuses it with). The step is never
    retried (a config error stays one) nor cached (the fingerprint must be read afresh).

    Args:
        objective: The training objective (erm, resample, groupdro, dfr).
        backbone: The classifier architecture.
        weights: Pretrained backbone weights file; empty: random init.
        image_size: Side of the square images the models see, in pixels.
        batch_size: Training batch size.
        seed: Seed of the bias-rate split and of every training step.
        device: auto, cpu, cuda, cuda:N or mps.
        train_processes: Processes per training step (data-parallel).
        pretrain_epochs: FFR step 1's epochs.
        pretrain_lr: FFR step 1's learning rate.
        finetune_epochs: FFR step 2's epochs.
        finetune_lr: FFR step 2's learning rate.
        train_epochs: The baselines' epochs.
        baselines: The comparison's baselines, ``[{"strategy": NAME, "lr": X, "weight_decay": Y}]``
            (weight_decay optional); none: FFR alone.
        min_steps: Every training step's floor in optimizer steps (0: off).
        max_steps: Every training step's cap in optimizer steps (0: none).
        patience: Epochs without a better validation WGA before a training step stops (0: never).
        finetune_options: FFR step 2's extra training settings.
        objective_options: The objective's options, e.g. ``{"eta": 0.01}`` for GroupDRO.
        bias_rate: Fraction of each class's training images with its majority bias.
        min_val_per_group: Real validation images kept per minority group at least.
        source: ``demo`` or the dataset's folder / ``s3://`` prefix.
        source_adapter: The adapter reading ``source``.
        source_options: The adapter's options.
        data_repo: The retraining pipeline's DVC project; empty: the built-in benchmark.
        demo_name: The built-in benchmark (digits, faces, galaxies) when the data is the demo.
        demo_per_digit: ``demo`` and digits only: images of each digit kept; 0 keeps them all.
        synthesis_backend: The synthesis backend (procedural, diffusers, folder).
        synthesis_seed: Base seed of the synthetic images.
        synthesis_batch_size: Images a synthesis step renders at once.
        synthesis_filters: Filters applied to synthetic images.
        num_shards: Shards per group of the synthesis fan-out.
        gate_margin: The promotion gate's required gain in worst-group accuracy.
        gate_tolerance: The promotion gate's largest allowed drop of any group.
        gate_floor: The promotion gate's floor every champion must reach.

    Returns:
        plan: The run plan: every strategy's stages as requests (settings, model, objective,
            seed, device, processes), which the training steps take whole.
        synthesis_for: The run's strategies that need synthetic images (the data step plans the
            synthesis for them).
        fingerprint: The dataset's content fingerprint (DVC md5 of a folder, the keys and ETags of
            an ``s3://`` prefix, ``demo``): the data steps take it as an input, so their cache
            keys on the data, not only on the ``source`` string.
    """
    from ffr.runform import check_step

    return check_step(dict(locals()))


@dsl.component(**COMPONENT_OPTIONS)
def plan_baselines(plan: dict) -> List[dict]:
    """The run plan of each baseline, for the comparison's fan-out over the baselines.

    Args:
        plan: The check step's run plan (``check_config``'s ``plan``).

    Returns:
        Output: One run plan per baseline, in the run form's order: its strategy and the requests
            of its stages.
    """
    from ffr.runform import baseline_plans

    return baseline_plans(plan)
