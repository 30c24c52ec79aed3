"""The steps of a sweep spread over many workers: what the Kubeflow ``sweep`` pipeline's tasks call,
each a function over folders — the same grid as ``ffr sweep`` (:func:`ffr.experiment.sweep`), the
same recipe, stages, cells, selection and tables, with the trained stages in a stage store every
task reaches (:func:`open_store`).

1. :func:`sweep_data` — each dataset's real data, synthetic pool and decoded-image cache, in one
   folder (the ``ffr sweep`` layout of each dataset);
2. :func:`sweep_plan` — the distinct trained stages by key and dependency level, in batches
   (:func:`ffr.sweep_plan.plan_sweep`);
3. :func:`train_batch` — one batch of stages of one level, each trained once in the store;
4. :func:`evaluate_batch` — one batch of cells, run from the store (every stage found, none
   trained), their records written;
5. :func:`sweep_report` — every record collected, hyperparameters selected by mean validation WGA
   over seeds, ``results.json/md/csv/html`` and the plots, as ``ffr sweep`` writes them.
"""

from __future__ import annotations

import os
from pathlib import Path

from ffr.config import ExperimentConfig
from ffr.data.manifest import Manifest
from ffr.sweep_plan import sweep_datasets


class FolderStore:
    """A stage store in a folder every task reaches (a shared volume; the local runner's run
    folder): the stage cache itself, whose lock and summary-last writes already make a stage
    trained once and never read half-written (:func:`ffr.train.stage.run_stage`)."""

    def __init__(self, path: str | os.PathLike):
        self.local = Path(path).resolve()
        self.local.mkdir(parents=True, exist_ok=True)
        self.trained: list[str] = []

    def fetch(self, key: str) -> bool:
        return (self.local / key / "model.pt.json").is_file()

    def ensure(self, key: str, train):
        result = train(self.local)
        if not getattr(result, "reused", True):
            self.trained.append(key)
        return result


def open_store(uri: str):
    """The stage store at ``uri``: ``s3://bucket/prefix`` (:class:`ffr.integrations.stage_store.
    S3StageStore`, the ``ffr-s3`` secret's credentials) or a folder (:class:`FolderStore`)."""
    from ffr.rules import ConfigError

    if not uri:
        raise ConfigError("stage_store: empty; give the sweep a store every task reaches: s3://bucket/prefix, or a "
                          "shared folder")
    if uri.startswith("s3://"):
        from ffr.integrations.stage_store import S3StageStore

        return S3StageStore(uri)
    return FolderStore(uri)


class _Context:
    """One dataset's data, opened once per task: effective config, real data, pool, image caches."""

    def __init__(self, cfg: ExperimentConfig, data_root: Path):
        self.configs = sweep_datasets(cfg)
        self.root = data_root
        self._open: dict[str, tuple] = {}

    def dataset(self, name: str):
        if name not in self._open:
            folder = self.root / name
            real = Manifest.load(folder / "data")
            pool_dir = _pool_dir(self.configs[name], folder)
            pool = Manifest.load(pool_dir) if pool_dir.is_dir() else None
            self._open[name] = (self.configs[name], real, pool, {})
        return self._open[name]

    def cache(self, name: str, size: int):
        from ffr.experiment import open_image_cache

        eff, real, pool, caches = self.dataset(name)
        if size not in caches:
            caches[size] = open_image_cache(eff, real, pool, self.root / name / "cache", image_size=size)
        return caches[size]


def _pool_dir(cfg: ExperimentConfig, folder: Path) -> Path:
    return folder / "synthetic" / f"{cfg.synthesis.backend}-seed{cfg.synthesis.seed}"


def sweep_data(cfg: ExperimentConfig, out_dir: str | os.PathLike, progress: bool = False) -> dict:
    """Each dataset of the sweep in ``out_dir/<name>/`` as ``ffr sweep`` lays it out: the real data
    (``data/``: the built-in benchmark built there, or the user's dataset with its images linked
    in, so the folder travels alone), the synthetic pool every strategy and bias rate draws from,
    and the decoded-image cache at every resolution the grid uses. Returns rows per dataset."""
    from ffr.balance import STRATEGIES
    from ffr.experiment import open_image_cache, pool_need, prepare_pool, prepare_real
    from ffr.grid import plan_cells
    from ffr.steps import materialize

    out = Path(out_dir)
    summary = {}
    for name, eff in sweep_datasets(cfg).items():
        folder = out / name
        real = prepare_real(eff, folder)
        if eff.data.dataset != "demo":  # a user's dataset: its rows and images, inside the folder
            real = materialize(real, folder / "data")
            real.save(folder / "data")
            real = Manifest.load(folder / "data")
        needs_pool = any(STRATEGIES.get(s).uses_synthetic for s in eff.strategies)
        pool = prepare_pool(eff, real, pool_need(eff, real), folder, progress) if needs_pool else None
        for size in sorted({c.config.data.image_size for c in plan_cells(eff)}):
            open_image_cache(eff, real, pool, folder / "cache", progress, size)
        summary[name] = {"real": len(real), "synthetic": 0 if pool is None else len(pool)}
    return summary


def sweep_plan(cfg: ExperimentConfig, data_dir: str | os.PathLike, stages_per_task: int = 8,
               cells_per_task: int = 16) -> dict:
    """:func:`ffr.sweep_plan.plan_sweep` over the data :func:`sweep_data` wrote."""
    from ffr.sweep_plan import plan_sweep

    ctx = _Context(cfg, Path(data_dir))
    data = {name: ctx.dataset(name)[1:3] for name in ctx.configs}
    return plan_sweep(cfg, data, stages_per_task, cells_per_task)


def train_batch(cfg: ExperimentConfig, data_dir: str | os.PathLike, batch: dict, store) -> dict:
    """Train one batch of stages (:func:`sweep_plan`'s) into ``store``: each with its cell's
    request, from the stage it is planned to start from (a lower level's, found in the store), as
    the objective it trains as (DFR's stage is ERM's: its finalize step belongs to the cell).
    Every stage is trained once across all tasks (the store's claim); one found is not trained.
    Returns ``{"trained": keys, "found": keys}``."""
    import dataclasses

    from ffr.grid import draw_cell, stage_keys
    from ffr.grid import plan_cells
    from ffr.train.stage import StageSpec, load_cached, objectives, run_stage

    ctx = _Context(cfg, Path(data_dir))
    cells: dict[str, list] = {}
    drawn: dict[tuple, object] = {}
    trained, found = [], []
    for entry in batch["stages"]:
        name = entry["dataset"]
        eff, real, pool, _ = ctx.dataset(name)
        cell = cells.setdefault(name, plan_cells(eff))[int(entry["cell"])]
        coords = (name, cell.strategy, cell.bias_rate, cell.seed)
        if coords not in drawn:
            drawn[coords] = draw_cell(cell, real, pool)
        d = drawn[coords]
        keys = {stage: (key, init) for stage, key, init in stage_keys(cell, d)}
        key, init_key = keys[entry["stage"]]
        if key != entry["key"]:
            raise ValueError(f"stage {entry['stage']} of cell {entry['cell']} ({name}): planned as {entry['key']}, "
                             f"computed as {key}: the data or the code changed since the plan")
        stage = next(s for s in d.plan.stages if s.name == entry["stage"])
        request = cell.request(stage.plan)
        trainer = objectives(request)[1]
        request = dataclasses.replace(request, objective=trainer.name, objective_options=dict(trainer.options))
        init = None
        if init_key is not None:
            if not store.fetch(init_key):
                raise ValueError(f"stage {entry['stage']} starts from stage {init_key}, which the store does not hold "
                                 "yet: train the lower level first")
            init, _ = load_cached(store.local / init_key / "model.pt", init_key)  # verified: a damaged one is an error
        tensors = ctx.cache(name, request.image_size).tensors
        spec = StageSpec(request, stage.train, d.val, init=init, init_key=init_key)
        result = store.ensure(key, lambda local: run_stage(spec, cache_dir=local, tensors=tensors))
        (found if result.reused else trained).append(key)
    return {"trained": trained, "found": found}


def evaluate_batch(cfg: ExperimentConfig, data_dir: str | os.PathLike, batch: dict, store,
                   out_dir: str | os.PathLike) -> list[dict]:
    """Run one batch of cells (:func:`ffr.experiment.run_cell`) with ``store`` as their stage
    cache — every stage is in it, so each is loaded, not trained — writing each cell's folder
    (record, histories, a finalized model such as DFR's) to ``out_dir/<dataset>/cells/<id>/``.
    Returns the records."""
    import json

    from ffr.experiment import cell_id, data_identity, run_cell
    from ffr.grid import draw_cell, stage_keys
    from ffr.grid import plan_cells

    ctx = _Context(cfg, Path(data_dir))
    records, cells = [], {}
    for entry in batch["cells"]:
        name = entry["dataset"]
        eff, real, pool, _ = ctx.dataset(name)
        cell = cells.setdefault(name, plan_cells(eff))[int(entry["cell"])]
        for _, key, _ in stage_keys(cell, draw_cell(cell, real, pool)):
            if not store.fetch(key):
                raise ValueError(f"cell {cell_id(cell)} needs stage {key}, which the store does not hold: train "
                                 "every level first")
        cdir = Path(out_dir) / name / "cells" / cell_id(cell, data_identity(real))
        dataset = None if name == "grid" else name
        record = run_cell(cell, real, pool, cdir, ctx.cache(name, cell.config.data.image_size),
                          stage_cache=store.local, dataset=dataset)
        (cdir / "plan_index.json").write_text(json.dumps([name, int(entry["cell"])]))
        records.append({**record, "cell": cdir.name})
    return records


def sweep_report(cfg: ExperimentConfig, record_dirs: list, out_dir: str | os.PathLike, plots: bool = True) -> list[dict]:
    """Every cell's record from the evaluation tasks' folders, in the grid's order; hyperparameters
    selected per (dataset, objective, strategy, bias rate) by mean validation WGA over seeds
    (:func:`ffr.results.tables.mark_selected`, as ``ffr sweep``); ``results.*`` per dataset and
    for the whole sweep, and the plots, in ``out_dir``. Returns the records."""
    import json

    from ffr.grid import plan_cells
    from ffr.results.tables import mark_selected, write_results

    found = {}
    for folder in record_dirs:
        for path in Path(folder).glob("*/cells/*/plan_index.json"):
            name, index = json.loads(path.read_text())
            found[(name, int(index))] = (json.loads((path.parent / "record.json").read_text()), path.parent)
    out = Path(out_dir)
    everything = []
    for name, eff in sweep_datasets(cfg).items():
        records = []
        for i, cell in enumerate(plan_cells(eff)):
            if (name, i) not in found:
                raise ValueError(f"no record of cell {cell.strategy} {cell.objective} r={cell.bias_rate} s={cell.seed} "
                                 f"{cell.hparams} ({name}): an evaluation task is missing")
            record, cdir = found[(name, i)]
            records.append({**record, "cell": cdir.name})
        records = mark_selected(records)
        if name != "grid":
            write_results(records, out / name)
        everything += records
    everything = mark_selected(everything)
    write_results(everything, out)
    if plots:
        from ffr.results.plots import write_plots

        write_plots(everything, out)
    return everything


def _cell_of(cfg: ExperimentConfig, record: dict):
    """The grid cell a record came from (its dataset's effective config, its coordinates)."""
    from ffr.grid import plan_cells

    name = record.get("dataset") if record.get("dataset") in sweep_datasets(cfg) else "grid"
    for cell in plan_cells(sweep_datasets(cfg)[name]):
        if (cell.strategy, cell.objective, cell.bias_rate, cell.seed, cell.hparams) == \
                (record["strategy"], record["objective"], record["bias_rate"], record["seed"], record["hparams"]):
            return name, cell
    raise ValueError(f"record {record.get('cell')}: no such cell in the sweep's config")


def report_to_mlflow(cfg: ExperimentConfig, records: list[dict], results_dir: str | os.PathLike,
                     tracking_uri: str | None, experiment: str, pipeline_run_id: str) -> str | None:
    """The sweep's results on the pipeline's MLflow run: the headline (the selected rows' mean
    test metrics), the tables and plots, and one nested run per cell tagged with its dataset,
    strategy, objective, bias rate, seed, candidate and whether it was selected (so the runs
    table groups and compares them). Nothing without a tracking server; returns the run's id."""
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri or not pipeline_run_id:
        return None
    from ffr.integrations.mlflow_runs import pipeline_run
    from ffr.integrations.mlflow_server import configure
    from ffr.integrations.mlflow_tracker import MlflowTracker
    from ffr.results.tables import summary_metrics
    from ffr.tracker import log_cell

    configure(uri)
    parent = pipeline_run(uri, experiment, pipeline_run_id)
    if parent is None:
        return None
    tracker = MlflowTracker(parent)
    for record in records:
        name, cell = _cell_of(cfg, record)
        child = tracker.child(record["cell"])
        child.set_tags({"ffr.dataset": name, "ffr.selected": record["selected"]})  # log_cell tags the rest
        log_cell(child, cell.config, record, log_model=False)
        child.close()
    tracker.log_metrics(summary_metrics(records))
    from ffr.config import save_config

    save_config(cfg, Path(results_dir) / "config.yaml")  # the grid this run ran (not a parameter: too long)
    for path in sorted(Path(results_dir).glob("*")):
        if path.is_file():
            tracker.log_artifact(str(path))
    return parent


def register_selection(cfg: ExperimentConfig, data_dir: str | os.PathLike, results_dir: str | os.PathLike,
                       record_dirs: list, store, name: str, policy, tracking_uri: str | None, experiment: str,
                       pipeline_run_id: str) -> dict:
    """Register the FFR configuration validation chose: among FFR's selected candidates (one per
    dataset, objective and bias rate), the one with the best mean validation WGA over seeds; of its
    seeds, the cell with the best validation WGA. Its model becomes the challenger through the
    promotion gate (:func:`ffr.integrations.model_registry.register_pipeline_model`, the champion
    evaluated on the same test split first), with the candidate, the seeds, the column's numbers
    and the best baseline's as lineage. Returns the decision record."""
    import json
    import tempfile

    from ffr.grid import draw_cell, stage_keys
    from ffr.steps import materialize

    records = json.loads(Path(results_dir, "results.json").read_text())
    chosen = [r for r in records if r["strategy"] == "ffr" and r.get("selected")]
    if not chosen:
        return {"registered": False, "summary": "the sweep trained no FFR: nothing registered"}
    columns: dict[tuple, list] = {}
    for r in chosen:
        columns.setdefault((r["dataset"], r["objective"], r["bias_rate"]), []).append(r)

    def mean(rows, split):
        return sum(r[split]["worst_group_acc"] or 0.0 for r in rows) / len(rows)

    column = max(sorted(columns), key=lambda c: mean(columns[c], "val"))
    best = max(columns[column], key=lambda r: r["val"]["worst_group_acc"] or 0.0)
    ds, cell = _cell_of(cfg, best)
    folders = [p for d in record_dirs for p in Path(d).glob(f"*/cells/{best['cell']}")]
    if not folders:
        raise ValueError(f"cell {best['cell']}: its folder is in none of the evaluation tasks' outputs")
    eff, real, pool, _ = _Context(cfg, Path(data_dir)).dataset(ds)
    drawn = draw_cell(cell, real, pool)
    last = best["stages"][-1]
    finalized = folders[0] / f"{last['name']}_{last['objective']}.pt"
    if finalized.is_file():
        checkpoint = finalized
    else:
        key = stage_keys(cell, drawn)[-1][1]
        if not store.fetch(key):
            raise ValueError(f"stage {key} of cell {best['cell']} is not in the stage store")
        checkpoint = store.local / key / "model.pt"
    baselines = [r for r in records if r["strategy"] != "ffr" and r.get("selected")
                 and (r["dataset"], r["objective"], r["bias_rate"]) == column]
    by_strategy: dict[str, list] = {}
    for r in baselines:
        by_strategy.setdefault(r["strategy"], []).append(r)
    rival = max(sorted(by_strategy), key=lambda s: mean(by_strategy[s], "val"), default=None)
    lineage = {"pipeline_run_id": pipeline_run_id, "sweep.dataset": ds, "sweep.objective": cell.objective,
               "sweep.bias_rate": str(cell.bias_rate), "sweep.candidate": json.dumps(cell.hparams, sort_keys=True),
               "sweep.seeds": json.dumps(sorted(r["seed"] for r in columns[column])), "sweep.cell": best["cell"],
               "sweep.ffr_mean_val_wga": f"{mean(columns[column], 'val'):.4f}",
               "sweep.ffr_mean_test_wga": f"{mean(columns[column], 'test'):.4f}"}
    if rival is not None:
        lineage.update({"sweep.best_baseline": f"{rival} {json.dumps(by_strategy[rival][0]['hparams'], sort_keys=True)}",
                        "sweep.best_baseline_mean_val_wga": f"{mean(by_strategy[rival], 'val'):.4f}",
                        "sweep.best_baseline_mean_test_wga": f"{mean(by_strategy[rival], 'test'):.4f}"})
    metrics = {**best["test"], "split": "test", "data_digest": drawn.test.digest()}
    from ffr.integrations.model_registry import register_pipeline_model

    with tempfile.TemporaryDirectory() as tmp:
        test = materialize(drawn.test, Path(tmp) / "test")
        test.save(Path(tmp) / "test")
        result = register_pipeline_model(tracking_uri, name, str(checkpoint), metrics, str(Path(tmp) / "test"),
                                         lineage, policy, "", experiment, pipeline_run_id)
    return {**result, "lineage": lineage}
