"""The grid of an experiment: which cells (strategy × bias rate × seed × hyperparameters ×
objective) a config asks for, each cell's stages as requests, and what a cell draws from the data
before any training (:func:`draw_cell`: its bias-rate split and balancing plan; :func:`stage_keys`:
the keys its stages train under). Planning only — nothing is trained here; :mod:`ffr.experiment` runs the cells
(:func:`ffr.experiment.run_cell`: split, balance, the stages in plan order, evaluation),
:mod:`ffr.checks` validates every one, the Kubeflow run plan (:mod:`ffr.runform`) and ``ffr
train`` take their requests from :meth:`Cell.requests` / :meth:`ffr.train.request.StageRequest.for_stage`."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

from ffr.balance import STRATEGIES, StagePlan, balance
from ffr.config import ExperimentConfig, with_overrides
from ffr.data.manifest import Manifest
from ffr.data.splits import bias_rate_split
from ffr.train.request import StageRequest
from ffr.train.stage import StageSpec, identity, objectives


@dataclass
class Cell:
    """One cell of a grid: ``strategy`` at ``bias_rate`` and ``seed`` with one hyperparameter
    candidate ``hparams``, for one objective; ``config`` is the effective config (the strategy's
    overrides, the candidate and the objective applied)."""

    strategy: str
    bias_rate: float
    seed: int
    hparams: dict = field(default_factory=dict)
    config: ExperimentConfig = field(default_factory=ExperimentConfig)

    @property
    def objective(self) -> str:
        return self.config.objective

    @property
    def stages(self) -> tuple[StagePlan, ...]:
        """The strategy's stage plan, in training order (a stage's ``init_from`` comes before it)."""
        return STRATEGIES.get(self.strategy).stages

    def request(self, plan: StagePlan) -> StageRequest:
        """The request of stage ``plan`` of this cell (no data references: a cell's manifests
        are drawn in memory)."""
        return StageRequest.for_stage(self.config, plan, self.seed, self.strategy)

    def requests(self) -> dict[str, StageRequest]:
        """Every stage's request, by stage name, in training order."""
        return {plan.name: self.request(plan) for plan in self.stages}


def objectives_of(cfg: ExperimentConfig) -> list[str]:
    """The objectives a grid runs: ``objectives``, or the single ``objective``."""
    return list(cfg.objectives) or [cfg.objective]


def _concerns(key: str, strategy: str, objective: str) -> bool:
    """Whether search key ``key`` can change a cell of ``strategy`` × ``objective``: a stage's
    settings concern only strategies with that stage, an objective's options only that objective.
    Other keys would only repeat identical cells."""
    head, _, rest = key.partition(".")
    if head in ("train", "pretrain", "finetune"):
        return head in STRATEGIES.get(strategy).stage_names
    if head == "objective_options":
        return rest.partition(".")[0] == objective
    return True


def _grid(search: dict, strategy: str, objective: str | None = None) -> list[dict]:
    space = {**search.get("*", {}), **search.get(strategy, {})}
    if objective is not None:
        space = {k: v for k, v in space.items() if _concerns(k, strategy, objective)}
    if not space:
        return [{}]
    keys = sorted(space)
    return [dict(zip(keys, vals)) for vals in itertools.product(*(space[k] for k in keys))]


def search_budget(cfg: ExperimentConfig) -> dict[str, dict[str, int]]:
    """How many hyperparameter candidates each strategy chooses among, per objective
    (``{objective: {strategy: n}}``) — what ``equal_search`` requires to be the same."""
    return {o: {s: len(_grid(cfg.search, s, o)) for s in cfg.strategies} for o in objectives_of(cfg)}


def unequal_budgets(cfg: ExperimentConfig) -> list[str]:
    """One line per objective whose strategies choose among different numbers of candidates."""
    return [f"{o}: " + ", ".join(f"{s} {n}" for s, n in counts.items())
            for o, counts in search_budget(cfg).items() if len(set(counts.values())) > 1]


def dotted(hp: dict, prefix: str = "") -> dict:
    """Flatten a hyperparameter choice into dotted overrides. A search value may be a mapping —
    a set of overrides under its key, e.g. ``finetune: [{}, {l2sp: 0.1}, {lpft_epochs: 3}]`` — so
    alternatives that set several keys together are one axis, not a product."""
    out = {}
    for k, v in hp.items():
        key = f"{prefix}.{k}" if prefix else k
        if isinstance(v, dict):
            out.update(dotted(v, key))
        else:
            out[key] = v
    return out


def plan_cells(cfg: ExperimentConfig) -> list[Cell]:
    """Every cell of the grid, for every objective (the effective config's ``objective``)."""
    cells = []
    for objective in objectives_of(cfg):
        for strategy in cfg.strategies:
            for hp in _grid(cfg.search, strategy, objective):
                eff = with_overrides(cfg, {**cfg.overrides.get(strategy, {}), **dotted(hp), "objective": objective})
                for rate in cfg.bias_rates:
                    for seed in cfg.seeds:
                        cells.append(Cell(strategy, float(rate), int(seed), hp, eff))
    return cells


@dataclass
class DrawnCell:
    """What a cell draws from the data before any training: the bias-rate split (and its report),
    the strategy's balancing plan (each stage's training set), the real validation and test rows."""

    split: Manifest
    report: Any
    plan: Any
    val: Manifest
    test: Manifest


def draw_cell(cell: Cell, real: Manifest, pool: Manifest | None) -> DrawnCell:
    """The recipe's first half for ``cell``: split ``real`` to the cell's bias rate with its seed,
    balance its training rows with the strategy (``pool``: the synthetic images)."""
    split, report = bias_rate_split(real, cell.bias_rate, cell.seed, cell.config.data.min_val_per_group)
    plan = balance(cell.strategy, split.select(split="train", source="real"), pool)
    return DrawnCell(split, report, plan, split.select(split="val", source="real"),
                     split.select(split="test", source="real"))


def stage_keys(cell: Cell, drawn: DrawnCell) -> list[tuple[str, str, str | None]]:
    """Every stage of ``cell``, in plan order: (stage name, stage key, the key of the stage it
    starts from) — the keys the stage driver trains or finds them under (:meth:`StageSpec.key`),
    computed without training anything."""
    keys, out = {}, []
    for stage in drawn.plan.stages:
        request = cell.request(stage.plan)
        init_key = keys.get(stage.init_from)
        key = StageSpec(request, stage.train, drawn.val, init_key=init_key).key(identity(objectives(request)[1]))
        keys[stage.name] = key
        out.append((stage.name, key, init_key))
    return out
