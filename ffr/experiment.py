"""Experiments: one grid cell (strategy × bias rate × seed × hyperparameters) run end to end, and
the resumable grid behind ``ffr compare``.

A cell: bias-rate split of the real data → balancing plan → the training loop once per stage
(FFR: step 1 on synthetic, step 2 on real initialised from step 1's selected checkpoint) → the
group evaluator on the real test split. A finished cell leaves ``record.json`` and is not
recomputed.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ffr.balance import balance, pool_requirement
from ffr.config import ExperimentConfig, save_config, with_overrides
from ffr.data.loading import TensorData, load_images
from ffr.data.manifest import Manifest
from ffr.metrics import flat_metrics
from ffr.data.splits import bias_rate_split
from ffr.tracking import NullTracker, Tracker, epoch_metrics, flatten
from ffr.train.backbones import create_model
from ffr.train.loop import evaluate, fit, resolve_device, save_checkpoint, seed_everything
from ffr.train.objectives import create_objective


class ImageBank:
    """Decoded images of several manifests, decoded once and gathered by absolute path, so the
    cells of a grid never decode an image twice."""

    def __init__(self, manifests: list[Manifest], image_size: int):
        self.image_size = image_size
        self._index: dict[str, int] = {}
        self.images = torch.empty(0, 3, image_size, image_size, dtype=torch.uint8)
        for m in manifests:
            self._add(m)

    def _add(self, manifest: Manifest) -> list[str]:
        paths = [str(p) for p in manifest.abs_paths()]
        new = [i for i, p in enumerate(paths) if p not in self._index]
        if new:
            sub = Manifest(manifest.frame.iloc[new], manifest.card, manifest.root)
            base = len(self.images)
            for j, i in enumerate(new):
                self._index[paths[i]] = base + j
            self.images = torch.cat([self.images, load_images(sub, self.image_size)])
        return paths

    def tensors(self, manifest: Manifest) -> TensorData:
        """The rows of ``manifest`` as :class:`TensorData` (images decoded on first sight)."""
        paths = self._add(manifest)
        idx = torch.tensor([self._index[p] for p in paths], dtype=torch.long)
        return TensorData(
            images=self.images[idx],
            labels=torch.from_numpy(manifest.labels()),
            biases=torch.from_numpy(manifest.biases()),
            sources=torch.from_numpy(manifest.is_synthetic().astype(np.int64)),
            card=manifest.card,
        )


def prepare_real(cfg: ExperimentConfig, workdir: str | os.PathLike) -> Manifest:
    """The real dataset: the built-in demo (generated under ``workdir/data``) or a dataset
    directory holding ``manifest.csv`` + ``card.json``."""
    if cfg.data.dataset == "demo":
        from ffr.data.demo import DemoSpec, make_demo

        return make_demo(Path(workdir) / "data", DemoSpec(**cfg.data.demo))
    return Manifest.load(cfg.data.dataset)


def pool_need(cfg: ExperimentConfig, real: Manifest) -> dict[tuple[str, str], int]:
    """Synthetic images per group that serve every strategy and bias rate of the grid."""
    counts = []
    for rate in cfg.bias_rates:
        split, _ = bias_rate_split(real, rate, 0, cfg.data.min_val_per_group)
        counts.append(split.select(split="train", source="real").group_counts())
    return pool_requirement(cfg.strategies, counts)


def prepare_pool(cfg: ExperimentConfig, real: Manifest, need: dict[tuple[str, str], int],
                 workdir: str | os.PathLike, progress: bool = False) -> Manifest:
    """Render the synthetic pool with the configured backend (resumable: images on disk are kept)."""
    from ffr.synthesis import create_backend, synthesize

    backend = create_backend(cfg.synthesis.backend, real.card, **cfg.synthesis.options)
    out = Path(workdir) / "synthetic" / f"{cfg.synthesis.backend}-seed{cfg.synthesis.seed}"
    return synthesize(backend, real.card, need, out, base_seed=cfg.synthesis.seed,
                      batch_size=cfg.synthesis.batch_size, progress=progress)


def stage_config(cfg: ExperimentConfig, stage: str):
    return {"train": cfg.train, "pretrain": cfg.pretrain, "finetune": cfg.finetune}[stage]


def run_cell(cfg: ExperimentConfig, real: Manifest, pool: Manifest | None, strategy: str,
             bias_rate: float, seed: int, cell_dir: str | os.PathLike, bank: ImageBank | None = None,
             hparams: dict | None = None, progress: bool = False, tracker: Tracker | None = None) -> dict:
    """Run one grid cell and return its record (also written to ``cell_dir/record.json``).
    ``tracker`` gets the cell's parameters and test evaluation, and a nested run per stage."""
    t0 = time.time()
    tracker = tracker or NullTracker()
    tracker.log_params({"strategy": strategy, "bias_rate": bias_rate, "seed": seed,
                        **flatten(hparams or {}, "hparams."), **flatten(cfg)})
    cell_dir = Path(cell_dir)
    cell_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(cfg.device)
    bank = bank or ImageBank([real] + ([pool] if pool is not None else []), cfg.data.image_size)
    seed_everything(seed)
    split, report = bias_rate_split(real, bias_rate, seed, cfg.data.min_val_per_group)
    report.save(cell_dir / "split_report.json")
    plan = balance(strategy, split.select(split="train", source="real"), pool)
    (cell_dir / "plan.json").write_text(json.dumps(plan.summary(), indent=2) + "\n")
    val = bank.tensors(split.select(split="val", source="real"))
    test = bank.tensors(split.select(split="test", source="real"))
    tracker.log_dataset(split.select(split="val", source="real"), "validation")
    tracker.log_dataset(split.select(split="test", source="real"), "test")
    n_classes = len(real.card.classes)
    models: dict[str, Any] = {}
    stages = []
    history_path = cell_dir / "history.jsonl"
    history_path.unlink(missing_ok=True)
    for stage in plan.stages:
        tcfg = stage_config(cfg, "train" if stage.name == "train" else stage.name)
        st = tracker.child(stage.name)
        st.log_params({"stage": stage.name, "init_from": stage.init_from, **flatten(tcfg, f"{stage.name}.")})
        st.log_dataset(stage.train, "train")
        # FFR's step 1 trains on a balanced synthetic set: plain ERM. Every other stage uses the
        # configured objective.
        objective = create_objective("erm" if stage.name == "pretrain" else cfg.objective)
        model = create_model(cfg.backbone, n_classes, cfg.weights)
        if stage.init_from:
            model.load_state_dict(models[stage.init_from].state_dict())

        def log(rec, _stage=stage.name):
            with history_path.open("a") as f:
                f.write(json.dumps({"stage": _stage, **rec}) + "\n")
            st.log_metrics(*epoch_metrics(rec))

        result = fit(model, bank.tensors(stage.train), val, objective, tcfg, device, seed=seed, log=log,
                     progress=progress, desc=f"{strategy} r={bias_rate} s={seed} {stage.name}")
        models[stage.name] = result.model
        meta = {"backbone": cfg.backbone, "classes": list(real.card.classes),
                "bias_values": list(real.card.bias_values), "image_size": cfg.data.image_size,
                "normalize": tcfg.normalize, "stage": stage.name, "strategy": strategy,
                "best_epoch": result.best_epoch}
        save_checkpoint(cell_dir / f"{stage.name}.pt", result.model, meta)
        stages.append({"name": stage.name, "n_train": len(stage.train), "best_epoch": result.best_epoch,
                       "val": result.best_val,
                       "test": evaluate(result.model, test, device, tcfg.normalize, tcfg.eval_batch_size)})
        st.log_history(result.history)
        st.log_evaluation(stages[-1]["test"], "test")
        if stage is plan.stages[-1]:
            st.log_model(result.model, meta)
        st.close()
    final = stages[-1]
    record = {
        "strategy": strategy, "objective": cfg.objective, "bias_rate": float(bias_rate), "seed": int(seed),
        "hparams": hparams or {}, "val": final["val"], "test": final["test"],
        "stages": stages, "synthetic_per_group": plan.synthetic_per_group,
        "split": report.after, "seconds": round(time.time() - t0, 2),
    }
    _write_json(cell_dir / "record.json", record)
    tracker.log_metrics(flat_metrics(record["val"], "val"))
    tracker.log_evaluation(record["test"], "test")
    return record


def _write_json(path: Path, data) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def _grid(search: dict, strategy: str) -> list[dict]:
    space = {**search.get("*", {}), **search.get(strategy, {})}
    if not space:
        return [{}]
    keys = sorted(space)
    return [dict(zip(keys, vals)) for vals in itertools.product(*(space[k] for k in keys))]


def cell_id(cfg: ExperimentConfig, strategy: str, rate: float, seed: int, hparams: dict) -> str:
    """A directory name that changes whenever anything the cell depends on changes."""
    relevant = asdict(cfg)
    for k in ("strategies", "bias_rates", "seeds", "search", "overrides"):
        relevant.pop(k)
    blob = json.dumps({"cfg": relevant, "strategy": strategy, "rate": rate, "seed": seed, "hp": hparams},
                      sort_keys=True, default=str)
    digest = hashlib.sha256(blob.encode()).hexdigest()[:10]
    return f"{strategy}_{cfg.objective}_r{rate}_s{seed}_{digest}"


def plan_cells(cfg: ExperimentConfig) -> list[tuple[str, float, int, dict, ExperimentConfig]]:
    """Every (strategy, bias rate, seed, hparams, effective config) of the grid."""
    cells = []
    for strategy in cfg.strategies:
        for hp in _grid(cfg.search, strategy):
            eff = with_overrides(cfg, {**cfg.overrides.get(strategy, {}), **hp})
            for rate in cfg.bias_rates:
                for seed in cfg.seeds:
                    cells.append((strategy, float(rate), int(seed), hp, eff))
    return cells


def compare(cfg: ExperimentConfig, out_dir: str | os.PathLike, progress: bool = True,
            on_cell: Callable[[dict], None] | None = None, tracker: Tracker | None = None) -> list[dict]:
    """Run the grid (skipping finished cells), choose hyperparameters per (strategy, bias rate)
    by mean validation WGA over seeds, and write ``results.json``, ``results.md``, ``results.csv``.
    ``tracker`` gets the config, a nested run per cell run here, and the result tables."""
    tracker = tracker or NullTracker()
    from ffr.report import mark_selected, write_results

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    tracker.log_params(flatten(cfg))
    real = prepare_real(cfg, out)
    needs_pool = any(s != "none" for s in cfg.strategies)
    pool = prepare_pool(cfg, real, pool_need(cfg, real), out, progress) if needs_pool else None
    cells = plan_cells(cfg)
    bank = None
    records = []
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(cells), desc="compare", unit="cell")
    for strategy, rate, seed, hp, eff in cells:
        cdir = out / "cells" / cell_id(eff, strategy, rate, seed, hp)
        done = cdir / "record.json"
        if done.is_file():
            record = json.loads(done.read_text())
        else:
            if bank is None:
                bank = ImageBank([real] + ([pool] if pool is not None else []), cfg.data.image_size)
            cell_tracker = tracker.child(cdir.name)
            record = run_cell(eff, real, pool, strategy, rate, seed, cdir, bank, hp, tracker=cell_tracker)
            cell_tracker.close()
        record["cell"] = cdir.name
        records.append(record)
        if on_cell:
            on_cell(record)
        if bar is not None:
            bar.set_postfix(last=f"{strategy} r={rate} s={seed} wga={record['test']['worst_group_acc']:.2f}")
            bar.update(1)
    if bar is not None:
        bar.close()
    records = mark_selected(records)
    write_results(records, out)
    for name in ("results.md", "results.csv", "results.json"):
        tracker.log_artifact(str(out / name))
    return records
