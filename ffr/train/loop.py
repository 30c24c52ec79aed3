"""The one training loop: per-epoch validation, checkpoint selection by worst-group accuracy on
the real validation split, state-dict checkpoints loaded with ``weights_only=True``."""

from __future__ import annotations

import copy
import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ffr.config import TrainConfig  # noqa: F401  (re-exported: the loop's settings)
from ffr.data.loading import BatchTransform, TensorData
from ffr.metrics import TIE_BREAK, GroupTally, flat_metrics, metrics_from_tally, selection_key
from ffr.paths import temp_beside
from ffr.train import distributed as dist
from ffr.train.runtime import autocast_dtype, configure
from ffr.train.backbones import Classifier, create_model
from ffr.train.finetune import StageControls
from ffr.train.objectives import Objective, ObjectiveContext, training_group_names, training_groups


@dataclass
class FitResult:
    """The selected checkpoint and what led to it."""

    model: Classifier
    best_epoch: int
    best_val: dict
    history: list[dict] = field(default_factory=list)
    steps: int = 0                  # optimizer steps taken
    stop_reason: str = "epochs"     # epochs | max_steps | patience | plateau (patience before min_steps)


def planned_epochs(cfg: TrainConfig, rows: int, batch_size: int) -> int:
    """The epochs a stage runs on ``rows`` training rows per process: ``cfg.epochs``, raised to
    reach ``cfg.min_steps`` optimizer steps and lowered to stay within ``cfg.max_steps`` (an
    epoch is a step per batch, less a last batch of one image, which :func:`fit` skips)."""
    batch_size = max(1, batch_size)
    per_epoch = max(1, rows // batch_size + (rows % batch_size >= 2))
    epochs = cfg.epochs
    if cfg.min_steps:
        epochs = max(epochs, math.ceil(cfg.min_steps / per_epoch))
    if cfg.max_steps:
        epochs = min(epochs, math.ceil(cfg.max_steps / per_epoch))
    return max(1, epochs)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch once, at an entry point."""
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def _optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}; known: adam, sgd")


@torch.inference_mode()
def predict(model: torch.nn.Module, data: TensorData, device: torch.device, normalize: str = "imagenet",
            batch_size: int = 512, amp: str = "off", confidence: bool = False):
    """Predicted class of every row of ``data`` (under autocast when ``amp`` asks for it); with
    ``confidence``, (classes, the predicted class's softmax probability, each row's cross-entropy
    against its label)."""
    model.eval()
    tf = BatchTransform(normalize)
    dtype = autocast_dtype(amp, device)
    out, conf, nll = [], [], []
    for start in range(0, len(data), batch_size):
        x = tf(data.images[start:start + batch_size].to(device, non_blocking=True))
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            logits = model(x)
        out.append(logits.argmax(1).cpu())
        if confidence:
            logp = torch.log_softmax(logits.float(), 1).cpu()
            conf.append(logp.amax(1).exp())
            nll.append(-logp.gather(1, data.labels[start:start + batch_size].long().view(-1, 1)).squeeze(1))
    pred = torch.cat(out) if out else torch.empty(0, dtype=torch.long)
    if not confidence:
        return pred
    return pred, (torch.cat(conf) if conf else torch.empty(0)), (torch.cat(nll) if nll else torch.empty(0))


def evaluate(model: torch.nn.Module, data: TensorData, device: torch.device, normalize: str = "imagenet",
             batch_size: int = 512, amp: str = "off") -> dict:
    """Group metrics (:mod:`ffr.metrics`) of ``model`` on ``data``. Under ``torch.distributed``
    each rank predicts its share of the rows and the counts are summed (every rank must call
    it; all get the same exact metrics)."""
    rows = dist.eval_rows(len(data))
    part = data if rows is None else data.subset(rows)
    pred, conf, loss = predict(model, part, device, normalize, batch_size, amp, confidence=True)
    tally = dist.reduce_tally(GroupTally(data.card.n_groups).add(pred, part.labels, part.groups, conf, loss))
    return metrics_from_tally(tally, data.card)


def _better(new: dict, best: dict | None, tie_break: str = TIE_BREAK) -> bool:
    """Whether epoch metrics ``new`` beat ``best`` (:func:`ffr.metrics.selection_key`: worst-group
    accuracy, balanced accuracy, then the tie-break); a full tie keeps the earlier epoch."""
    return best is None or selection_key(new, tie_break) > selection_key(best, tie_break)


def early_stop(cfg: TrainConfig, epoch: int, total_steps: int, since_best: int, best_steps: int) -> str | None:
    """Whether a stage ends after ``epoch`` (0-based) for want of progress: ``patience`` once
    ``min_steps`` are done and ``patience`` epochs brought no better validation WGA; ``plateau``
    before the floor once ``warmup_steps`` steps are taken and none of the last ``warmup_steps``
    (since the best, at ``best_steps``) improved it. LP-FT's head-only epochs do not count against
    patience: the stage has not started yet. None: go on. (The one rule; benchmarks/bench_budget.py
    replays it on recorded histories.)"""
    if not cfg.patience or since_best < cfg.patience or epoch + 1 - cfg.lpft_epochs < cfg.patience:
        return None
    if total_steps >= cfg.min_steps:
        return "patience"
    if cfg.warmup_steps and total_steps >= cfg.warmup_steps and total_steps - best_steps >= cfg.warmup_steps:
        return "plateau"
    return None


def objective_context(train: TensorData, cfg: TrainConfig, device: torch.device, seed: int = 0) -> ObjectiveContext:
    """What an objective is set up with for training on ``train`` under ``cfg``."""
    group_ids, n_groups = training_groups(train.labels, train.biases, train.sources,
                                          len(train.card.bias_values), len(train.card.classes), cfg.group_by)
    return ObjectiveContext(group_ids, n_groups, device, group_names=training_group_names(train.card, n_groups),
                            normalize=cfg.normalize, eval_batch_size=cfg.eval_batch_size, seed=seed)


def fit(model: Classifier, train: TensorData, val: TensorData, objective: Objective, cfg: TrainConfig,
        device: torch.device, seed: int = 0, log: Callable[[dict], None] | None = None,
        progress: bool = False, desc: str = "train") -> FitResult:
    """Train ``model`` on ``train`` with ``objective``; after every epoch evaluate on the real
    validation split ``val`` and keep the checkpoint with the best worst-group accuracy.

    Returns the selected model (a copy; ``model`` holds the last epoch's weights). ``log`` is called
    once per epoch with stable metric names (``train/loss``, ``val/worst_group_acc``, ...).
    """
    if len(train) == 0:
        raise ValueError(f"{desc}: the training set is empty")
    dist.init_from_env()
    configure(device, cfg.num_threads, cfg.deterministic)
    dtype = autocast_dtype(cfg.amp, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model.to(device, memory_format=fmt)
    # Frozen parameters are switched off before DDP is built, so it never waits for their
    # gradients; LP-FT switches the backbone's off and on between epochs, which DDP must be told.
    controls = StageControls(model, cfg)
    net = dist.wrap(model, device, find_unused_parameters=cfg.lpft_epochs > 0)
    train_x, val = train.resident(device), val.resident(device)  # on the GPU when they fit
    gen = torch.Generator().manual_seed(seed)  # the epoch order: the same on every rank
    aug_gen = torch.Generator().manual_seed(seed * 7919 + dist.rank() + 1)
    tf = BatchTransform(cfg.normalize, cfg.augment)
    ctx = objective_context(train, cfg, device, seed)
    group_ids = ctx.group_ids
    objective.setup(ctx)
    opt = _optimizer(controls.param_groups(), cfg)
    best_state, best_val, best_epoch, history = None, None, -1, []
    if cfg.select_init:  # step 2 then never returns a model worse on validation than step 1's
        best_val = evaluate(model, val, device, cfg.normalize, cfg.eval_batch_size, cfg.amp)
        best_state = copy.deepcopy(model.state_dict())
        history.append({"epoch": -1, "train/loss": float("nan"), **flat_metrics(best_val, "val")})
        if log is not None and dist.is_main():
            log(history[-1])
    epochs = planned_epochs(cfg, math.ceil(len(train) / dist.world_size()), dist.per_rank_batch(cfg.batch_size))
    total_steps, since_best, best_steps, stop_reason = 0, 0, 0, "epochs"
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=epochs, desc=desc, unit="epoch", leave=False)
    for epoch in range(epochs):
        controls.start_epoch(model, epoch)  # train mode, minus what the stage keeps frozen
        order = dist.shard(objective.epoch_indices(len(train), gen))
        batch_size = dist.per_rank_batch(cfg.batch_size)
        loss_sum, steps = torch.zeros((), device=device), 0
        for start in range(0, len(order), batch_size):
            if cfg.max_steps and total_steps + steps >= cfg.max_steps:
                stop_reason = "max_steps"
                break
            idx = order[start:start + batch_size]
            if len(idx) < 2 and len(order) > 1:
                continue  # a batch of one breaks BatchNorm statistics
            x = tf(train_x.images[idx].to(device, non_blocking=True), aug_gen, train=True)
            x = x.contiguous(memory_format=fmt)
            y = train.labels[idx].to(device)
            g = group_ids[idx].to(device)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                logits = net(x)
            loss = objective.loss(logits.float(), y, g)
            penalty = controls.penalty()
            if penalty is not None:
                loss = loss + penalty
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            loss_sum += loss.detach()  # summed on the device: no host sync per step
            steps += 1
        dist.sync_buffers(model)
        val_metrics = evaluate(model, val, device, cfg.normalize, cfg.eval_batch_size, cfg.amp)
        total_steps += steps
        if cfg.max_steps and total_steps >= cfg.max_steps and epoch < epochs - 1:
            stop_reason = "max_steps"
        if _better(val_metrics, best_val, cfg.tie_break):
            best_val, best_epoch, since_best, best_steps = val_metrics, epoch, 0, total_steps
            best_state = copy.deepcopy(model.state_dict())
        else:
            since_best += 1
        if stop_reason == "epochs" and epoch < epochs - 1:
            stop_reason = early_stop(cfg, epoch, total_steps, since_best, best_steps) or stop_reason
        record = {"epoch": epoch, "steps": steps, "total_steps": total_steps,
                  "train/loss": dist.mean(float(loss_sum) / steps) if steps else float("nan"),
                  **flat_metrics(val_metrics, "val"), **objective.state()}
        if stop_reason != "epochs" or epoch == epochs - 1:
            record["stop_reason"] = stop_reason  # why the stage ended (not a metric: trackers skip it)
        history.append(record)
        if log is not None and dist.is_main():
            log(record)
        if bar is not None:
            bar.set_postfix(val_wga=f"{val_metrics['worst_group_acc'] or 0:.3f}")
            bar.update(1)
        if stop_reason != "epochs":
            break
    if bar is not None:
        bar.close()
    if epochs > 0 and not any(h.get("steps") for h in history):
        raise ValueError(f"{desc}: no optimizer step was taken in {epochs} epoch(s) ({len(train)} training rows, "
                         f"batch size {cfg.batch_size}); nothing was trained")
    controls.release(model)
    selected = copy.deepcopy(model)
    selected.load_state_dict(best_state)
    finalized = objective.finalize(selected, train, val, device)
    if finalized is not selected:  # e.g. DFR replaced the head: report what is returned
        best_val = evaluate(finalized, val, device, cfg.normalize, cfg.eval_batch_size, cfg.amp)
    return FitResult(finalized, best_epoch, best_val, history, total_steps, stop_reason)


def save_checkpoint(path: str | os.PathLike, model: Classifier, meta: dict) -> Path:
    """Write ``{"state_dict", "meta"}`` atomically. ``meta`` holds plain values only (backbone
    name, classes, image size, normalisation), so the file loads with ``weights_only=True``.
    Under ``torch.distributed`` only rank 0 writes."""
    path = Path(path)
    if not dist.is_main():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_beside(path)
    meta = {**meta, "feature_norm": bool(getattr(model, "feature_norm", False))}
    try:
        with open(tmp, "wb") as f:  # a file object: the zip's inner names are then fixed ("archive/..."), not
            torch.save({"state_dict": model.state_dict(), "meta": meta}, f)  # the temp name: identical bytes
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # a failed write (a full disk) leaves the previous checkpoint and no temp file
    return path


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[Classifier, dict]:
    """Rebuild the model a checkpoint describes; never unpickles code (``weights_only=True``).
    ``path`` may be an ``s3://`` URI (downloaded once into a local cache)."""
    from ffr.paths import local_path

    import pickle
    import struct
    import zipfile

    local = local_path(path)
    if not local.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        blob = torch.load(local, map_location=device, weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, UnicodeDecodeError, ValueError,
            IndexError, KeyError, TypeError, AttributeError, struct.error) as e:  # what a file of another kind raises
        raise ValueError(f"{path} is not a readable ffr checkpoint (truncated or another kind of file: "
                         f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    if not isinstance(blob, dict) or "state_dict" not in blob or "meta" not in blob:
        raise ValueError(f"{path} is not an ffr checkpoint (expected keys 'state_dict' and 'meta')")
    meta = blob["meta"]
    try:
        model = create_model(meta["backbone"], len(meta["classes"]))
        model.load_state_dict(blob["state_dict"])
    except (KeyError, TypeError, RuntimeError) as e:
        raise ValueError(f"{path}: the checkpoint does not describe a model ffr can build ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''})") from None
    model.feature_norm = bool(meta.get("feature_norm", False))
    return model, meta

