"""Validation at start: every name and option of a run checked before any data is read, any image
rendered or any model trained — with Stable Diffusion, a misspelt backbone found after synthesis
is hours lost. Values follow the rules of :mod:`ffr.rules`; the registered names (backbones,
objectives and their options, strategies, synthesis backends and filters, adapters, built-in
benchmarks) are checked here, once, for every entry point: the experiment config (``ffr compare``,
``ffr sweep``), a stage request (``ffr train``, a Kubeflow train step) and the Kubeflow run form
(:mod:`ffr.runform`). A refusal is one :class:`~ffr.rules.ConfigError` (a ``ValueError``: the CLI
prints ``ffr: error: ...`` and exits 2) that lists every problem."""

from __future__ import annotations

import inspect
from pathlib import Path

from ffr.config import ExperimentConfig, from_dict, with_overrides, yaml_load
from ffr.rules import ConfigError, Problem, refuse, unique


def name_problems(backbone: str | None = None, objectives=(), objective_options: dict | None = None,
                  strategies=(), backend: str | None = None, filters=(), adapter: str | None = None,
                  adapter_options: dict | None = None, demo: dict | None = None) -> list[Problem]:
    """What is wrong with the registered names a run uses (empty when nothing)."""
    out: list[Problem] = []

    def known(registry, name, field_):
        found = registry.problems(name, field_)
        out.extend(found)
        return not found

    if backbone is not None:
        from ffr.train.backbones import BACKBONES

        known(BACKBONES, backbone, "backbone")
    if objectives:
        from ffr.train.objectives import objective_problems

        for name in objectives:
            out += objective_problems(name, (objective_options or {}).get(name))
    if strategies:
        from ffr.balance import STRATEGIES

        for name in strategies:
            known(STRATEGIES, name, "strategies")
    if backend is not None:
        from ffr.synthesis import SYNTHESIS_BACKENDS

        known(SYNTHESIS_BACKENDS, backend, "synthesis.backend")
    if filters:
        from ffr.synthesis.filters import FILTERS

        from ffr.synthesis.filters import option_problem

        for spec in filters:
            name = spec.get("name") if isinstance(spec, dict) else str(spec).partition(":")[0].strip()
            if known(FILTERS, name, "synthesis.filters"):
                try:
                    why = option_problem(spec)
                except ValueError as e:  # a value that does not parse
                    why = f"filter {spec!r}: {e}"
                if why:
                    out.append(Problem("synthesis.filters", why))
    if adapter is not None:
        from ffr.data.sources import ADAPTERS

        if known(ADAPTERS, adapter, "data.adapter"):
            try:
                inspect.signature(ADAPTERS.get(adapter)).bind("source", **(adapter_options or {}))
            except TypeError as e:
                out.append(Problem("data.options", f"adapter {adapter!r}: {e}"))
    if demo:
        from ffr.data.builtin import option_problems

        out += [Problem("data.demo", p) for p in option_problems(demo)]
    return out


def experiment_problems(cfg: ExperimentConfig) -> list[Problem]:
    """Everything wrong with ``cfg`` (empty when nothing): every value, every registered name,
    the per-strategy overrides and every search candidate."""
    from ffr.balance import STRATEGIES

    own = cfg.problems()
    problems = list(own)
    objectives = list(cfg.objectives) or [cfg.objective]
    problems += name_problems(cfg.backbone, objectives, cfg.objective_options, cfg.strategies,
                              cfg.synthesis.backend, cfg.synthesis.filters,
                              cfg.data.adapter if cfg.data.dataset != "demo" else None, cfg.data.options,
                              cfg.data.demo if cfg.data.dataset == "demo" else None)
    for strategy, overrides in (cfg.overrides or {}).items():
        if not isinstance(overrides, dict):
            problems.append(Problem(f"overrides.{strategy}",
                                    f"expected a mapping of dotted keys to values, got {overrides!r}"))
            continue
        if strategy not in STRATEGIES:
            problems.append(Problem("overrides", f"unknown balancing strategy {strategy!r}; known: "
                                                 f"{', '.join(STRATEGIES.names())}"))
            continue
        try:  # what the overrides break (the base config's own problems are listed once, above)
            problems += [p.within(f"overrides.{strategy}") for p in with_overrides(cfg, overrides).problems()
                         if p not in own]
        except ConfigError as e:
            problems.append(Problem(f"overrides.{strategy}", str(e)))
    for scope, space in (cfg.search or {}).items():
        if scope != "*" and scope not in STRATEGIES:
            problems.append(Problem("search", f"unknown balancing strategy {scope!r}; known: *, "
                                              f"{', '.join(STRATEGIES.names())}"))
            continue
        if not isinstance(space, dict):
            problems.append(Problem(f"search.{scope}", f"expected a mapping of key -> list of values, got {space!r}"))
            continue
        for key, values in space.items():
            if not isinstance(values, list) or not values:
                problems.append(Problem(f"search.{scope}.{key}", f"expected a non-empty list of values, got {values!r}"))
    if not problems:
        from ffr.grid import plan_cells, unequal_budgets

        try:
            for cell in plan_cells(cfg):
                eff = cell.config
                problems += [p.within(f"search candidate {cell.hparams} of {cell.strategy}", ": ")
                             for p in eff.problems() + name_problems(eff.backbone, [eff.objective],
                                                                     eff.objective_options) if p not in own]
        except ConfigError as e:
            problems.append(Problem("search", str(e)))
        if cfg.equal_search:
            problems += [Problem("equal_search", f"the strategies choose among different numbers of search "
                                                 f"candidates ({line}); give each strategy's search as many")
                         for line in unequal_budgets(cfg)]
    return unique(problems)


def check_experiment(cfg: ExperimentConfig) -> ExperimentConfig:
    """``cfg``, or a :class:`~ffr.rules.ConfigError` listing every problem
    (:func:`experiment_problems`)."""
    refuse(experiment_problems(cfg))
    return cfg


def check_sweep(cfg: ExperimentConfig) -> ExperimentConfig:
    """``cfg`` of ``ffr sweep``: every dataset's effective config checked before the first grid
    starts (a typo in the last dataset must not surface after hours of the first)."""
    if not cfg.datasets:
        return check_experiment(cfg)
    from dataclasses import replace

    from ffr.data.manifest import name_problem

    # The global config's own problems are listed once (not once per dataset), and only those that
    # some dataset does not override away.
    shared, hit, problems = experiment_problems(replace(cfg, datasets={})), [], []
    for name, overrides in cfg.datasets.items():
        why = name_problem(str(name))
        if why is not None:  # the name becomes a folder and a plot name inside --out
            problems.append(Problem(f"datasets.{name}", f"a dataset name {why}"))
            continue
        if overrides is not None and not isinstance(overrides, dict):
            problems.append(Problem(f"datasets.{name}", f"expected a mapping of dotted keys to values, got {overrides!r}"))
            continue
        try:
            eff = with_overrides(cfg, dict(overrides or {}))
        except ConfigError as e:
            problems.append(Problem(f"datasets.{name}", str(e)))
            continue
        eff.datasets = {}
        own = experiment_problems(eff)
        hit += [p for p in own if p in shared and p not in hit]
        problems += [p.within(f"datasets.{name}") for p in own if p not in shared]
        where = eff.data.dataset
        if where != "demo" and not str(where).startswith("s3://") and not Path(where).exists():
            problems.append(Problem(f"datasets.{name}", f"data.dataset {where}: no such dataset folder (checked "
                                                        "before the first grid starts)"))
    refuse(hit + problems)
    return cfg


def sweep_config(text: str | dict) -> ExperimentConfig:
    """The sweep config of a run form's ``config`` field (YAML text, or a mapping), checked as
    ``ffr sweep`` checks one (:func:`check_sweep`).

    Args:
        text: The YAML text of a sweep config (what ``ffr sweep --config`` reads), or its mapping.
    """
    data = yaml_load(text, "config") if isinstance(text, str) else text
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config: expected a mapping (a sweep config, as `ffr sweep --config` reads), got {data!r}")
    return check_sweep(from_dict(ExperimentConfig, data, "config"))
