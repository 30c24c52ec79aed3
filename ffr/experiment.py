"""Experiments: one grid cell (strategy × bias rate × seed × hyperparameters) run end to end, and
the resumable grid behind ``ffr compare``.

A cell: bias-rate split of the real data → balancing plan → the training loop once per stage
(FFR: step 1 on synthetic, step 2 on real initialised from step 1's selected checkpoint) → the
group evaluator on the real test split. A finished cell leaves ``record.json`` and is not
recomputed.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable

from ffr.balance import STRATEGIES, pool_requirement
from ffr.config import ExperimentConfig, save_config, with_overrides
from ffr.grid import Cell, draw_cell, plan_cells
from ffr.metrics import with_train_weighting
from ffr.paths import inside, write_atomic, write_json
from ffr.data.cache import ImageCache, open_cache
from ffr.data.manifest import Manifest
from ffr.data.splits import bias_rate_split
from ffr.train import distributed as dist
from ffr.tracker import NullTracker, Tracker, flatten, log_cell
from ffr.train.loop import evaluate, seed_everything
from ffr.train.runtime import cap_threads, cpu_budget, resolve_device
from ffr.train.stage import StageSpec, objectives, read_json, run_stage


def open_image_cache(cfg: ExperimentConfig, real: Manifest, pool: Manifest | None,
                     cache_dir: str | os.PathLike, progress: bool = False, image_size: int | None = None,
                     verify: bool = False) -> ImageCache:
    """The decoded-image cache of the real data and the synthetic pool at ``image_size`` (default:
    the configured resolution), built once under ``cache_dir``; every cell of a grid reads it.
    ``verify``: check the image files' contents too (:func:`ffr.data.cache.open_cache`)."""
    every = Manifest.concat([real] + ([pool] if pool is not None else []))
    return open_cache(every, image_size or cfg.data.image_size, cache_dir, progress=progress, verify=verify)


def data_identity(real: Manifest) -> str:
    """What a grid's cells depend on of their real data: its manifest's digest and its image files'
    sizes. A dataset edited under the same path gets new cells. (The synthetic pool is identified
    by the synthesis settings in the config: a pool grown for a new bias rate or strategy keeps its
    first images, which are the ones every existing cell drew, so finished cells stay valid.)"""
    return hashlib.sha256(f"{real.digest()}|{real.files_fingerprint(times=False)}".encode()).hexdigest()[:16]


def prepare_real(cfg: ExperimentConfig, workdir: str | os.PathLike) -> Manifest:
    """The real dataset of ``cfg.data`` (:func:`ffr.data.sources.load_source`; the built-in demo
    is generated under ``workdir/data``)."""
    from ffr.data.sources import load_source

    return load_source(cfg.data.dataset, cfg.data.adapter, cfg.data.options, cfg.data.demo, Path(workdir) / "data")


def pool_need(cfg: ExperimentConfig, real: Manifest) -> dict[tuple[str, str], int]:
    """Synthetic images per group that serve every strategy and bias rate of the grid."""
    counts = []
    for rate in cfg.bias_rates:
        split, _ = bias_rate_split(real, rate, 0, cfg.data.min_val_per_group)
        counts.append(split.select(split="train", source="real").group_counts())
    return pool_requirement(cfg.strategies, counts)


def prepare_pool(cfg: ExperimentConfig, real: Manifest, need: dict[tuple[str, str], int],
                 workdir: str | os.PathLike, progress: bool = False) -> Manifest:
    """Render the synthetic pool with the configured backend through the one synthesis entry
    point (:func:`ffr.synthesis.records.synthesize_dataset`: resumable, with its record, rejection
    log and contact sheet beside the images)."""
    from ffr.synthesis.records import synthesize_dataset

    out = Path(workdir) / "synthetic" / f"{cfg.synthesis.backend}-seed{cfg.synthesis.seed}"
    run, _ = synthesize_dataset(cfg.synthesis.backend, real.card, need, out, cfg.synthesis.options,
                                base_seed=cfg.synthesis.seed, batch_size=cfg.synthesis.batch_size,
                                filters=pool_filters(cfg, real, workdir, progress),
                                max_attempts=cfg.synthesis.max_attempts, progress=progress, record_dir=out)
    if progress and run.rejections:  # what the filters pruned, per group (all of it: rejections.csv)
        print("synthetic pool: rejected attempts per group: " + ", ".join(
            f"{g} {n}" for g, n in run.rejected_per_group().items()) + f" (record: {out / 'rejections.csv'})",
            file=sys.stderr, flush=True)
    return run.manifest


def pool_filters(cfg: ExperimentConfig, real: Manifest, workdir: str | os.PathLike, progress: bool = False) -> list:
    """The configured synthesis filters, a ``harmful`` one made concrete
    (:func:`ffr.synthesis.harmful.resolve`): its scorers trained on the real data's split at the
    grid's first bias rate (seed 0, as the pool's size is planned) with the grid's model and
    ``train`` settings, kept in ``workdir/scorers``, and its class floors calibrated on the
    configured backend's images. ``progress``: a line per scorer epoch on stderr."""
    from ffr.synthesis.generation import create_backend
    from ffr.synthesis.harmful import NAME, resolve

    if not any(NAME in str(f) for f in cfg.synthesis.filters):
        return list(cfg.synthesis.filters)
    split, _ = bias_rate_split(real, cfg.bias_rates[0], 0, cfg.data.min_val_per_group)
    backend = create_backend(cfg.synthesis.backend, real.card, **cfg.synthesis.options)
    echo = (lambda line: print(f"harmful-sample scorers: {line}", file=sys.stderr, flush=True)) if progress else None
    return resolve(cfg.synthesis.filters, split, cfg, Path(workdir) / "scorers", echo=echo, backend=backend,
                   seed=cfg.synthesis.seed)


def run_cell(cell: Cell, real: Manifest, pool: Manifest | None, cell_dir: str | os.PathLike,
             cache: ImageCache | None = None, progress: bool = False,
             stage_cache: str | os.PathLike | None = None, dataset: str | None = None) -> dict:
    """Run one grid cell — the recipe: the bias-rate split of the real data, the strategy's
    balancing plan, its stages in plan order (each from the model of the stage it starts from),
    the group evaluator on the real test split — and return its record (also written to
    ``cell_dir/record.json``).

    Images come from ``cache`` (default: one built under ``cell_dir/cache``). Every stage runs
    through the one stage driver (:func:`ffr.train.stage.run_stage`) with the stage cache
    ``stage_cache`` (default ``cell_dir/stages``): a stage whose key was trained before is loaded
    from ``stage_cache/<key>/`` instead of being trained again. An objective that trains like
    another (``Objective.trains_as``: DFR trains like ERM) shares that objective's stage and only
    applies its finalize step (DFR's last-layer retraining), written in the cell folder. The
    record names what each stage trained on and what the cell evaluated on (digests, group
    counts), so that tracking reports the cell from it without drawing anything again.
    """
    from ffr.tracker import dataset_record

    t0 = time.time()
    cfg = cell.config
    cell_dir = Path(cell_dir)
    cell_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    if cache is None:
        cache = open_image_cache(cfg, real, pool, cell_dir / "cache")
    seed_everything(cell.seed)
    drawn = draw_cell(cell, real, pool)
    report, plan, val_manifest, test_manifest = drawn.report, drawn.plan, drawn.val, drawn.test
    if dist.is_main():  # under torchrun every rank runs the cell; one writes its files
        report.save(cell_dir / "split_report.json")
        (cell_dir / "plan.json").write_text(json.dumps(plan.summary(), indent=2) + "\n")
    test = cache.tensors(test_manifest)
    results: dict[str, Any] = {}
    stages = []
    history_lines = []
    for stage in plan.stages:
        before = results.get(stage.init_from)
        request = cell.request(stage.plan)
        spec = StageSpec(request, stage.train, val_manifest, init=before.model if before else None,
                         init_key=before.key if before else None)
        finalized = objectives(request)[0].trains_as is not None
        result = run_stage(spec, cell_dir / f"{stage.name}_{request.objective}.pt" if finalized else None,
                           cache_dir=Path(stage_cache) if stage_cache else cell_dir / "stages",
                           tensors=cache.tensors, progress=progress,
                           desc=f"{cell.strategy} {cfg.objective} r={cell.bias_rate} s={cell.seed} {stage.name}")
        results[stage.name] = result
        if result.history.is_file():
            history_lines += [json.dumps({**json.loads(line), "stage": stage.name})
                              for line in result.history.read_text().splitlines()]
        tcfg = request.settings
        stages.append({"name": stage.name, "key": result.key, "checkpoint": str(result.checkpoint),
                       "history": str(result.history), "objective": request.objective,
                       "objective_state": result.objective_state, "n_train": len(stage.train),
                       "best_epoch": result.best_epoch, "val": result.val,
                       "test": with_train_weighting(evaluate(result.model, test, device, tcfg.normalize,
                                                             tcfg.eval_batch_size, tcfg.amp), drawn.split),
                       "request": request.to_dict(), "train_data": dataset_record(stage.train)})
    if dist.is_main():  # the cell's stages' histories, in order (rank 0 alone wrote them)
        write_atomic(cell_dir / "history.jsonl", "".join(line + "\n" for line in history_lines))
    final = stages[-1]
    record = {
        "dataset": dataset or dataset_name(cfg),
        "strategy": cell.strategy, "objective": cfg.objective, "bias_rate": float(cell.bias_rate),
        "seed": int(cell.seed), "objective_options": cfg.objective_options.get(cfg.objective) or {},
        "hparams": cell.hparams or {}, "val": final["val"], "test": final["test"],
        "tie_break": final["request"]["settings"]["tie_break"],
        "stages": stages, "synthetic_per_group": plan.synthetic_per_group,
        "split": report.after, "absent": report.absent, "seconds": round(time.time() - t0, 2),
        "datasets": {"validation": dataset_record(val_manifest), "test": dataset_record(test_manifest)},
    }
    _write_json(cell_dir / "record.json", record)
    return record


def _write_json(path: Path, data) -> None:
    if dist.is_main():  # under torchrun every rank runs the cell; one writes
        write_json(path, data)


def dataset_name(cfg: ExperimentConfig) -> str:
    """A short name for the dataset of ``cfg``: ``demo`` (the digits benchmark), ``demo-<name>``
    (another built-in one) or the dataset folder's name."""
    if cfg.data.dataset == "demo":
        name = (cfg.data.demo or {}).get("name", "digits")
        return "demo" if name == "digits" else f"demo-{name}"
    return Path(cfg.data.dataset).name


def _diff(value, default):
    """The parts of ``value`` that differ from ``default`` (nested dicts compared key by key)."""
    if isinstance(value, dict) and isinstance(default, dict):
        out = {k: _diff(v, default.get(k)) for k, v in value.items() if k not in default or v != default[k]}
        return out
    return value


# What cell ids are measured against: the defaults, with the step budget as it was before it had
# defaults (off), so a cell made then keeps its id when its config says 0, and a config relying on
# today's default budget does not reuse a cell trained without it.
_ID_BASE = ExperimentConfig(**{stage: replace(getattr(ExperimentConfig(), stage), min_steps=0, max_steps=0, patience=0)
                                for stage in ("train", "pretrain", "finetune")})


def cell_id(cell: Cell, data: str = "") -> str:
    """A directory name that changes whenever anything ``cell`` depends on changes (``data``: the
    grid's :func:`data_identity`).

    Only the settings that differ from the defaults enter the hash, so adding a new option (with
    a default) to the config does not invalidate cells that are already finished.
    """
    from ffr import __version__

    cfg, strategy, rate, seed, hparams = cell.config, cell.strategy, cell.bias_rate, cell.seed, cell.hparams
    relevant = _diff(asdict(cfg), asdict(_ID_BASE))
    for k in ("strategies", "bias_rates", "seeds", "search", "overrides", "objectives", "objective_options",
              "datasets", "equal_search"):
        relevant.pop(k, None)
    if cfg.objective_options.get(cfg.objective):  # only the cell's own objective's options matter
        relevant["objective_options"] = cfg.objective_options[cfg.objective]
    blob = json.dumps({"cfg": relevant, "strategy": strategy, "rate": rate, "seed": seed, "hp": hparams,
                       "version": __version__, "data": data}, sort_keys=True, default=str)
    digest = hashlib.sha256(blob.encode()).hexdigest()[:10]
    return f"{strategy}_{cfg.objective}_r{rate}_s{seed}_{digest}"


def stage_cache_dir(path: str | os.PathLike | None) -> Path | None:
    """A ``stage_cache`` argument as an absolute folder (records then name its checkpoints from
    anywhere), or None for the default; a file there is a ValueError (the CLI: exit 2)."""
    if path is None:
        return None
    if not str(path).strip():
        raise ValueError("--stage-cache is empty: name a folder (the stage cache holds one folder per trained stage)")
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"--stage-cache {path}: not a folder (the stage cache holds one folder per trained stage)")
    return path.resolve()


def _run_cells(cfg: ExperimentConfig, real: Manifest, pool: Manifest | None, out: Path,
               cells: list[Cell], threads: int | None = None, dataset: str | None = None,
               data: str = "", stage_cache: Path | None = None) -> list[dict]:
    """Run ``cells`` one after the other (in a worker process when ``threads`` is set); ``data``
    is the grid's :func:`data_identity`; trained stages live in ``stage_cache``."""
    if threads:
        cap_threads(threads)
    caches: dict[int, ImageCache] = {}  # by resolution (a search may vary data.image_size)
    records = []
    for cell in cells:
        cdir = out / "cells" / cell_id(cell, data)
        size = cell.config.data.image_size
        if size not in caches:  # built by compare() already: this only opens it
            caches[size] = open_image_cache(cell.config, real, pool, out / "cache")
        records.append(run_cell(cell, real, pool, cdir, caches[size], stage_cache=stage_cache, dataset=dataset))
    return records


def _die_with_parent() -> None:
    """Worker initializer: on Linux, ask the kernel to end this worker when the process that runs
    the grid dies (a killed ``ffr compare`` must not leave orphans training on)."""
    import ctypes
    import signal

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass  # not Linux: the pool still shuts its workers down on a normal exit


def compare(cfg: ExperimentConfig, out_dir: str | os.PathLike, progress: bool = True,
            on_cell: Callable[[dict], None] | None = None, workers: int = 1, dataset: str | None = None,
            tracker: Tracker | None = None, verify: bool = False,
            stage_cache: str | os.PathLike | None = None) -> list[dict]:
    """Run the grid of one dataset — objectives × strategies × hyperparameters × bias rates ×
    seeds — skipping finished cells, choose hyperparameters per (objective, strategy, bias rate)
    by mean validation WGA over seeds, and write ``results.json``, ``results.md``, ``results.csv``.

    With ``workers`` > 1 the unfinished cells run in that many processes. Each trains with the
    same thread count as a lone run (``num_threads`` 0: the machine's CPUs), so the numbers do
    not depend on ``workers``; only adaptive threads (``num_threads: -1``) share the CPUs among
    the workers. Cells that differ only in hyperparameters run in one process, one after the
    other, so the stages they share (FFR's step 1) are trained once.

    ``tracker`` gets the resolved config, then a nested run per cell (:func:`ffr.tracker.log_cell`)
    and the result tables — after the local results are written, so a tracking server that goes
    away costs the tracking (one warning), never the results. One run at a time per ``out_dir``
    (:func:`ffr.locks.output_lock`). Cells are keyed on the data too (:func:`data_identity`): a
    dataset rewritten under the same path is computed afresh. ``verify`` checks every image
    file's content against the decoded cache (slow; size and time are always checked).

    ``stage_cache`` (default ``out_dir/stages``) is where trained stages are kept and looked up
    by key (:meth:`ffr.train.stage.StageSpec.key`: the stage's data, settings, trainer, model and
    starting point). Grids that share one reuse each other's stages: the grid of another search
    protocol over the same data trains only the candidates the first did not. A stage two runs
    set out to train at once is trained by the first; the other waits for it.
    """
    from ffr.checks import check_experiment
    from ffr.locks import output_lock

    check_experiment(cfg)  # every name and value, before any data is read or image rendered
    stages = stage_cache_dir(stage_cache) or Path(out_dir) / "stages"
    with output_lock(out_dir):
        return _compare(cfg, Path(out_dir), progress, on_cell, workers, dataset, tracker, verify, stages)


# What a grid writes inside its output folder: an entry there that is a link pointing elsewhere
# (planted, or left by another tool) would carry the grid's writes out of the folder.
OUTPUT_ENTRIES = ("cells", "cache", "stages", "data", "synthetic", "config.yaml", "results.json", "results.md",
                  "results.csv", "results.html", "group_accuracy.png")


def _compare(cfg: ExperimentConfig, out: Path, progress: bool, on_cell, workers: int, dataset: str | None,
             tracker: Tracker | None, verify: bool, stage_cache: Path) -> list[dict]:
    from concurrent.futures import ProcessPoolExecutor, as_completed
    import multiprocessing

    from ffr.results.tables import mark_selected, write_results

    out.mkdir(parents=True, exist_ok=True)
    for name in OUTPUT_ENTRIES:
        inside(out, name)  # a link planted in the output folder is refused, not followed
    dist.init_from_env()
    tracker = tracker or NullTracker()
    with dist.main_first():  # under torchrun rank 0 writes the data, the others then read it
        if dist.is_main():
            save_config(cfg, out / "config.yaml")
            tracker.log_params(flatten(cfg))
        real = prepare_real(cfg, out)
        tracker.log_dataset(real, "source", str(out / "data") if cfg.data.dataset == "demo" else cfg.data.dataset)
        needs_pool = any(STRATEGIES.get(s).uses_synthetic for s in cfg.strategies)
        pool = prepare_pool(cfg, real, pool_need(cfg, real), out, progress) if needs_pool else None
    cells = plan_cells(cfg)
    data = data_identity(real)
    done: dict[str, dict] = {}
    todo: dict[tuple, list] = {}
    for cell in cells:
        cdir = out / "cells" / cell_id(cell, data)
        if (cdir / "record.json").is_file():
            done[cdir.name] = read_json(cdir / "record.json")
        else:
            # cells of one (strategy, rate, seed) share stages (FFR's step 1, ERM for DFR): one process
            todo.setdefault((cell.strategy, cell.bias_rate, cell.seed), []).append(cell)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(cells), initial=len(done), desc="compare", unit="cell")

    def finished(batch: list[dict]) -> None:
        for record in batch:
            if bar is not None:
                bar.set_postfix(last=f"{record['objective']} {record['strategy']} r={record['bias_rate']} s={record['seed']} "
                                     f"wga={record['test']['worst_group_acc']:.2f}")
                bar.update(1)

    for size in sorted({cell.config.data.image_size for group in todo.values() for cell in group}):
        open_image_cache(cfg, real, pool, out / "cache", progress, size, verify)  # decode once, before any worker
    if workers <= 1 or len(todo) <= 1:
        for group in todo.values():
            finished(_run_cells(cfg, real, pool, out, group, dataset=dataset, data=data, stage_cache=stage_cache))
    else:
        threads = max(1, cpu_budget() // workers)  # the share of adaptive (num_threads -1) cells only
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=_die_with_parent) as ex:
            futures = [ex.submit(_run_cells, cfg, real, pool, out, group, threads, dataset, data, stage_cache)
                       for group in todo.values()]
            for fut in as_completed(futures):
                finished(fut.result())
    if bar is not None:
        bar.close()
    dist.barrier()  # under torchrun: rank 0 has written every record before any rank reads them
    records = []
    for cell in cells:
        cdir = out / "cells" / cell_id(cell, data)
        record = done.get(cdir.name) or read_json(cdir / "record.json")
        record["cell"] = cdir.name
        records.append(record)
        if on_cell:
            on_cell(record)
    records = mark_selected(records)
    if dist.is_main():  # local results first: a tracking server gone now cannot cost them
        write_results(records, out)
    try:
        if not isinstance(tracker, NullTracker):  # a cell is reported from its record: nothing is drawn again
            for cell, record in zip(cells, records):
                cell_tracker = tracker.child(record["cell"])
                log_cell(cell_tracker, cell.config, record)
                cell_tracker.close()
        if dist.is_main():
            from ffr.results.tables import summary_metrics

            from ffr.results.plots import plot_group_accuracy

            tracker.log_metrics(summary_metrics(records))  # the headline on the parent run itself
            figure = plot_group_accuracy(records, out / "group_accuracy.png")
            for path in [out / n for n in ("results.md", "results.html", "results.csv", "results.json")] + [figure]:
                tracker.log_artifact(str(path))
            tracker.set_description((out / "results.md").read_text())
    except Exception as e:  # noqa: BLE001  (any tracking backend's failure: the results are safe on disk)
        from ffr.paths import redact_uri

        try:
            tracker.broken = True  # closing the run may fail too: this warning is the one report
        except AttributeError:
            pass
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        print(f"ffr: warning: tracking stopped ({redact_uri(first)}); the local results are complete in {out}",
              file=sys.stderr)
    return records


def sweep(cfg: ExperimentConfig, out_dir: str | os.PathLike, progress: bool = True,
          on_cell: Callable[[dict], None] | None = None, plots: bool = True, workers: int = 1,
          stage_cache: str | os.PathLike | None = None) -> list[dict]:
    """``ffr sweep``: :func:`compare` for every dataset of ``cfg.datasets`` (each in
    ``out_dir/<name>``; or the one dataset of ``cfg.data`` in ``out_dir`` itself), then the
    combined ``results.json``/``.md``/``.csv`` and the plots (:mod:`ffr.results.plots`) in ``out_dir``.
    Resumable: a rerun recomputes nothing that finished. ``stage_cache``: one stage cache for
    every dataset (default: each dataset's ``stages`` folder; see :func:`compare`)."""
    from ffr.checks import check_sweep
    from ffr.locks import output_lock

    check_sweep(cfg)
    out = Path(out_dir)
    with output_lock(out):
        return _sweep(cfg, out, progress, on_cell, plots, workers, stage_cache)


def _sweep(cfg: ExperimentConfig, out: Path, progress: bool, on_cell, plots: bool, workers: int,
           stage_cache: str | os.PathLike | None = None) -> list[dict]:
    from ffr.results.tables import mark_selected, write_results

    if not cfg.datasets:
        records = compare(cfg, out, progress, on_cell, workers, stage_cache=stage_cache)
    else:
        out.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out / "config.yaml")
        records = []
        for name, overrides in cfg.datasets.items():
            eff = with_overrides(cfg, dict(overrides or {}))
            eff.datasets = {}
            records += compare(eff, out / name, progress, on_cell, workers, dataset=name, stage_cache=stage_cache)
        records = mark_selected(records)
        write_results(records, out)
    if plots:
        from ffr.results.plots import write_plots

        write_plots(records, out)
    return records
