"""The pipeline's stages as plain functions over directories: the one implementation behind the
CLI stage commands, the DVC stages and the Kubeflow components.

Every stage reads explicit inputs (dataset directories, checkpoints) and writes one output
directory or file; none finds another stage's output by scanning folders.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ffr.balance import balance, pool_requirement
from ffr.config import (BACKBONE, IMAGE_SIZE, MAX_ATTEMPTS, OBJECTIVE, SYNTHESIS_BACKEND, SYNTHESIS_BATCH_SIZE,
                        TrainConfig)
from ffr.data.manifest import DatasetCard, Manifest, group_key
from ffr.data.sources import prepare  # noqa: F401  (the prepare stage, re-exported beside the others)
from ffr.paths import inside, write_json
from ffr.tracking import NullTracker, Tracker



def synthetic_need(real_dir: str | os.PathLike, strategies=("usb", "asb", "ffr")) -> dict[tuple[str, str], int]:
    """Synthetic images per group that serve ``strategies`` on the prepared dataset ``real_dir``."""
    real = Manifest.load(real_dir, check_files=False)
    return pool_requirement(list(strategies), [real.select(split="train", source="real").group_counts()])


def manifest_summary(manifest: Manifest) -> dict:
    """What a pipeline UI shows about a dataset: rows, synthetic rows, content digest, and the
    images per group in each split present."""
    splits = [s for s in ("train", "val", "test") if (manifest.frame["split"] == s).any()]
    return {"rows": len(manifest), "synthetic": int(manifest.is_synthetic().sum()), "digest": manifest.digest(),
            "groups": {s: {group_key(*g): n for g, n in manifest.select(split=s).group_counts().items()}
                       for s in splits}}


def synthesis_work(real_dir: str | os.PathLike, strategies=("usb", "asb", "ffr"), num_shards: int = 1) -> list[dict]:
    """The synthesis fan-out of a prepared dataset: one item per (group, shard) that has images to
    render — ``{"label", "bias", "count", "shard", "num_shards"}``, ``count`` being the group's
    whole need (:func:`synthetic_need`), split over at most ``num_shards`` shards (never more
    shards than images)."""
    if int(num_shards) < 1:
        raise ValueError(f"num_shards must be at least 1, got {num_shards}")
    work = []
    for (label, bias), n in synthetic_need(real_dir, strategies).items():
        k = min(int(num_shards), n)
        work += [{"label": label, "bias": bias, "count": n, "shard": i, "num_shards": k} for i in range(k)]
    return work


def synthesize_stage(card_path: str | os.PathLike, work: dict, out_dir: str | os.PathLike,
                     backend: str = SYNTHESIS_BACKEND, seed: int = 0, batch_size: int = SYNTHESIS_BATCH_SIZE,
                     options: dict | None = None, filters=(), max_attempts: int = MAX_ATTEMPTS) -> Manifest:
    """Render one work item of :func:`synthesis_work` into ``out_dir`` (images, manifest and the
    run's record, see :func:`ffr.synthesis.records.synthesize_dataset`). Numbers in ``work`` may
    arrive as floats (pipeline runners serialise them so)."""
    from ffr.synthesis.records import synthesize_dataset

    counts = {(str(work["label"]), str(work["bias"])): int(work["count"])}
    run, _ = synthesize_dataset(backend, DatasetCard.load(card_path), counts, out_dir, options, base_seed=seed,
                                shard=int(work.get("shard", 0)), num_shards=int(work.get("num_shards", 1)),
                                batch_size=batch_size, filters=list(filters), max_attempts=max_attempts,
                                record_dir=out_dir)
    return run.manifest


def collect_stage(shard_dirs: list, card_path: str | os.PathLike, out_dir: str | os.PathLike) -> Manifest:
    """One synthetic pool in ``out_dir`` from the shard runs ``shard_dirs`` (checked and merged by
    :func:`ffr.synthesis.records.collect`); an empty pool of ``card_path``'s card when there are none."""
    from ffr.synthesis.records import collect

    if shard_dirs:
        return collect(list(shard_dirs), out_dir)
    pool = Manifest.from_records([], DatasetCard.load(card_path), out_dir)
    pool.save(out_dir)
    return pool


def materialize(manifest: Manifest, out_dir: str | os.PathLike) -> Manifest:
    """The rows of ``manifest`` with their images hard-linked (copied across file systems) into
    ``out_dir`` at their relative paths, so that ``out_dir`` travels alone (a pipeline artifact
    uploaded to object storage). Returns the manifest rooted at ``out_dir``; it is not saved."""
    out = Path(out_dir).resolve()
    if out != manifest.root:
        for rel, src in zip(manifest.frame["path"], manifest.abs_paths()):
            dst = inside(out, rel)
            if dst.exists():
                continue
            dst.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)
    return Manifest(manifest.frame, manifest.card, out)


def balance_stage(strategy: str, real_dir: str | os.PathLike, synthetic_dir: str | os.PathLike | None,
                  out_dir: str | os.PathLike, self_contained: bool = False) -> dict:
    """Write the training set of every stage of ``strategy`` to ``out_dir/<stage>/`` and the plan
    to ``out_dir/plan.json``; returns the plan summary. With ``self_contained`` the images are
    linked into each stage folder too (see :func:`materialize`), as pipeline artifacts need."""
    real = Manifest.load(real_dir)
    pool = Manifest.load(synthetic_dir) if synthetic_dir else None
    plan = balance(strategy, real, pool)
    out = Path(out_dir)
    for stage in plan.stages:
        train = materialize(stage.train, out / stage.name) if self_contained else stage.train
        train.save(out / stage.name)
    summary = plan.summary()
    write_json(out / "plan.json", summary)
    return summary


def train_stage(train_dir: str | os.PathLike, val_dir: str | os.PathLike, out_path: str | os.PathLike,
                cfg: TrainConfig | None = None, backbone: str = BACKBONE, objective: str = OBJECTIVE,
                objective_options: dict | None = None, init: str | os.PathLike | None = None,
                weights: str | None = None, image_size: int = IMAGE_SIZE, seed: int = 0,
                device: str = "auto", stage: str = "train", tracker: Tracker | None = None,
                processes: int = 1, tracking: dict | None = None) -> dict:
    """Train on the manifest in ``train_dir`` (all its rows), select the checkpoint by worst-group
    accuracy on the real ``val`` split of ``val_dir``, and write it to ``out_path`` with
    ``<out_path>.history.jsonl`` and ``<out_path>.json`` (best epoch, validation metrics,
    metadata). ``init`` is a checkpoint whose weights start the run (FFR's step 2 starts from
    step 1). The stage's plan (:func:`ffr.balance.stage_plan`) decides its objective (FFR's step 1
    trains with ERM whatever ``objective`` says) and its grouping. ``tracker`` receives the
    parameters, the datasets read, per-epoch metrics and the model. ``processes`` > 1 runs the
    stage data-parallel under ``torchrun`` (:func:`ffr.train.stage.run_distributed`; rank 0 opens
    the MLflow run ``tracking`` describes). Returns the summary."""
    from ffr.balance import stage_plan
    from ffr.checks import name_problems
    from ffr.config import ConfigError, check_train

    plan = stage_plan(stage)
    check_train(cfg or TrainConfig(), stage)
    problems = name_problems(backbone, [plan.objective_for(objective)], {plan.objective_for(objective): objective_options})
    if problems:
        raise ConfigError("; ".join(problems))
    from ffr.locks import output_lock

    out_path = Path(out_path)
    with output_lock(out_path.parent, out_path.name + ".lock"):
        return _train_stage(train_dir, val_dir, out_path, cfg, backbone, objective, objective_options, init, weights,
                            image_size, seed, device, stage, tracker, processes, tracking, plan)


def _train_stage(train_dir, val_dir, out_path, cfg, backbone, objective, objective_options, init, weights,
                 image_size, seed, device, stage, tracker, processes, tracking, plan) -> dict:
    from ffr.train.stage import StageSpec, run_distributed, run_stage

    if processes > 1:
        request = dict(train_dir=train_dir, val_dir=val_dir, out_path=out_path, cfg=cfg, backbone=backbone,
                       objective=objective, objective_options=objective_options, init=init, weights=weights,
                       image_size=image_size, seed=seed, device=device, stage=stage)
        return run_distributed(processes, request, tracking)
    train = Manifest.load(train_dir)
    val = Manifest.load(val_dir).select(split="val", source="real")
    if len(val) == 0:
        raise ValueError(f"{val_dir}: no real rows in split 'val' to select checkpoints with")
    spec = StageSpec(stage, train, val, cfg or TrainConfig(), plan.objective_for(objective),
                     dict(objective_options or {}), backbone, weights, image_size, seed, device,
                     init=None if init is None else str(init), group_by=plan.group_by)
    return run_stage(spec, out_path, tracker=tracker,
                     sources={"train": str(train_dir), "val": str(val_dir)}).summary()


def evaluate_stage(checkpoint: str | os.PathLike, data_dir: str | os.PathLike, split: str = "test",
                   out_path: str | os.PathLike | None = None, device: str = "auto",
                   tracker: Tracker | None = None) -> dict:
    """Group metrics of ``checkpoint`` on the real rows of ``split`` in ``data_dir``, plus the
    confusion matrix; written to ``out_path`` (JSON) when given and reported to ``tracker``."""
    from ffr.data.loading import TensorData
    from ffr.metrics import GroupTally, confusion_matrix, metrics_from_tally
    from ffr.train.loop import load_checkpoint, predict
    from ffr.train.runtime import resolve_device

    dev = resolve_device(device)
    model, meta = load_checkpoint(checkpoint, dev)
    data = Manifest.load(data_dir).select(split=split, source="real")
    if list(data.card.classes) != meta["classes"]:
        raise ValueError(f"{checkpoint}: model classes {meta['classes']} differ from {data_dir}'s {data.card.classes}")
    tensors = TensorData.from_manifest(data, int(meta["image_size"]))
    pred, conf = predict(model.to(dev), tensors, dev, meta.get("normalize", "imagenet"), confidence=True)
    metrics = metrics_from_tally(GroupTally(data.card.n_groups).add(pred, tensors.labels, tensors.groups, conf),
                                 data.card)
    metrics["split"] = split
    metrics["confusion"] = confusion_matrix(pred, tensors.labels, len(data.card.classes)).tolist()
    metrics["classes"] = list(data.card.classes)
    metrics["data_digest"] = data.digest()
    if out_path is not None:
        write_json(Path(out_path), metrics)
    tracker = tracker or NullTracker()
    tracker.log_dataset(data, split if split != "val" else "validation", str(data_dir))
    tracker.log_evaluation(metrics, split)
    return metrics
