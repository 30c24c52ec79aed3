"""One place for the defaults: ffr.config's constants. The configs read them by name; a Kubeflow
component's signature must hold literals (KFP ships a lightweight component's function source
alone), so this test holds every component's and pipeline's defaults against the constants."""

from __future__ import annotations

import inspect

import pytest

pytest.importorskip("kfp")

from types import SimpleNamespace  # noqa: E402

from ffr.integrations.kubeflow.components import ALL  # noqa: E402
from ffr import config, promotion  # noqa: E402
from ffr.balance import STRATEGIES  # noqa: E402
from ffr.cli import build_parser  # noqa: E402
from ffr.config import ExperimentConfig, TrainConfig, with_overrides  # noqa: E402
from ffr.integrations.kubeflow.pipelines import PIPELINES, get_pipeline  # noqa: E402
from ffr.integrations.kubeflow.pipelines.definitions import DEFAULT_BASELINES  # noqa: E402
from ffr.integrations.kubeflow.pipelines.run import pipeline_parameters  # noqa: E402
from ffr.runform import short_names  # noqa: E402

# the project's defaults: training and data (ffr.config), the promotion gate (ffr.promotion)
defaults = SimpleNamespace(**{k: v for m in (config, promotion) for k, v in vars(m).items() if k.isupper()})
# parameter name -> the constant it defaults to, wherever it appears
SHARED = {"epochs": "EPOCHS", "train_epochs": "EPOCHS", "pretrain_epochs": "EPOCHS", "finetune_epochs": "EPOCHS",
          "lr": "LR", "pretrain_lr": "PRETRAIN_LR", "finetune_lr": "FINETUNE_LR", "weight_decay": "WEIGHT_DECAY",
          "image_size": "IMAGE_SIZE", "backbone": "BACKBONE", "objective": "OBJECTIVE", "bias_rate": "BIAS_RATE",
          "min_val_per_group": "MIN_VAL_PER_GROUP", "max_attempts": "MAX_ATTEMPTS",
          "synthesis_backend": "SYNTHESIS_BACKEND", "synthesis_batch_size": "SYNTHESIS_BATCH_SIZE",
          "min_steps": "MIN_STEPS", "max_steps": "MAX_STEPS", "patience": "PATIENCE",
          "gate_margin": "GATE_MARGIN", "gate_tolerance": "GATE_TOLERANCE", "gate_floor": "GATE_FLOOR"}
# the same name means another thing in the synthesis step than in the training step
PER_COMPONENT = {"synthesize_shard": {"backend": "SYNTHESIS_BACKEND", "batch_size": "SYNTHESIS_BATCH_SIZE"},
                 "check_config": {"batch_size": "BATCH_SIZE"}}


def _component_name(component) -> str:
    return component.python_func.__name__


@pytest.mark.parametrize("component", ALL, ids=_component_name)
def test_component_defaults_are_the_projects(component):
    rules = {**SHARED, **PER_COMPONENT.get(_component_name(component), {})}
    checked = {}
    for name, p in inspect.signature(component.python_func).parameters.items():
        if name in rules and p.default is not inspect.Parameter.empty:
            checked[name] = (p.default, getattr(defaults, rules[name]))
    assert {k: a for k, (a, b) in checked.items() if a != b} == {}, \
        f"{_component_name(component)}: defaults differ from ffr.config's: {checked}"


@pytest.mark.parametrize("name", PIPELINES.names())
def test_pipeline_defaults_are_the_projects(name):
    params = short_names(pipeline_parameters(get_pipeline(name)))  # the run form's fields by their short names
    rules = {**SHARED, "batch_size": "BATCH_SIZE"}
    checked = {k: (params[k], getattr(defaults, rules[k])) for k in params if k in rules}
    assert checked, f"pipeline {name!r} exposes none of the training defaults"
    assert {k: a for k, (a, b) in checked.items() if a != b} == {}


def test_configs_read_the_same_constants():
    cfg = ExperimentConfig()
    assert TrainConfig().epochs == cfg.train.epochs == cfg.pretrain.epochs == cfg.finetune.epochs == defaults.EPOCHS
    assert (cfg.train.lr, cfg.pretrain.lr, cfg.finetune.lr) == (defaults.LR, defaults.PRETRAIN_LR, defaults.FINETUNE_LR)
    assert cfg.finetune.lpft_epochs == defaults.FINETUNE_LPFT_EPOCHS and cfg.pretrain.lpft_epochs == 0
    # each baseline's settings: the run form's default list and, where they differ from train's, the overrides
    assert DEFAULT_BASELINES == [{"strategy": s, **v} for s, v in defaults.BASELINES.items()]
    assert {b["strategy"]: b["lr"] for b in DEFAULT_BASELINES} == {"none": defaults.LR, "usb": defaults.USB_LR,
                                                                   "asb": defaults.ASB_LR}
    for s, settings in defaults.BASELINES.items():
        effective = with_overrides(cfg, cfg.overrides.get(s, {}))
        assert {k: getattr(effective.train, k) for k in settings} == settings, s
    assert cfg.synthesis.batch_size == defaults.SYNTHESIS_BATCH_SIZE
    assert set(cfg.strategies) == set(STRATEGIES.names())


def test_cli_defaults_are_the_projects():
    sub = build_parser()._subparsers._group_actions[0].choices
    synth = {a.dest: a.default for a in sub["synthesize"]._actions}
    assert (synth["batch_size"], synth["max_attempts"], synth["backend"]) == \
        (defaults.SYNTHESIS_BATCH_SIZE, defaults.MAX_ATTEMPTS, defaults.SYNTHESIS_BACKEND)
    promote = {a.dest: a.default for a in sub["promote"]._actions}
    assert (promote["margin"], promote["tolerance"], promote["floor"]) == \
        (defaults.GATE_MARGIN, defaults.GATE_TOLERANCE, defaults.GATE_FLOOR)
    assert promotion.GatePolicy() == promotion.GatePolicy(defaults.GATE_MARGIN, defaults.GATE_TOLERANCE,
                                                          defaults.GATE_FLOOR)


def test_the_run_form_defaults_train_what_a_config_without_a_recipe_trains():
    """A comparison started from the run form as it opens trains the stages ``ffr compare`` with
    no recipe trains: FFR's step 2 as LP-FT, each baseline at its evidence-chosen settings."""
    from ffr.runform import form_config

    params = pipeline_parameters(get_pipeline("comparison"))
    cfg, problems = form_config(params)
    assert problems == []
    plain = ExperimentConfig()
    assert cfg.finetune.lpft_epochs == plain.finetune.lpft_epochs == defaults.FINETUNE_LPFT_EPOCHS
    for s in ("none", "usb", "asb"):
        ours, theirs = with_overrides(cfg, cfg.overrides.get(s, {})), with_overrides(plain, plain.overrides.get(s, {}))
        assert (ours.train.lr, ours.train.weight_decay) == (theirs.train.lr, theirs.train.weight_decay), s
