"""The pipeline's steps as plain functions over directories: the one implementation behind the
CLI's step commands (``ffr prepare``, ``synthesize``, ``balance``, ``train``, ``evaluate``), the DVC
stages and the Kubeflow components, each of which maps its arguments or artifacts onto one call.

Every step reads explicit inputs (dataset directories, checkpoints, a run plan) and writes one
output directory or file; none finds another step's output by scanning folders. A training step
trains stages (:func:`train_stage`: one request; :func:`train_planned`: the stages of one strategy
from a run plan) through the one stage driver (:func:`ffr.train.stage.run_stage`).
"""

from __future__ import annotations

import functools
import os
import shutil
from pathlib import Path
from typing import Callable

from ffr.balance import balance, pool_requirement
from ffr.config import MAX_ATTEMPTS, SYNTHESIS_BACKEND, SYNTHESIS_BATCH_SIZE
from ffr.data.manifest import DatasetCard, Manifest, group_key
from ffr.data.sources import prepare
from ffr.paths import inside, write_json
from ffr.rules import require
from ffr.tracker import NullTracker, Tracker
from ffr.train.request import StageRequest

# The prepare step (the real data and its bias-rate split), beside the others: ffr.data.sources.prepare.
prepare_step = prepare


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
    require("count", int(num_shards), "num_shards")
    work = []
    for (label, bias), n in synthetic_need(real_dir, strategies).items():
        k = min(int(num_shards), n)
        work += [{"label": label, "bias": bias, "count": n, "shard": i, "num_shards": k} for i in range(k)]
    return work


def synthesize_step(card: DatasetCard | str | os.PathLike, counts: dict[tuple[str, str], int],
                    out_dir: str | os.PathLike, backend: str = SYNTHESIS_BACKEND, seed: int = 0,
                    batch_size: int = SYNTHESIS_BATCH_SIZE, options: dict | None = None, filters=(),
                    max_attempts: int = MAX_ATTEMPTS, shard: int = 0, num_shards: int = 1,
                    record_dir: str | os.PathLike | None = None, progress: bool = False):
    """Render ``counts`` images per group of ``card`` (its shard ``shard`` of ``num_shards``) into
    ``out_dir``, resumably, with the run's record in ``record_dir`` (default: ``out_dir``'s record
    of this run, :func:`ffr.synthesis.records.default_record_dir`); runs writing one record are
    serialised by a lock. Returns (the run, its record folder): see
    :func:`ffr.synthesis.records.synthesize_dataset`, the one synthesis entry point."""
    from ffr.locks import output_lock
    from ffr.synthesis.records import default_record_dir, synthesize_dataset

    card = card if isinstance(card, DatasetCard) else DatasetCard.load(card)
    record = Path(record_dir) if record_dir else default_record_dir(out_dir, card, counts, shard, num_shards)
    with output_lock(Path(record or out_dir), ".ffr.lock"):
        return synthesize_dataset(backend, card, counts, out_dir, options, base_seed=seed, shard=shard,
                                  num_shards=num_shards, batch_size=batch_size, filters=list(filters),
                                  max_attempts=max_attempts, progress=progress, record_dir=record)


def work_item(work: dict) -> dict:
    """The arguments of :func:`synthesize_step` one item of :func:`synthesis_work` stands for
    (numbers may arrive as floats: pipeline runners serialise them so)."""
    return {"counts": {(str(work["label"]), str(work["bias"])): int(work["count"])},
            "shard": int(work.get("shard", 0)), "num_shards": int(work.get("num_shards", 1))}


def collect_step(shard_dirs: list, out_dir: str | os.PathLike, card_path: str | os.PathLike | None = None) -> Manifest:
    """One synthetic pool in ``out_dir`` from the shard runs ``shard_dirs`` (checked and merged by
    :func:`ffr.synthesis.records.collect`); an empty pool of ``card_path``'s card when there are none."""
    from ffr.synthesis.records import collect

    if shard_dirs:
        return collect(list(shard_dirs), out_dir)
    if card_path is None:
        raise ValueError("no shard runs to collect (and no card for an empty pool)")
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


def balance_step(strategy: str, real_dir: str | os.PathLike, synthetic_dir: str | os.PathLike | None,
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


def train_stage(request: StageRequest, tracker: Tracker | None = None, tracking: dict | None = None,
                names: dict[str, str] | None = None, echo: Callable[[str], None] | None = None) -> dict:
    """Train the stage ``request`` describes and return its summary: every row of the manifest
    in ``request.train_data``, the checkpoint selected by worst-group accuracy on the real ``val``
    rows of ``request.val_data``, written to ``request.out`` with ``<out>.history.jsonl`` and
    ``<out>.json`` (best epoch, validation metrics, metadata), starting from ``request.init``.

    The request is checked first (:meth:`ffr.train.request.StageRequest.check`: every problem at once,
    before any data is read). ``tracker`` receives the parameters, the datasets read, per-epoch
    metrics and the model. With ``request.processes`` > 1 the stage runs data-parallel under
    ``torchrun`` (:func:`ffr.train.stage.run_distributed`; rank 0 opens the MLflow run
    ``tracking`` describes). One run at a time per output file (:func:`ffr.locks.output_lock`).
    ``names``: the entry point's names of the request's fields, for its refusals. ``echo``
    receives a line per epoch and the announcement of epochs raised to reach ``min_steps``
    (:func:`ffr.train.stage.run_stage`)."""
    from ffr.locks import output_lock

    request.check(names)
    for ref in ("train_data", "val_data", "out"):
        if not getattr(request, ref):
            raise ValueError(f"stage request {request.stage!r}: {ref} is not set")
    out_path = Path(request.out)
    with output_lock(out_path.parent, out_path.name + ".lock"):
        return _train_stage(request, tracker, tracking, echo)


def _train_stage(request: StageRequest, tracker: Tracker | None, tracking: dict | None,
                 echo: Callable[[str], None] | None = None) -> dict:
    from ffr.train.stage import StageSpec, run_distributed, run_stage

    if request.processes > 1:
        return run_distributed(request, tracking)
    train = Manifest.load(request.train_data)
    val = Manifest.load(request.val_data).select(split="val", source="real")
    if len(val) == 0:
        raise ValueError(f"{request.val_data}: no real rows in split 'val' to select checkpoints with")
    return run_stage(StageSpec(request, train, val), request.out, tracker=tracker, echo=echo,
                     sources={"train": request.train_data, "val": request.val_data}).summary()


def train_planned(run_plan: dict, strategy: str, stages: list[str] | None, training_sets: str | os.PathLike,
                  val_data: str | os.PathLike, out_dir: str | os.PathLike, init: str | os.PathLike | None = None,
                  tracking: dict | None = None) -> dict:
    """Train stages of ``strategy`` with the requests of a run plan (:func:`ffr.runform.run_plan`):
    ``stages`` (default: all the strategy's, in training order), each on ``training_sets/<stage>``
    (:func:`balance_step`'s output), selected on ``val_data``'s real ``val`` rows. The last one's
    model is ``out_dir/model.pt``, an earlier one's ``out_dir/<stage>/model.pt``; a stage starts
    from the stage it is planned to start from — trained here, or ``init`` (a checkpoint) when that
    stage ran in an earlier step. ``tracking`` (:func:`ffr.integrations.mlflow_runs.optional_run`'s
    ``tracking_uri``, ``pipeline_run_id``, ``experiment``) opens an MLflow run per stage. Returns
    what the last stage's model artifact shows: stage, strategy, objective, best epoch, steps, why
    it stopped, its validation accuracies, its MLflow model URI."""
    from ffr.balance import STRATEGIES

    requests = (run_plan.get("strategies") or {}).get(strategy)
    if requests is None:
        raise ValueError(f"the run plan has no strategy {strategy!r}; it plans {sorted(run_plan.get('strategies', {}))}")
    plans = {p.name: p for p in STRATEGIES.get(strategy).stages}
    todo = list(stages or plans)  # the plan's order (a JSON mapping may arrive with its keys sorted)
    unknown = [s for s in todo if s not in requests or s not in plans]
    if unknown:
        raise ValueError(f"strategy {strategy!r} has no stage(s) {unknown}; its stages: {list(requests)}")
    out_dir, done, summary = Path(out_dir), {}, {}
    for i, name in enumerate(todo):
        plan = plans[name]
        start = done.get(plan.init_from) or (str(init) if plan.init_from and init is not None else None)
        if plan.init_from and start is None:
            raise ValueError(f"stage {name!r} of {strategy!r} starts from stage {plan.init_from!r}: train it in "
                             "this step or pass its model as the init")
        out = out_dir / "model.pt" if i == len(todo) - 1 else out_dir / name / "model.pt"
        request = StageRequest.from_dict(requests[name], f"run plan {strategy}.{name}").with_refs(
            train_data=Path(training_sets) / name, val_data=val_data, init=start, out=out)
        summary = _tracked_stage(request, tracking, name if strategy == run_plan.get("product") else f"{name} {strategy}")
        done[name] = str(out)
    meta = summary["meta"]
    return {"framework": "pytorch", "strategy": strategy, "stage": todo[-1], "backbone": meta["backbone"],
            "objective": meta["objective"], "best_epoch": summary["best_epoch"], "steps": meta.get("steps", 0),
            "stop_reason": meta.get("stop_reason", ""), "processes": request.processes,
            "train_digest": meta["train_digest"], **({"mlflow_model_uri": summary["mlflow_model_uri"]}
                                                     if summary.get("mlflow_model_uri") else {}),
            **{f"val_{k}": v for k, v in summary["val"].items() if k.endswith("_acc")}}


def _tracked_stage(request: StageRequest, tracking: dict | None, run_name: str) -> dict:
    """:func:`train_stage` reporting to the MLflow run ``tracking`` describes (None: untracked; an
    empty ``tracking_uri``: ``$MLFLOW_TRACKING_URI``, if set); under ``torchrun`` rank 0 opens it.
    System metrics are sampled where the work is: in the training steps."""
    echo = functools.partial(print, flush=True)  # a line per epoch in the step's log
    if tracking is None:
        return train_stage(request, echo=echo)
    tracking = {"tracking_uri": None, **tracking, "run_name": run_name}
    if request.processes > 1:
        return train_stage(request, tracking=tracking)
    from ffr.integrations.mlflow_runs import optional_run

    with optional_run(system_metrics=True, **tracking) as tracker:
        return train_stage(request, tracker=tracker, echo=echo)


def evaluate_step(checkpoint: str | os.PathLike, data_dir: str | os.PathLike, split: str = "test",
                  out_path: str | os.PathLike | None = None, device: str = "auto",
                  tracker: Tracker | None = None) -> dict:
    """Group metrics of ``checkpoint`` on the real rows of ``split`` in ``data_dir``, plus the
    confusion matrix; written to ``out_path`` (JSON) when given and reported to ``tracker``."""
    from ffr.train.loop import load_checkpoint
    from ffr.train.runtime import resolve_device

    model, meta = load_checkpoint(checkpoint, resolve_device(device))
    return evaluate_model(model, meta, data_dir, split, out_path, device, tracker, what=str(checkpoint))


def evaluate_model(model, meta: dict, data_dir: str | os.PathLike, split: str = "test",
                   out_path: str | os.PathLike | None = None, device: str = "auto",
                   tracker: Tracker | None = None, what: str = "the model") -> dict:
    """The one group evaluation of a loaded classifier (``meta``: its checkpoint metadata):
    metrics per group and overall, calibration, the confusion matrix and the digest of the rows
    evaluated (:func:`evaluate_step` for a checkpoint; the promotion gate for a registered
    champion)."""
    from ffr.data.loading import TensorData
    from ffr.metrics import GroupTally, confusion_matrix, metrics_from_tally, with_train_weighting
    from ffr.train.loop import predict
    from ffr.train.runtime import resolve_device

    dev = resolve_device(device)
    everything = Manifest.load(data_dir)
    data = everything.select(split=split, source="real")
    if list(data.card.classes) != list(meta["classes"]):
        raise ValueError(f"{what}: model classes {meta['classes']} differ from {data_dir}'s {data.card.classes}")
    tensors = TensorData.from_manifest(data, int(meta["image_size"]))
    pred, conf, loss = predict(model.to(dev), tensors, dev, meta.get("normalize", "imagenet"), confidence=True)
    metrics = metrics_from_tally(GroupTally(data.card.n_groups).add(pred, tensors.labels, tensors.groups, conf, loss),
                                 data.card)
    with_train_weighting(metrics, everything)  # the literature's "average accuracy"
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


def evaluate_strategy(checkpoint: str | os.PathLike, data_dir: str | os.PathLike, strategy: str,
                      metrics_path: str | os.PathLike, report_path: str | os.PathLike, split: str = "test",
                      device: str = "auto", synthetic_dir: str | os.PathLike | None = None,
                      model_meta: dict | None = None, tracking: dict | None = None) -> dict:
    """A pipeline's evaluation step: :func:`evaluate_step` of one strategy's model, written to
    ``metrics_path`` (JSON, with ``strategy`` and the model artifact's ``model_meta``) and
    ``report_path`` (HTML: group table, confusion matrix, a few synthetic images per group of
    ``synthetic_dir``). With ``tracking`` (:func:`ffr.integrations.mlflow_runs.optional_run`'s
    ``tracking_uri``, ``pipeline_run_id``, ``experiment``; an empty URI: ``$MLFLOW_TRACKING_URI``)
    the evaluation is a run nested under the pipeline's, and its headline goes on the pipeline's
    own run. Returns the metrics."""
    from ffr.results.views import evaluation_report_html

    tracked = tracking is not None and bool(tracking.get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI"))
    if tracked:
        from ffr.integrations.mlflow_runs import log_summary_to, optional_run

        with optional_run(run_name=f"evaluate {strategy}", system_metrics=False,
                          tags={"ffr.strategy": strategy, "ffr.stage": "evaluate"}, **tracking) as tracker:
            m = evaluate_step(checkpoint, data_dir, split, None, device, tracker=tracker)
    else:
        m = evaluate_step(checkpoint, data_dir, split, None, device)
    m = {"strategy": strategy, **m, "model": dict(model_meta or {})}
    if tracked and tracking.get("pipeline_run_id"):  # the headline on the pipeline's own run
        from ffr.results.views import format_group_table

        log_summary_to(tracking.get("tracking_uri") or os.environ["MLFLOW_TRACKING_URI"],
                       tracking.get("experiment", "ffr"), tracking["pipeline_run_id"], {strategy: m},
                       table=f"```\n{format_group_table({strategy: m})}\n```")  # a comparison's report replaces it
    write_json(Path(metrics_path), m)
    pool = Manifest.load(synthetic_dir, check_files=False) if synthetic_dir is not None else None
    Path(report_path).write_text(evaluation_report_html({strategy: m}, f"{strategy}: {split} split", pool))
    return m
