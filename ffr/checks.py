"""Validation at start: every name and option of a run checked before any data is read, any image
rendered or any model trained — with Stable Diffusion, a misspelt backbone found after synthesis
is hours lost. Each check raises a :class:`~ffr.config.ConfigError` (a ``ValueError``: the CLI
prints ``ffr: error: ...`` and exits 2) that lists every problem at once."""

from __future__ import annotations

import inspect

from ffr.config import ConfigError, ExperimentConfig, experiment_problems, with_overrides


def name_problems(backbone: str | None = None, objectives=(), objective_options: dict | None = None,
                  strategies=(), backend: str | None = None, filters=(), adapter: str | None = None,
                  adapter_options: dict | None = None, demo: dict | None = None, where: str = "") -> list[str]:
    """What is wrong with the registered names a run uses (empty when nothing)."""
    out: list[str] = []
    pre = f"{where}." if where else ""

    def known(registry, name, field_):
        if name not in registry:
            out.append(f"{pre}{field_}: unknown {registry.kind} {name!r}; known: {', '.join(registry.names())}")
            return False
        return True

    if backbone is not None:
        from ffr.train.backbones import BACKBONES

        known(BACKBONES, backbone, "backbone")
    if objectives:
        from ffr.train.objectives import OBJECTIVES, create_objective

        for name in objectives:
            if known(OBJECTIVES, name, "objective"):
                try:
                    create_objective(name, **((objective_options or {}).get(name) or {}))
                except (ValueError, TypeError) as e:
                    out.append(f"{pre}objective_options.{name}: {e}")
    if strategies:
        from ffr.balance import STRATEGIES

        for name in strategies:
            known(STRATEGIES, name, "strategies")
    if backend is not None:
        from ffr.synthesis import SYNTHESIS_BACKENDS

        known(SYNTHESIS_BACKENDS, backend, "synthesis.backend")
    if filters:
        from ffr.synthesis.filters import FILTERS

        for spec in filters:
            name = spec.get("name") if isinstance(spec, dict) else str(spec).partition(":")[0].strip()
            known(FILTERS, name, "synthesis.filters")
    if adapter is not None:
        from ffr.data.sources import ADAPTERS

        if known(ADAPTERS, adapter, "data.adapter"):
            try:
                inspect.signature(ADAPTERS.get(adapter)).bind("source", **(adapter_options or {}))
            except TypeError as e:
                out.append(f"{pre}data.options: adapter {adapter!r}: {e}")
    if demo:
        from ffr.data.builtin import option_problems

        out += [f"{pre}data.demo: {p}" for p in option_problems(demo)]
    return out


def check_sweep(cfg: ExperimentConfig) -> ExperimentConfig:
    """``cfg`` of ``ffr sweep``: every dataset's effective config checked before the first grid
    starts (a typo in the last dataset must not surface after hours of the first)."""
    if not cfg.datasets:
        return check_experiment(cfg)
    problems = []
    for name, overrides in cfg.datasets.items():
        if overrides is not None and not isinstance(overrides, dict):
            problems.append(f"datasets.{name}: expected a mapping of dotted keys to values, got {overrides!r}")
            continue
        try:
            eff = with_overrides(cfg, dict(overrides or {}))
            eff.datasets = {}
            check_experiment(eff)
        except ConfigError as e:
            problems.append(f"datasets.{name}: {e}")
    if problems:
        raise ConfigError("invalid config:\n  - " + "\n  - ".join(problems))
    return cfg


def check_experiment(cfg: ExperimentConfig) -> ExperimentConfig:
    """``cfg`` — every value, every registered name, the per-strategy overrides and every search
    candidate — or a :class:`ConfigError` listing all problems."""
    from ffr.balance import STRATEGIES

    problems = experiment_problems(cfg)
    objectives = list(cfg.objectives) or [cfg.objective]
    problems += name_problems(cfg.backbone, objectives, cfg.objective_options, cfg.strategies,
                              cfg.synthesis.backend, cfg.synthesis.filters,
                              cfg.data.adapter if cfg.data.dataset != "demo" else None, cfg.data.options,
                              cfg.data.demo if cfg.data.dataset == "demo" else None)
    for strategy, overrides in (cfg.overrides or {}).items():
        if not isinstance(overrides, dict):
            problems.append(f"overrides.{strategy}: expected a mapping of dotted keys to values, got {overrides!r}")
            continue
        if strategy not in STRATEGIES:
            problems.append(f"overrides: unknown balancing strategy {strategy!r}; known: "
                            f"{', '.join(STRATEGIES.names())}")
            continue
        try:
            problems += [f"overrides.{strategy}: {p}" for p in experiment_problems(with_overrides(cfg, overrides))]
        except ConfigError as e:
            problems.append(f"overrides.{strategy}: {e}")
    for scope, space in (cfg.search or {}).items():
        if scope != "*" and scope not in STRATEGIES:
            problems.append(f"search: unknown balancing strategy {scope!r}; known: *, {', '.join(STRATEGIES.names())}")
            continue
        if not isinstance(space, dict):
            problems.append(f"search.{scope}: expected a mapping of key -> list of values, got {space!r}")
            continue
        for key, values in space.items():
            if not isinstance(values, list) or not values:
                problems.append(f"search.{scope}.{key}: expected a non-empty list of values, got {values!r}")
    if not problems:
        from ffr.grid import plan_cells

        try:
            for strategy, _, _, hp, eff in plan_cells(cfg):
                problems += [f"search candidate {hp} of {strategy}: {p}" for p in experiment_problems(eff)
                             + name_problems(eff.backbone, [eff.objective], eff.objective_options)]
        except ConfigError as e:
            problems.append(f"search: {e}")
        if cfg.equal_search:
            from ffr.grid import unequal_budgets

            problems += [f"equal_search: the strategies choose among different numbers of search candidates "
                         f"({line}); give each strategy's search as many" for line in unequal_budgets(cfg)]
    problems = list(dict.fromkeys(problems))
    if problems:
        raise ConfigError("invalid config:\n  - " + "\n  - ".join(problems))
    return cfg


def pipeline_problems(*, objective: str, backbone: str, stages: dict[str, dict], finetune_options: dict,
                      objective_options: dict, baselines: list, synthesis_backend: str, synthesis_filters: list,
                      source: str, source_adapter: str, source_options: dict, bias_rate: float, num_shards: int,
                      device: str, image_size: int, batch_size: int, demo_name: str = "digits",
                      demo_per_digit: int = 0) -> list[str]:
    """What is wrong with a Kubeflow pipeline's run-form values (empty when nothing): the names
    (objective, backbone, synthesis backend and filters, adapter, built-in benchmark, baseline
    strategies), every training stage's settings (``stages``: stage name → ``{"epochs", "lr"}``;
    FFR's step 2 with ``finetune_options``) and the objective's options — what the first step of
    every pipeline checks, so a typo fails in seconds, not after synthesis. ``demo_name`` and
    ``demo_per_digit`` are read for ``source == "demo"`` only, as ``prepare_data`` reads them."""
    from ffr.config import TrainConfig, from_dict, train_problems

    problems = []
    if not 0 < bias_rate < 1:
        problems.append(f"bias_rate: {bias_rate!r} must be between 0 and 1 (exclusive)")
    if source == "demo":
        from ffr.data.builtin import option_problems, run_form_options

        named = option_problems({"name": demo_name})
        problems += [f"demo_name: {p}" for p in named]
        if not named:
            try:
                problems += [f"demo_per_digit: {p}" for p in option_problems(run_form_options(demo_name, demo_per_digit))]
            except ValueError as e:
                problems.append(f"demo_per_digit: {e}")
    if num_shards < 1:
        problems.append(f"num_shards: {num_shards!r} must be at least 1")
    if image_size < 8:
        problems.append(f"image_size: {image_size!r} must be at least 8 pixels")
    if not (device in ("auto", "cpu", "mps") or device == "cuda" or device.startswith("cuda:")):
        problems.append(f"device: {device!r} must be auto, cpu, cuda, cuda:N or mps")
    if not isinstance(finetune_options, dict):
        problems.append(f"finetune_options: expected a mapping of training settings, got {finetune_options!r}")
        finetune_options = {}
    for stage, values in stages.items():
        options = finetune_options if stage == "finetune" else {}
        clash = sorted(set(options) & {"epochs", "lr", "batch_size", "weight_decay", "min_steps", "max_steps",
                                       "patience"})
        if clash:
            problems.append(f"finetune_options: {clash} are parameters of their own; set them there")
            continue
        try:
            cfg = from_dict(TrainConfig, {**values, "batch_size": batch_size, **options},
                            f"{stage} ({'finetune_options' if options else 'training settings'})")
        except ConfigError as e:
            problems.append(str(e))
            continue
        problems += train_problems(cfg, stage)
    strategies = []
    for i, b in enumerate(baselines or []):
        if not isinstance(b, dict) or set(b) - {"strategy", "lr"} or "strategy" not in b:
            problems.append(f"baselines[{i}]: expected {{strategy: NAME, lr: NUMBER}}, got {b!r}")
            continue
        strategies.append(b["strategy"])
        lr = b.get("lr", 1e-3)
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or lr <= 0:
            problems.append(f"baselines[{i}].lr: {lr!r} must be a positive number")
    if not isinstance(objective_options, dict):
        problems.append(f"objective_options: expected a mapping, got {objective_options!r}")
        objective_options = {}
    problems += name_problems(backbone, [objective], {objective: objective_options}, strategies, synthesis_backend,
                              synthesis_filters, source_adapter if source != "demo" else None, source_options)
    return list(dict.fromkeys(problems))


def source_fingerprint(source: str) -> str:
    """What the data steps' cache keys on besides the parameters: a digest of the dataset's
    content, so a dataset rewritten under the same ``source`` is not served from the cache. A
    folder or file: its DVC version (md5 of every file); ``s3://``: the objects' keys and ETags;
    ``demo``: built from code, the code's version keys it (the image)."""
    if source == "demo":
        return "demo"
    from ffr.integrations.s3 import is_s3

    if is_s3(source):
        from ffr.integrations.s3 import fingerprint

        return fingerprint(source)
    from ffr.integrations.dvc import dir_digest

    return "md5-" + dir_digest(source)
