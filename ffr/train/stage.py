"""The one stage driver: everything that happens to one training stage, whoever asks for it.

``ffr train`` and the DVC stages (:func:`ffr.steps.train_stage`), the Kubeflow train step
(``ffr/integrations/kubeflow/components/train.py``), the data-parallel rank entry (:mod:`ffr.launch`) and every grid cell
of ``ffr compare`` / ``ffr sweep`` (:func:`ffr.experiment.run_cell`) describe a stage as a
:class:`StageSpec` and call :func:`run_stage`, which

1. builds the model (seeded), loads the starting weights (FFR's step 2 starts from step 1),
2. calls the training loop (:func:`ffr.train.loop.fit`) — the only call of it in the product —
   with the objective an objective trains as (DFR trains as ERM),
3. applies the objective's finalize step when it differs (DFR's last-layer retraining),
4. writes the checkpoint, its per-epoch history and its summary (:func:`stage_files`),
5. reports to the tracker, and
6. with a stage cache, reuses a stage whose key (:meth:`StageSpec.key`) was trained before —
   only once its summary's key and the checkpoint's sha256 match (:func:`load_cached`): a damaged,
   truncated or moved entry is trained again, never used.

:func:`run_distributed` runs a stage under ``torchrun`` in several processes (one per GPU).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

from ffr.config import TrainConfig
from ffr.data.manifest import Manifest
from ffr.train.request import StageRequest
from ffr.paths import file_digest, temp_beside, write_json
from ffr.tracker import NullTracker, Tracker, epoch_metrics, flatten

SUMMARY_SUFFIX = ".json"
HISTORY_SUFFIX = ".history.jsonl"


def stage_files(checkpoint: str | os.PathLike) -> tuple[Path, Path, Path]:
    """(checkpoint, history, summary) of a stage: ``X.pt``, ``X.pt.history.jsonl`` (one JSON line
    per epoch) and ``X.pt.json`` (best epoch, validation metrics, metadata; written last, so its
    presence means the stage finished)."""
    ckpt = Path(checkpoint)
    return ckpt, ckpt.with_name(ckpt.name + HISTORY_SUFFIX), ckpt.with_name(ckpt.name + SUMMARY_SUFFIX)


@dataclass
class StageSpec:
    """One training stage with its data at hand: the request (what to train, how), the manifests
    it reads and the weights it starts from.

    Args:
        request: The stage's :class:`~ffr.train.request.StageRequest` (its data references unused
            here: the manifests are given).
        train: Every row is trained on.
        val: The real validation rows that select the checkpoint (worst-group accuracy).
        init: Starting weights: a model (a grid cell's previous stage), a checkpoint path, or
            None (default: ``request.init``).
        init_key: The key of the stage ``init`` came from (keys chain through the stage cache).
    """

    request: StageRequest
    train: Manifest
    val: Manifest
    init: Any = None
    init_key: str | None = None

    def __post_init__(self):
        if self.init is None and self.request.init is not None:
            self.init = self.request.init

    @property
    def name(self) -> str:
        return self.request.stage

    def loop_settings(self) -> TrainConfig:
        """The settings the loop runs with (:meth:`ffr.train.request.StageRequest.loop_settings`)."""
        return self.request.loop_settings(bool(self.train.is_synthetic().any()))

    def key(self, trainer_identity: str) -> str:
        """Identity of the trained stage: its data (the manifests and the files' sizes),
        settings, trainer, model and starting point.
        Two stages with one key are the same training run (e.g. FFR's step 1 under every step-2
        variant, ERM's model under DFR)."""
        blob = json.dumps({"train": self.train.digest(), "val": self.val.digest(), "cfg": asdict(self.loop_settings()),
                           "files": [self.train.files_fingerprint(times=False), self.val.files_fingerprint(times=False)],
                           "objective": trainer_identity, "backbone": self.request.backbone,
                           "weights": self.request.weights, "image_size": self.request.image_size,
                           "seed": self.request.seed, "init": self.init_key},
                          sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class StageResult:
    """What a stage produced: the selected (and finalized) model and where it was written."""

    model: Any
    checkpoint: Path
    history: Path
    key: str
    best_epoch: int
    val: dict
    objective_state: dict
    meta: dict
    reused: bool = False
    model_uri: str | None = None   # where the tracker logged the model, when it did

    def summary(self) -> dict:
        """The JSON summary written beside the checkpoint (after it: it holds the checkpoint's sha256,
        which a stage cache verifies before it reuses the stage)."""
        out = {"checkpoint": str(self.checkpoint), "key": self.key, "best_epoch": self.best_epoch, "val": self.val,
               "objective_state": self.objective_state, "meta": self.meta}
        if Path(self.checkpoint).is_file():
            out["sha256"] = file_digest(self.checkpoint)
        return {**out, "mlflow_model_uri": self.model_uri} if self.model_uri else out


def announce_budget(stage: str, settings, rows: int, meta: dict, echo: Callable[[str], None] | None) -> int:
    """The epochs the stage will run (:func:`ffr.train.loop.planned_epochs`), recorded in
    ``meta`` (``epochs_planned``); when ``min_steps`` raised the epochs asked for, said through
    ``echo``: an explicit epoch count is never changed silently."""
    from ffr.train import distributed as dist
    from ffr.train.loop import planned_epochs

    planned = planned_epochs(settings, math.ceil(rows / dist.world_size()), dist.per_rank_batch(settings.batch_size))
    meta["epochs_planned"] = planned
    if planned > settings.epochs and echo is not None:
        sooner = (f"; it ends sooner if validation WGA stops improving for {settings.warmup_steps} steps"
                  if settings.patience and settings.warmup_steps else "")
        echo(f"{stage}: {settings.epochs} epochs raised to {planned} to reach min_steps={settings.min_steps} "
             f"optimizer steps on {rows} images{sooner} (set min_steps=0 to train exactly {settings.epochs})")
    if settings.lpft_epochs >= planned and echo is not None:
        echo(f"{stage}: all {planned} epochs train the head alone (lpft_epochs={settings.lpft_epochs} is not "
             f"below the stage's epochs; set lpft_epochs=0 to fine-tune the whole model)")
    return planned


def epoch_line(stage: str, rec: dict, planned: int, elapsed: float) -> str:
    """One epoch as a log line: loss, validation WGA, elapsed time and the time left at most."""
    done = rec["epoch"] + 1
    def num(k):
        v = rec.get(k)
        return "—" if v is None or v != v else f"{v:.3f}"
    left = elapsed / done * max(0, planned - done)
    return (f"{stage}: epoch {done}/{planned}  loss {num('train/loss')}  val WGA {num('val/worst_group_acc')}  "
            f"balanced {num('val/balanced_acc')}  {elapsed:.0f} s, at most {left:.0f} s left")


def identity(objective) -> str:
    """What of an objective a stage key depends on: its name and options."""
    return objective.name + (json.dumps(objective.options, sort_keys=True) if objective.options else "")


def objectives(request: StageRequest):
    """(the objective, the objective it trains as) of a stage: DFR trains as ERM and differs only
    in its finalize step; other objectives train as themselves."""
    from ffr.train.objectives import create_objective

    objective = create_objective(request.objective, **(request.objective_options or {}))
    trainer = create_objective(objective.trains_as) if objective.trains_as else objective
    return objective, trainer


def run_stage(spec: StageSpec, out: str | os.PathLike | None = None, *, cache_dir: str | os.PathLike | None = None,
              tensors: Callable[[Manifest], Any] | None = None, tracker: Tracker | None = None,
              progress: bool = False, desc: str | None = None, sources: dict | None = None,
              echo: Callable[[str], None] | None = None) -> StageResult:
    """Train (or reuse) the stage ``spec`` and return its result.

    Args:
        spec: The stage.
        out: The checkpoint path of the stage's final model (history and summary beside it,
            see :func:`stage_files`). With ``cache_dir`` it may be omitted: the cached trained
            stage is then the result, unless a finalize step (DFR) makes a new model.
        cache_dir: A stage cache: the trained stage lives in ``cache_dir/<key>/model.pt`` and a
            finished one is loaded instead of trained again.
        tensors: Decodes a manifest into :class:`~ffr.data.loading.TensorData` (a grid passes its
            image cache); default: decode the files at ``spec.request.image_size``.
        tracker: Receives the parameters, the datasets, per-epoch metrics, the history and the
            model (rank 0 only under ``torchrun``).
        progress: Show a progress bar over epochs.
        desc: The progress bar's label.
        sources: Where the ``train`` and ``val`` manifests were read from, for the tracker.
        echo: Receives a line per epoch (loss, validation WGA, elapsed time, ETA) and the
            announcement of epochs raised to reach ``min_steps``: a command's terminal, a pod's log.
            The raise is recorded in the checkpoint's metadata either way (``epochs_planned``).

    Returns:
        The stage's :class:`StageResult`. Under ``torchrun`` every rank trains and gets the
        result; rank 0 alone writes files and reports.
    """
    from ffr.data.loading import TensorData
    from ffr.locks import work_lock
    from ffr.train import distributed as dist
    from ffr.train.backbones import create_model
    from ffr.train.loop import evaluate, fit, objective_context, save_checkpoint, seed_everything
    from ffr.train.runtime import resolve_device

    r = spec.request
    if out is None and cache_dir is None:
        raise ValueError("run_stage needs an output checkpoint path or a stage cache")
    dist.init_from_env()
    tracker = tracker if tracker is not None and dist.is_main() else NullTracker()
    if len(spec.val) == 0:
        raise ValueError(f"stage {spec.name!r}: no real validation rows to select checkpoints with")
    decode = tensors or (lambda m: TensorData.from_manifest(m, r.image_size))
    device = resolve_device(r.device)
    settings = spec.loop_settings()
    objective, trainer = objectives(r)
    key = spec.key(identity(trainer))
    trained_ckpt = Path(cache_dir) / key / "model.pt" if cache_dir is not None else Path(out)
    ckpt, history, summary = stage_files(trained_ckpt)
    tracker.log_params({"stage": spec.name, "backbone": r.backbone, "weights": r.weights,
                        "objective": objective.name, "init": None if spec.init is None or not isinstance(
                            spec.init, (str, os.PathLike)) else str(spec.init), "seed": r.seed,
                        "image_size": r.image_size, "stage_key": key, **flatten(settings, f"{spec.name}."),
                        **flatten(r.objective_options or {}, "objective_options.")})
    tracker.set_tags({"ffr.stage": spec.name, "ffr.strategy": r.strategy, "ffr.objective": objective.name,
                      "ffr.seed": r.seed})
    tracker.log_dataset(spec.train, "train", (sources or {}).get("train"))
    tracker.log_dataset(spec.val, "validation", (sources or {}).get("val"))
    val = decode(spec.val)
    train = None
    meta = {"backbone": r.backbone, "classes": list(spec.train.card.classes),
            "bias_values": list(spec.train.card.bias_values), "image_size": r.image_size,
            "normalize": settings.normalize, "stage": spec.name, "objective": trainer.name,
            "train_digest": spec.train.digest(), "stage_key": key}
    reused = cache_dir is not None and dist.from_main(_usable(ckpt, key))  # every rank takes rank 0's view
    with contextlib.ExitStack() as held:
        if cache_dir is not None and not reused:  # another run sharing the cache may be training it now:
            held.enter_context(work_lock(ckpt.parent, f"training stage {key} ({spec.name}) in {cache_dir}"))
            reused = dist.from_main(_usable(ckpt, key, repair=True))  # ... and may have finished it meanwhile
        if reused:
            model, done = load_cached(ckpt, key, device)
            best_epoch, best_val, state = done["best_epoch"], done["val"], done.get("objective_state", {})
            meta.update({k: v for k, v in (done.get("meta") or {}).items() if k in ("steps", "stop_reason")})
            records = [json.loads(line) for line in history.read_text().splitlines()] if history.is_file() else []
            for rec in records:
                tracker.log_metrics(*epoch_metrics(rec))
        else:
            seed_everything(r.seed)  # per stage, so a stage's result does not depend on what ran before
            model = create_model(r.backbone, len(spec.train.card.classes), r.weights)
            if spec.init is not None:
                model.load_state_dict(_init_state(spec))
            if dist.is_main():  # a rerun replaces the history only once the new stage is written
                ckpt.parent.mkdir(parents=True, exist_ok=True)
            partial = temp_beside(history)
            partial.unlink(missing_ok=True)

            train = decode(spec.train)
            planned = announce_budget(spec.name, settings, len(train), meta, echo)
            started = time.time()

            def log(rec):
                rec = {"stage": spec.name, **rec}
                with partial.open("a") as f:
                    f.write(json.dumps(rec) + "\n")
                tracker.log_metrics(*epoch_metrics(rec))
                if echo is not None and rec["epoch"] >= 0:
                    echo(epoch_line(spec.name, rec, planned, time.time() - started))

            try:
                result = fit(model, train, val, trainer, settings, device, seed=r.seed, log=log, progress=progress,
                             desc=desc or spec.name)
            except BaseException:
                partial.unlink(missing_ok=True)  # the previous history (if any) stays as it was
                raise
            model, best_epoch, best_val, state = result.model, result.best_epoch, result.best_val, trainer.state()
            records = result.history
            meta.update(best_epoch=best_epoch, steps=result.steps, stop_reason=result.stop_reason)
            if dist.is_main():
                try:
                    save_checkpoint(ckpt, model, meta)
                    os.replace(partial, history) if partial.is_file() else history.write_text("")
                finally:  # a failed save (a full disk) leaves the previous stage's files as they were
                    partial.unlink(missing_ok=True)
                write_json(summary, StageResult(model, ckpt, history, key, best_epoch, best_val, state, meta).summary())
            dist.barrier()  # the other ranks go on once the files exist
    meta["best_epoch"] = best_epoch
    final_ckpt = ckpt
    if trainer is not objective:  # e.g. DFR: retrain the last layer of the selected model
        train = train if train is not None else decode(spec.train)
        objective.setup(objective_context(train, settings, device, r.seed))
        model = objective.finalize(model, train, val, device)
        best_val, state = evaluate(model, val, device, settings.normalize, settings.eval_batch_size), objective.state()
        meta = {**meta, "objective": objective.name}
        final_ckpt = Path(out) if out is not None else ckpt.with_name(f"model_{objective.name}.pt")
        _, _, final_summary = stage_files(final_ckpt)
        if dist.is_main():
            save_checkpoint(final_ckpt, model, meta)
            write_json(final_summary, StageResult(model, final_ckpt, history, key, best_epoch, best_val, state,
                                                   meta).summary())
    elif out is not None and Path(out) != ckpt and dist.is_main():  # a cached stage asked for at its own path
        import shutil

        for src, dst in zip(stage_files(ckpt), stage_files(out)):
            if src.is_file():
                Path(dst).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dst)
        final_ckpt = Path(out)
    result = StageResult(model, final_ckpt, history, key, best_epoch, best_val, state, meta, reused)
    if "stop_reason" in meta:  # how the budget ended: epochs done, max_steps reached, or patience
        tracker.log_params({"steps_taken": meta["steps"], "stop_reason": meta["stop_reason"]})
    tracker.log_selection(best_val, best_epoch)  # the run's val/* metrics: the selected checkpoint's
    tracker.log_history(records)
    tracker.log_model(model, meta)
    result.model_uri = getattr(tracker, "model_uri", None)
    if result.model_uri and dist.is_main():  # for a caller in another process (torchrun's parent)
        summary_path = stage_files(final_ckpt)[2]
        if summary_path.is_file():
            write_json(summary_path, {**read_json(summary_path), "mlflow_model_uri": result.model_uri})
    return result


class DamagedStage(ValueError):
    """A stage cache entry that cannot be trusted (the message says why and names its folder)."""


def load_cached(checkpoint: str | os.PathLike, key: str, device="cpu", load: bool = True) -> tuple[Any, dict]:
    """The model and summary of the stage cache entry ``checkpoint`` (``<cache>/<key>/model.pt``),
    verified: its summary is readable and names ``key``, the checkpoint's bytes have the sha256
    the summary recorded when the stage was trained (entries written before checksums were
    recorded are verified by their keys only), and the checkpoint loads and names ``key`` too.

    Args:
        checkpoint: The entry's checkpoint.
        key: The stage key it must hold (:meth:`StageSpec.key`).
        device: Where to load the model.
        load: False: only verify (the model is then None; a checkpoint with a recorded sha256
            that matches is not loaded).

    Raises:
        DamagedStage: the entry is damaged, truncated, or was moved or copied under another key.
    """
    from ffr.train.loop import load_checkpoint

    ckpt = Path(checkpoint)
    summary = stage_files(ckpt)[2]
    where = f"stage cache entry {ckpt.parent}"
    try:
        done = read_json(summary)
    except (OSError, ValueError) as e:
        raise DamagedStage(f"{where}: its summary is unreadable ({e})") from None
    if not isinstance(done, dict):
        raise DamagedStage(f"{where}: its summary is not a stage summary")
    if done.get("key") != key:
        raise DamagedStage(f"{where}: it holds stage {done.get('key')!r}, not {key!r} (an entry moved or copied "
                           "under another key)")
    if not ckpt.is_file():
        raise DamagedStage(f"{where}: its checkpoint {ckpt.name} is missing")
    if "sha256" in done and file_digest(ckpt) != done["sha256"]:
        raise DamagedStage(f"{where}: the bytes of {ckpt.name} are not those recorded when it was trained (damaged "
                           "or replaced)")
    if not load and "sha256" in done:
        return None, done
    try:
        model, meta = load_checkpoint(ckpt, device)
    except ValueError as e:
        raise DamagedStage(f"{where}: {e}") from None
    if meta.get("stage_key", key) != key:
        raise DamagedStage(f"{where}: its checkpoint holds stage {meta.get('stage_key')!r}, not {key!r} (an entry "
                           "moved or copied under another key)")
    return model, done


def _usable(ckpt: Path, key: str, repair: bool = False) -> bool:
    """Whether the stage cache holds a finished, verified entry ``ckpt`` of stage ``key``. With
    ``repair`` (the caller holds the entry's lock) a damaged entry is warned about and its summary
    removed, so it is trained again; without, it only counts as not usable."""
    from ffr.train import distributed as dist

    summary = stage_files(ckpt)[2]
    if not dist.is_main() or not summary.is_file():
        return False
    try:
        load_cached(ckpt, key, load=False)
    except DamagedStage as e:
        if repair:
            print(f"ffr: warning: {e}; training the stage again", file=sys.stderr)
            summary.unlink(missing_ok=True)
        return False
    return True


def _init_state(spec: StageSpec) -> dict:
    """The state dict ``spec.init`` names (a model, or a checkpoint of the same classes)."""
    from ffr.train.loop import load_checkpoint

    if hasattr(spec.init, "state_dict"):
        return spec.init.state_dict()
    start, meta = load_checkpoint(spec.init)
    if meta["classes"] != list(spec.train.card.classes):
        raise ValueError(f"{spec.init}: checkpoint classes {meta['classes']} differ from the dataset's "
                         f"{list(spec.train.card.classes)}")
    return start.state_dict()


def read_json(path: str | os.PathLike):
    """A JSON file ffr wrote (a cell's record, a stage's summary); a damaged one is an error naming
    it (delete it and rerun: the cell or stage is then recomputed)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: damaged ({e}); delete it and rerun to recompute it") from None


# ------------------------------------------------------------------------------ several processes
def run_distributed(request: StageRequest, tracking: dict | None = None) -> dict:
    """The stage of ``request`` in ``request.processes`` data-parallel processes (``torchrun
    --standalone``, one per GPU of the pod); returns its summary (:func:`stage_files`).

    Args:
        request: The stage, its data references set (``train_data``, ``val_data``, ``out``).
        tracking: :func:`ffr.integrations.mlflow_runs.optional_run`'s arguments (``tracking_uri``,
            ``run_name``, ``pipeline_run_id``, ``experiment``) for the run rank 0 opens.
    """
    out_path = Path(request.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", suffix=".json", dir=out_path.parent, delete=False) as f:
        json.dump({"request": request.to_dict(), "tracking": tracking}, f)
    try:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
               str(request.processes), "-m", "ffr.launch", f.name]
        rc = subprocess.run(cmd).returncode  # the processes' output goes to this step's log
    finally:
        os.unlink(f.name)
    if rc != 0:
        raise RuntimeError(f"data-parallel training of {out_path} in {request.processes} processes failed (exit {rc}); "
                           "the ranks' errors are in the log above")
    return json.loads(stage_files(out_path)[2].read_text())
