"""The Kubeflow run form read as what it is: one experiment of one bias rate and one seed.

A pipeline's run-form fields (``data_source``, ``train_pretrain_lr``, ``train_baselines`` ...; read
here under their short names, :data:`FORM_FIELDS`) map onto an
:class:`~ffr.config.ExperimentConfig` (:func:`form_config`): the data, the synthesis, the model,
each stage's settings, the strategies (the baselines and the pipeline's own strategy, FFR). The
config is checked by the one validator (:func:`ffr.checks.experiment_problems`) and its problems
are reported under the run form's field names (:func:`form_problems`), so ``ffr compile --param``,
``ffr submit`` / ``ffr schedule``, ``ffr run`` and the pipeline's first step refuse the same values
with the same words. The checked config gives the **run plan** (:func:`run_plan`): per strategy,
the request of every stage (:meth:`ffr.grid.Cell.requests`), which the pipeline's train steps take
whole — the same requests ``ffr compare`` trains.

No kfp here: the command line checks a form before anything is compiled or sent.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ffr.config import ExperimentConfig, TrainConfig, from_dict, unknown_fields
from ffr.rules import ConfigError, Problem, check, refuse, unique

# The strategy a pipeline trains, evaluates and registers (the baselines are compared with it).
PRODUCT = "ffr"
# Run-form fields that set a stage's training settings themselves: not allowed in finetune_options.
OWN_FIELDS = ("epochs", "lr", "batch_size", "min_steps", "max_steps", "patience")
# Config fields as the run form names them (the stages' own fields are mapped in _form_name).
_FORM_NAMES = {
    "data.image_size": "image_size", "data.min_val_per_group": "min_val_per_group",
    "data.adapter": "source_adapter", "data.options": "source_options", "data.demo": "demo_name",
    "bias_rates[0]": "bias_rate", "seeds[0]": "seed", "strategies": "baselines",
    "synthesis.backend": "synthesis_backend", "synthesis.filters": "synthesis_filters",
    "synthesis.batch_size": "synthesis_batch_size", "synthesis.seed": "synthesis_seed",
    "synthesis.max_attempts": "synthesis_options",
}
_STAGE_FIELDS = {("train", "epochs"): "train_epochs", ("pretrain", "epochs"): "pretrain_epochs",
                 ("pretrain", "lr"): "pretrain_lr", ("finetune", "epochs"): "finetune_epochs",
                 ("finetune", "lr"): "finetune_lr"}
_GATE = ("gate_margin", "gate_tolerance", "gate_floor")
# What a ``baselines`` entry may set besides its strategy (config.BASELINES holds the defaults).
BASELINE_KEYS = ("lr", "weight_decay")

# The names the pipelines' run forms show, grouped by prefix (data_, gate_, mlflow_, sweep_,
# synthesis_, train_): the stock Kubeflow UI lists a form's fields alphabetically, so a prefix per
# group keeps the data, synthesis, training, tracking and gate fields together. This module, the
# steps and the MLflow parameters use the short names on the left; a field not listed keeps its
# name (data_repo, gate_floor, mlflow_uri, synthesis_seed ...). The short names were the form's
# own before the prefixes (December 2026): ``--param`` still takes them, with a warning
# (:func:`form_names`), until a later release drops them.
FORM_FIELDS = {
    "source": "data_source", "source_adapter": "data_adapter", "source_options": "data_adapter_options",
    "bias_rate": "data_bias_rate", "min_val_per_group": "data_min_val_per_group", "demo_name": "data_demo_name",
    "demo_per_digit": "data_demo_per_digit", "num_shards": "synthesis_shards",
    "backbone": "train_backbone", "weights": "train_weights", "image_size": "train_image_size",
    "objective": "train_objective", "objective_options": "train_objective_options",
    "batch_size": "train_batch_size", "baselines": "train_baselines", "train_epochs": "train_baseline_epochs",
    "pretrain_epochs": "train_pretrain_epochs", "pretrain_lr": "train_pretrain_lr",
    "finetune_epochs": "train_finetune_epochs", "finetune_lr": "train_finetune_lr",
    "finetune_options": "train_finetune_options", "min_steps": "train_min_steps", "max_steps": "train_max_steps",
    "patience": "train_patience", "device": "train_device", "seed": "train_seed",
    "registered_model_name": "mlflow_registered_model",
    "config": "sweep_config", "stage_store": "sweep_stage_store", "stages_per_task": "sweep_stages_per_task",
    "cells_per_task": "sweep_cells_per_task",
}
SHORT_NAMES = {form: short for short, form in FORM_FIELDS.items()}


def short_names(values: dict) -> dict:
    """A run form's values under the short names this module reads (either naming accepted)."""
    return {SHORT_NAMES.get(k, k): v for k, v in values.items()}


def form_field(field: str) -> str:
    """``field`` (a short name, or a path into one: ``finetune_options.lpft_epochs``,
    ``baselines[0].strategy``) as the run form names it."""
    head = field.split(".", 1)[0].split("[", 1)[0]
    return FORM_FIELDS.get(head, head) + field[len(head):]


def form_names(params: dict, known) -> tuple[dict, list[str]]:
    """``params`` given to a pipeline whose parameters are ``known``, with a short name (the form's
    name before the prefixes) replaced by its form name; and one warning per name replaced."""
    out, notes = {}, []
    for key, value in params.items():
        if key not in known and FORM_FIELDS.get(key) in known:
            notes.append(f"parameter {key!r} is now {FORM_FIELDS[key]!r} (the run form groups its fields by "
                         "prefix); the old name still works for now, a later release drops it")
            key = FORM_FIELDS[key]
        out[key] = value
    return out, notes


def _baselines(values: dict) -> list[dict]:
    return list(values.get("baselines") or [])


def _is_demo(values: dict) -> bool:
    """Whether the run's data is a built-in benchmark: ``source`` demo, or (retrain) no data repo."""
    if "data_repo" in values:
        return not values.get("data_repo")
    return values.get("source", "demo") == "demo"


def _form_name(field: str, values: dict) -> str:
    """The run-form field a config field is set by."""
    if field in _FORM_NAMES:
        return _FORM_NAMES[field]
    if field.startswith("objective_options."):
        return "objective_options"
    for i, b in enumerate(_baselines(values)):
        if isinstance(b, dict) and field.startswith(f"overrides.{b.get('strategy')}."):
            key = field.rsplit(".", 1)[-1]
            return f"baselines[{i}].{key if key in BASELINE_KEYS else 'lr'}"
    stage, _, key = field.partition(".")
    if stage in ("train", "pretrain", "finetune") and key:
        if (stage, key) in _STAGE_FIELDS:
            return _STAGE_FIELDS[(stage, key)]
        if key in OWN_FIELDS:
            return key
        return f"finetune_options.{key}" if stage == "finetune" else field
    return field


def _stage(values: dict, stage: str, epochs_field: str, lr: Any, options: dict) -> TrainConfig:
    """A stage's settings: the project's defaults for that stage (FFR's step 2 is LP-FT), the
    form's fields, then ``options``."""
    defaults = dataclasses.asdict(getattr(ExperimentConfig(), stage))
    fields = {**{k: v for k, v in defaults.items() if v != getattr(TrainConfig, k, v)},
              "epochs": values.get(epochs_field, TrainConfig.epochs), "lr": lr,
              **{k: values[k] for k in ("batch_size", "min_steps", "max_steps", "patience") if k in values},
              **options}
    return from_dict(TrainConfig, fields, "finetune_options" if options else epochs_field)


def form_config(values: dict) -> tuple[ExperimentConfig, list[Problem]]:
    """The experiment a run form describes, and what is wrong with the form that keeps parts of
    it from being built (an unknown ``finetune_options`` key, a malformed baseline, an unknown
    built-in benchmark); the config's own values are checked by :func:`form_problems`."""
    from ffr.balance import STRATEGIES
    from ffr.config import DataConfig, SynthesisConfig

    values = short_names(values)
    problems: list[Problem] = []
    cfg = ExperimentConfig()
    demo = {}
    if _is_demo(values):
        from ffr.data.builtin import option_problems, run_form_options

        named = option_problems({"name": values.get("demo_name", "digits")})
        problems += [Problem("demo_name", p) for p in named]
        if not named:
            try:
                demo = run_form_options(values.get("demo_name", "digits"), values.get("demo_per_digit", 0) or 0)
            except ValueError as e:
                problems.append(Problem("demo_per_digit", str(e)))
    source = "demo" if _is_demo(values) else str(values.get("source") or values.get("data_repo"))
    adapter = values.get("source_adapter", "csv")
    cfg.data = DataConfig(dataset=source, image_size=values.get("image_size", cfg.data.image_size),
                          min_val_per_group=values.get("min_val_per_group", cfg.data.min_val_per_group),
                          demo=demo, adapter=adapter, options=dict(values.get("source_options") or {}))
    cfg.synthesis = SynthesisConfig(backend=values.get("synthesis_backend", cfg.synthesis.backend),
                                    seed=values.get("synthesis_seed", 0),
                                    batch_size=values.get("synthesis_batch_size", cfg.synthesis.batch_size),
                                    options=dict(values.get("synthesis_options") or {}),
                                    filters=list(values.get("synthesis_filters") or []))
    from ffr.synthesis.harmful import pipeline_problem

    problems += [Problem("synthesis_filters", why) for why in map(pipeline_problem, cfg.synthesis.filters) if why]
    cfg.backbone = values.get("backbone", cfg.backbone)
    cfg.weights = values.get("weights") or None
    cfg.objective = values.get("objective", cfg.objective)
    options = values.get("objective_options") or {}
    if not isinstance(options, dict):
        problems.append(Problem("objective_options", f"expected a mapping, got {options!r}"))
        options = {}
    cfg.objective_options = {cfg.objective: dict(options)} if options else {}
    cfg.device = values.get("device", cfg.device)
    cfg.bias_rates = [values.get("bias_rate", cfg.bias_rates[0])]
    cfg.seeds = [values.get("seed", 0)]

    strategies, overrides = [], {}
    for i, b in enumerate(_baselines(values)):
        if not isinstance(b, dict) or set(b) - {"strategy", *BASELINE_KEYS} or "strategy" not in b:
            problems.append(Problem(f"baselines[{i}]", "expected {strategy: NAME, lr: NUMBER} (weight_decay: NUMBER "
                                    f"optional), got {b!r}"))
            continue
        name = b["strategy"]
        if name not in STRATEGIES or name == PRODUCT:
            known = ", ".join(n for n in STRATEGIES.names() if n != PRODUCT)
            problems.append(Problem(f"baselines[{i}].strategy", f"unknown baseline {name!r}; known: {known}"))
            continue
        strategies.append(name)
        settings = {"lr": b.get("lr", cfg.train.lr), "weight_decay": b.get("weight_decay", cfg.train.weight_decay)}
        overrides[name] = {f"{plan.name}.{k}": v for plan in STRATEGIES.get(name).stages for k, v in settings.items()}
    cfg.strategies = list(dict.fromkeys(strategies + [PRODUCT]))
    cfg.overrides = overrides

    step2 = values.get("finetune_options") or {}
    if not isinstance(step2, dict):
        problems.append(Problem("finetune_options", f"expected a mapping of training settings, got {step2!r}"))
        step2 = {}
    clash = sorted(set(step2) & set(OWN_FIELDS))
    if clash:
        problems.append(Problem("finetune_options", f"{clash} are parameters of their own; set them there"))
    problems += unknown_fields(TrainConfig, step2, "finetune_options")
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    step2 = {k: v for k, v in step2.items() if k in known and k not in clash}
    for stage, epochs, lr, extra in (("train", "train_epochs", cfg.train.lr, {}),
                                     ("pretrain", "pretrain_epochs", values.get("pretrain_lr", cfg.pretrain.lr), {}),
                                     ("finetune", "finetune_epochs", values.get("finetune_lr", cfg.finetune.lr), step2)):
        try:
            setattr(cfg, stage, _stage(values, stage, epochs, lr, extra))
        except ConfigError as e:  # "<field>: <what>" of from_dict
            field, _, text = str(e).partition(": ")
            problems.append(Problem(field, text))
    return cfg, problems


def form_problems(values: dict) -> list[Problem]:
    """Everything wrong with a run form (empty when nothing), each problem under the field the
    user fills in: the experiment it describes (every value and registered name, through the one
    validator), the synthesis fan-out, the processes per training step and the promotion gate."""
    from ffr.checks import experiment_problems

    values = short_names(values)
    cfg, problems = form_config(values)
    problems += [p.renamed(_form_name(p.field, values)) for p in experiment_problems(cfg)]
    if "num_shards" in values:
        problems += check("count", values["num_shards"], "num_shards")
    if "train_processes" in values:
        problems += check("processes", values["train_processes"], "train_processes")
    for name in _GATE:
        if name in values:
            problems += check("fraction", values[name], name)
    return unique([p.renamed(form_field(p.field)) for p in problems])


def check_form(values: dict, what: str = "run configuration") -> ExperimentConfig:
    """The experiment of a run form, or one :class:`~ffr.rules.ConfigError` listing every
    problem (:func:`form_problems`). The sweep pipeline's form holds its grid as a config document
    (``config``): it is checked as ``ffr sweep`` checks one :func:`ffr.checks.sweep_config`)."""
    values = short_names(values)
    if "config" in values:
        from ffr.checks import sweep_config

        refuse([p.renamed(form_field(p.field)) for p in
                check("count", values.get("stages_per_task", 1), "stages_per_task")
                + check("count", values.get("cells_per_task", 1), "cells_per_task")
                + [p for name in _GATE if name in values for p in check("fraction", values[name], name)]], what)
        return sweep_config(values["config"])
    refuse(form_problems(values), what)
    return form_config(values)[0]


def run_plan(values: dict) -> dict:
    """The run plan of a (checked) run form: ``{"strategies": {strategy: {stage: request}},
    "product": "ffr"}``, every request (:meth:`ffr.train.request.StageRequest.to_dict`) in its
    strategy's training order, with the form's processes per training step."""
    from ffr.grid import plan_cells

    values = short_names(values)
    cfg = check_form(values)
    processes = values.get("train_processes", 1)
    plan = {}
    for cell in plan_cells(cfg):
        plan[cell.strategy] = {name: dataclasses.replace(r, processes=processes).to_dict()
                               for name, r in cell.requests().items()}
    return {"strategies": plan, "product": PRODUCT}


def check_step(form: dict) -> tuple[dict, list[str], str]:
    """A pipeline's first step: its run form checked (:func:`run_plan`: every problem at once,
    under the run form's field names); the run plan; the strategies that need synthetic images;
    the dataset's content fingerprint (:func:`source_fingerprint`)."""
    from ffr.balance import STRATEGIES

    form = short_names(form)
    plan = run_plan(form)
    synthesis_for = [s for s in plan["strategies"] if STRATEGIES.get(s).uses_synthetic]
    return plan, synthesis_for, source_fingerprint(form.get("source", "demo"))


def baseline_plans(plan: dict) -> list[dict]:
    """One run plan per baseline of ``plan`` (every strategy but the pipeline's own), in the run
    form's order: ``{"strategy", "strategies": {strategy: its requests}, "product"}`` — what a
    fan-out over the baselines iterates on, each item a run plan of its own."""
    return [{"strategy": s, "strategies": {s: requests}, "product": plan["product"]}
            for s, requests in plan["strategies"].items() if s != plan["product"]]


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
