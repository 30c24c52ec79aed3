"""Component: the pipeline's first step, a light check of the run form before any data step."""

from typing import List

from kfp import dsl

from components.image import COMPONENT_OPTIONS


@dsl.component(**COMPONENT_OPTIONS)
def check_config(
    objective: str,
    backbone: str,
    pretrain_epochs: int,
    pretrain_lr: float,
    finetune_epochs: int,
    finetune_lr: float,
    min_steps: int,
    max_steps: int,
    patience: int,
    finetune_options: dict,
    objective_options: dict,
    synthesis_backend: str,
    synthesis_filters: List[str],
    source: str,
    source_adapter: str,
    source_options: dict,
    bias_rate: float,
    num_shards: int,
    device: str,
    image_size: int,
    batch_size: int,
    baselines: List[dict] = [],
    train_epochs: int = 40,
    demo_name: str = "digits",
    demo_per_digit: int = 0,
) -> str:
    """Check the run form's values, then fingerprint the dataset's content.

    Runs first, in seconds: a misspelt objective, backbone, option or strategy fails here, before
    synthesis and training (the step is never retried: a config error stays one; nor cached: the
    fingerprint must be read afresh). Every problem is listed at once.

    Args:
        objective: The training objective (erm, resample, groupdro, dfr).
        backbone: The classifier architecture.
        pretrain_epochs: FFR step 1's epochs.
        pretrain_lr: FFR step 1's learning rate.
        finetune_epochs: FFR step 2's epochs.
        finetune_lr: FFR step 2's learning rate.
        min_steps: Every training step's floor in optimizer steps (0: off).
        max_steps: Every training step's cap in optimizer steps (0: none).
        patience: Epochs without a better validation WGA before a training step stops (0: never).
        finetune_options: FFR step 2's extra training settings.
        objective_options: The objective's options, e.g. ``{"eta": 0.01}`` for GroupDRO.
        synthesis_backend: The synthesis backend (procedural, diffusers, folder).
        synthesis_filters: Filters applied to synthetic images.
        source: ``demo`` or the dataset's folder / ``s3://`` prefix.
        source_adapter: The adapter reading ``source``.
        source_options: The adapter's options.
        bias_rate: Fraction of each class's training images with its majority bias.
        num_shards: Shards per group of the synthesis fan-out.
        device: auto, cpu, cuda, cuda:N or mps.
        image_size: Side of the square images the models see, in pixels.
        batch_size: Training batch size.
        baselines: The comparison's baselines, ``[{"strategy": NAME, "lr": X}]``.
        train_epochs: The baselines' epochs.
        demo_name: ``demo`` only: the built-in benchmark (digits, faces, galaxies).
        demo_per_digit: ``demo`` and digits only: images of each digit kept; 0 keeps them all.

    Returns:
        Output: The dataset's content fingerprint (DVC md5 of a folder, the keys and ETags of
            an ``s3://`` prefix, ``demo``): the data steps take it as an input, so their cache
            keys on the data, not only on the ``source`` string.
    """
    from ffr.checks import pipeline_problems, source_fingerprint
    from ffr.config import ConfigError

    budget = {"min_steps": min_steps, "max_steps": max_steps, "patience": patience}
    stages = {"pretrain": {"epochs": pretrain_epochs, "lr": pretrain_lr, **budget},
              "finetune": {"epochs": finetune_epochs, "lr": finetune_lr, **budget}}
    for b in baselines:
        if isinstance(b, dict) and isinstance(b.get("lr", 1e-3), (int, float)) and b.get("lr", 1e-3) > 0:
            stages[f"train {b.get('strategy')}"] = {"epochs": train_epochs, "lr": float(b.get("lr", 1e-3)), **budget}
    problems = pipeline_problems(objective=objective, backbone=backbone, stages=stages,
                                 finetune_options=finetune_options, objective_options=objective_options,
                                 baselines=baselines, synthesis_backend=synthesis_backend,
                                 synthesis_filters=synthesis_filters, source=source, source_adapter=source_adapter,
                                 source_options=source_options, bias_rate=bias_rate, num_shards=num_shards,
                                 device=device, image_size=image_size, batch_size=batch_size,
                                 demo_name=demo_name, demo_per_digit=demo_per_digit)
    if problems:
        raise ConfigError("invalid run configuration:\n  - " + "\n  - ".join(problems))
    return source_fingerprint(source)
