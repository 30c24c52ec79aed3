"""One typed config: defaults here, a YAML file overrides them, ``--set key=value`` overrides the
YAML, and the resolved config is written next to every output."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ffr.rules import RULES, ConfigError, Problem, check

# ------------------------------------------------------------------------------------ defaults
# The one place for the training defaults. ``TrainConfig``, ``ExperimentConfig``, the pipelines'
# run form (ffr/integrations/kubeflow/pipelines/definitions.py) read these names; the Kubeflow components' signatures must
# hold literals (KFP ships a lightweight component's source alone), so tests/test_defaults.py
# checks that every component and pipeline default equals the constant here.
EPOCHS = 40              # epochs of every stage
# The step budget (TrainConfig.min_steps / max_steps / patience). 40 epochs of a 600-image set are
# 200 steps of 128 images, too few to learn it; min_steps gives it 200 epochs instead, while a
# 50,000-image set (391 steps an epoch) keeps its 40. Patience stops a stage that stopped improving.
MIN_STEPS = 1000
MAX_STEPS = 0            # no cap
PATIENCE = 10
# The floor is not forced on a stage that has stopped learning: once WARMUP_STEPS steps are taken,
# a stage whose validation WGA has not improved for WARMUP_STEPS steps (and ``patience`` epochs)
# ends before min_steps (stop reason ``plateau``); 0 turns it off (the whole floor, as before
# 2026-12). 800 is what validation chose (benchmarks/bench_budget.py --replay: the smallest window
# losing at most 0.01 validation WGA per stage on each benchmark's default comparison; shorter
# windows halve the steps but stop FFR's step 1, whose validation WGA on real images peaks late).
WARMUP_STEPS = 800
LR = 1e-3                # learning rate of a stage trained from scratch on real or mixed data
PRETRAIN_LR = 1e-4       # FFR step 1 (synthetic pretraining)
FINETUNE_LR = 1e-3       # FFR step 2 (fine-tuning on real)
BATCH_SIZE = 128
WEIGHT_DECAY = 1e-5
# Defaults from evidence: the candidates the equal-budget grids ranked best on validation WGA
# (docs/sweep.md "Defaults from evidence"; `ffr defaults --check` holds these against the
# committed results). FFR's step 2 is LP-FT (its first 5 epochs train the head alone); USB trains
# at lr 3e-4 with weight decay 1e-3; ASB at 1e-3 (the paper's 1e-4 ranked last); none
# keeps LR and WEIGHT_DECAY.
FINETUNE_LPFT_EPOCHS = 5
USB_LR = 3e-4
USB_WEIGHT_DECAY = 1e-3
ASB_LR = 1e-3
# Each baseline's stage settings: the comparison pipeline's ``baselines``; where they differ from
# ``train``'s, ExperimentConfig.overrides' default (baseline_overrides).
BASELINES = {"none": {"lr": LR}, "usb": {"lr": USB_LR, "weight_decay": USB_WEIGHT_DECAY}, "asb": {"lr": ASB_LR}}
IMAGE_SIZE = 32
BACKBONE = "small_cnn"
OBJECTIVE = "erm"
BIAS_RATE = 0.95
MIN_VAL_PER_GROUP = 10
# How checkpoints (epochs) and hyperparameters are chosen on validation: worst-group accuracy,
# then balanced accuracy, then the lower worst-group loss (ffr.metrics.selection_key), which does
# not saturate when every candidate classifies the validation split perfectly. ``first`` keeps
# the earlier epoch / the first candidate in order on a full tie (ffr before the tie-break; the
# committed grids' configs pin it, so their results reproduce).
TIE_BREAK = "worst_group_loss"
SYNTHESIS_BACKEND = "procedural"
SYNTHESIS_BATCH_SIZE = 8
MAX_ATTEMPTS = 10


@dataclass
class TrainConfig:
    """Hyperparameters of one training stage (one call of the training loop)."""

    epochs: int = EPOCHS
    # The budget in optimizer steps (0: off): at least min_steps (more epochs on a small dataset),
    # at most max_steps (the cap wins over the floor); patience stops after that many epochs
    # without a better validation WGA — after min_steps, or before it once warmup_steps are taken
    # and none of the last warmup_steps steps improved it (0: never before min_steps).
    min_steps: int = MIN_STEPS
    max_steps: int = MAX_STEPS
    patience: int = PATIENCE
    warmup_steps: int = WARMUP_STEPS
    batch_size: int = BATCH_SIZE
    lr: float = LR
    weight_decay: float = WEIGHT_DECAY
    optimizer: str = "adam"          # adam | sgd
    momentum: float = 0.9            # sgd only
    augment: bool = False            # the paper uses no augmentation
    normalize: str = "imagenet"
    group_by: str = "auto"           # groups the objective optimises over: auto = the strategy's
    eval_batch_size: int = 512
    amp: str = "auto"                # auto | bf16 | fp16 | off (see ffr.train.runtime.autocast_dtype)
    channels_last: bool = True       # NHWC memory format: faster convolutions on CPU and GPU
    deterministic: bool = False      # deterministic kernels; turns cudnn.benchmark off
    num_threads: int = 0             # CPU threads: 0 the machine's usable CPUs (fixed: exact reruns); -1 adaptive
    # Step-2 options (ffr.train.finetune): what a stage keeps from the weights it starts from.
    freeze_bn: bool = False          # BatchNorm statistics and affine parameters not trained
    freeze_stages: int = 0           # first k stages of the feature extractor not trained
    backbone_lr_mult: float = 1.0    # feature extractor lr = lr * this; head lr = lr
    l2sp: float = 0.0                # weight of the L2-SP pull toward the initial weights
    lpft_epochs: int = 0             # first epochs train the head alone (LP-FT); all of them if >= epochs
    select_init: bool = False        # the starting weights compete in checkpoint selection (epoch -1)
    # When validation WGA and balanced accuracy tie between epochs (and, in a grid, between the
    # candidates of a cell): worst_group_loss (the lower wins) or first (the earlier)
    tie_break: str = TIE_BREAK

    def problems(self, where: str = "train") -> list[Problem]:
        """What is wrong with these settings, each field named ``<where>.<field>`` (empty when nothing)."""
        out = []
        for f in dataclasses.fields(self):
            if f.name in RULES:
                out += check(f.name, getattr(self, f.name), f"{where}.{f.name}")
        if not (isinstance(self.lpft_epochs, int) and not isinstance(self.lpft_epochs, bool) and self.lpft_epochs >= 0):
            out.append(Problem(f"{where}.lpft_epochs", f"{self.lpft_epochs!r} must be a whole number >= 0 (0: off)"))
        return out


def baseline_overrides() -> dict:
    """The baselines' settings (:data:`BASELINES`) that differ from the ``train`` stage's
    defaults, as per-strategy dotted overrides: ``{"usb": {"train.lr": 3e-4, ...}}``."""
    base = TrainConfig(lr=LR)
    return {s: {f"train.{k}": v for k, v in settings.items() if getattr(base, k) != v}
            for s, settings in BASELINES.items() if any(getattr(base, k) != v for k, v in settings.items())}


@dataclass
class DataConfig:
    """Which dataset, at which resolution, and how the bias-rate split treats validation."""

    dataset: str = "demo"                 # "demo" or the dataset's folder, read by ``adapter``
    image_size: int = IMAGE_SIZE
    min_val_per_group: int = MIN_VAL_PER_GROUP
    demo: dict = field(default_factory=dict)   # the built-in benchmark: {name: digits|faces|galaxies, spec fields} (ffr.data.builtin)
    adapter: str = "csv"                  # dataset adapter reading ``dataset`` (ffr.data.adapters)
    options: dict = field(default_factory=dict)  # adapter options (e.g. label/bias attributes)


@dataclass
class SynthesisConfig:
    """The synthesis backend that fills the synthetic pool."""

    backend: str = SYNTHESIS_BACKEND
    seed: int = 0
    batch_size: int = SYNTHESIS_BATCH_SIZE
    options: dict = field(default_factory=dict)
    filters: list = field(default_factory=list)   # e.g. ["grayscale"] (ffr.synthesis.filters)
    max_attempts: int = MAX_ATTEMPTS              # per image, when filters reject


@dataclass
class ExperimentConfig:
    """A grid of strategies × bias rates × seeds for one objective, with per-strategy stage
    hyperparameters. ``train`` is the single stage of none/usb/asb, ``pretrain`` and
    ``finetune`` are FFR's steps 1 and 2. ``overrides`` maps a strategy to dotted overrides (by
    default USB's evidence-chosen lr and weight decay, :func:`baseline_overrides`); ``search``
    maps a strategy (or ``"*"``) to a grid of dotted keys → values, chosen per (strategy, bias rate) by mean validation WGA over seeds;
    ``equal_search`` requires every strategy to have as many candidates."""

    data: DataConfig = field(default_factory=DataConfig)
    synthesis: SynthesisConfig = field(default_factory=SynthesisConfig)
    backbone: str = BACKBONE
    weights: str | None = None
    objective: str = OBJECTIVE
    device: str = "auto"
    strategies: list = field(default_factory=lambda: ["none", "usb", "asb", "ffr"])
    bias_rates: list = field(default_factory=lambda: [0.95, 0.99])
    seeds: list = field(default_factory=lambda: [0, 1, 2])
    train: TrainConfig = field(default_factory=lambda: TrainConfig(lr=LR))
    pretrain: TrainConfig = field(default_factory=lambda: TrainConfig(lr=PRETRAIN_LR))
    finetune: TrainConfig = field(default_factory=lambda: TrainConfig(lr=FINETUNE_LR,
                                                                      lpft_epochs=FINETUNE_LPFT_EPOCHS))
    overrides: dict = field(default_factory=baseline_overrides)
    search: dict = field(default_factory=dict)
    # Every strategy chooses among as many search candidates (per objective): the check refuses a
    # grid whose search lists give one strategy more chances than another.
    equal_search: bool = False
    # ``ffr sweep``: several objectives (empty: just ``objective``), per-objective options
    # (``{groupdro: {eta: 0.01}, dfr: {n_refits: 20}}``), and several datasets, each a name →
    # dotted overrides (empty: just ``data``).
    objectives: list = field(default_factory=list)
    objective_options: dict = field(default_factory=dict)
    datasets: dict = field(default_factory=dict)

    def stage_settings(self, stage: str) -> TrainConfig:
        """The training settings of stage ``train`` (none/usb/asb), ``pretrain`` or ``finetune`` (FFR)."""
        stages = {"train": self.train, "pretrain": self.pretrain, "finetune": self.finetune}
        if stage not in stages:
            raise ConfigError(f"unknown stage {stage!r}; known: {', '.join(stages)}")
        return stages[stage]

    def problems(self) -> list[Problem]:
        """What is wrong with the config's values, names of registered things left aside (those
        are :func:`ffr.checks.name_problems`'s; :func:`ffr.checks.check_experiment` checks both)."""
        out = []
        for stage in ("train", "pretrain", "finetune"):
            out += getattr(self, stage).problems(stage)
        out += check("image_size", self.data.image_size, "data.image_size")
        out += check("min_val_per_group", self.data.min_val_per_group, "data.min_val_per_group")
        out += check("device", self.device, "device")
        for i, rate in enumerate(self.bias_rates):
            out += check("bias_rate", rate, f"bias_rates[{i}]")
        for i, seed in enumerate(self.seeds):
            out += check("seed", seed, f"seeds[{i}]")
        if not self.strategies:
            out.append(Problem("strategies", "empty; name at least one balancing strategy"))
        out += check("count", self.synthesis.batch_size, "synthesis.batch_size")
        out += check("count", self.synthesis.max_attempts, "synthesis.max_attempts")
        out += check("seed", self.synthesis.seed, "synthesis.seed")
        return out


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is typing.Union or (origin is not None and str(origin) == "<class 'types.UnionType'>") \
            or type(tp).__name__ == "UnionType":
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, where)
            except ConfigError:
                pass
        raise ConfigError(f"{where}: {value!r} does not fit {tp}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        # JSON carried as a protobuf Struct (a Kubeflow pipeline's dict parameter) has only
        # doubles: 5 arrives as 5.0
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    if tp in (list, dict) or origin in (list, dict):
        if isinstance(value, origin or tp):
            return value
        raise ConfigError(f"{where}: expected a {(origin or tp).__name__}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(tp, value, where)
    return value


def unknown_fields(cls, data: dict, where: str = "config") -> list[Problem]:
    """The keys of ``data`` that are not fields of dataclass ``cls``, as one problem (or none)."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    return [Problem(where, f"unknown field(s) {unknown}; known: {sorted(known)}")] if unknown else []


def from_dict(cls, data: dict, where: str = "config"):
    """Build dataclass ``cls`` from a mapping, naming any unknown field or ill-typed value."""
    hints = typing.get_type_hints(cls)
    for problem in unknown_fields(cls, data, where):
        raise ConfigError(str(problem))
    obj = cls()
    for k, v in data.items():
        current = getattr(obj, k)
        if isinstance(v, dict) and dataclasses.is_dataclass(current):
            # a partial mapping keeps the rest of that field's defaults (``finetune: {epochs: 3}``
            # is still FFR step 2's lr and LP-FT, not a bare TrainConfig's)
            setattr(obj, k, _onto(current, v, f"{where}.{k}"))
        else:
            setattr(obj, k, _coerce(v, hints[k], f"{where}.{k}"))
    return obj


def _onto(base, data: dict, where: str):
    """A copy of dataclass instance ``base`` with the fields of ``data`` set (checked as
    :func:`from_dict` checks them)."""
    built = from_dict(type(base), data, where)
    return dataclasses.replace(base, **{k: getattr(built, k) for k in data})


def set_dotted(cfg, key: str, value: Any) -> None:
    """Set ``a.b.c = value`` on a nested dataclass (dict fields take any sub-key)."""
    parts = key.split(".")
    obj = cfg
    for i, part in enumerate(parts[:-1]):
        if isinstance(obj, dict):
            obj = obj.setdefault(part, {})
        elif dataclasses.is_dataclass(obj) and part in {f.name for f in dataclasses.fields(obj)}:
            obj = getattr(obj, part)
        else:
            raise ConfigError(f"unknown config key {'.'.join(parts[:i + 1])!r} (in {key!r})")
    last = parts[-1]
    if isinstance(obj, dict):
        obj[last] = value
        return
    hints = typing.get_type_hints(type(obj))
    if last not in hints:
        raise ConfigError(f"unknown config key {key!r}; known at that level: {sorted(hints)}")
    setattr(obj, last, _coerce(value, hints[last], key))


class _StrictLoader(yaml.SafeLoader):
    """YAML's safe loader that refuses a key given twice in one mapping (YAML keeps the last,
    silently: a config that sets ``lr`` twice means one of them is a mistake)."""


def _mapping(loader, node, deep=False):
    seen = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *defaults` merges; its keys may be overridden
            continue
        key = loader.construct_object(key_node, deep=deep)
        try:
            hash(key)
        except TypeError:
            raise yaml.constructor.ConstructorError("while reading a mapping", node.start_mark,
                                                    f"a key must be a plain value, got {key!r}",
                                                    key_node.start_mark) from None
        if key in seen:
            raise yaml.constructor.ConstructorError(
                "while reading a mapping", node.start_mark, f"key {key!r} is given twice (first on line "
                f"{seen[key] + 1})", key_node.start_mark)
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


# The most values a YAML document may expand to through its aliases: a real config has hundreds; a
# "billion laughs" document of 1 KB expands to billions (each alias repeats what it names).
MAX_YAML_VALUES = 100_000


def _expanded_size(root) -> int:
    """How many values the YAML node graph ``root`` expands to (aliases counted as often as they
    repeat), up to just past :data:`MAX_YAML_VALUES`; one node's count is computed once."""
    sizes: dict[int, int] = {}
    entered: set[int] = set()  # entered, not yet counted: the nodes on the path (a recursive alias counts as too many)
    stack = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes or (not children_done and id(node) in entered):
            continue
        entered.add(id(node))
        kids = [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else \
            list(node.value) if isinstance(node, yaml.SequenceNode) else []
        if children_done:
            sizes[id(node)] = min(MAX_YAML_VALUES + 1, 1 + sum(sizes.get(id(k), MAX_YAML_VALUES + 1) for k in kids))
            continue
        stack.append((node, True))
        stack.extend((k, False) for k in kids if id(k) not in sizes)
    return sizes[id(root)]


def yaml_load(text: str, where: str):
    """Parse YAML ``text`` (duplicate keys refused; a document whose aliases expand it past
    :data:`MAX_YAML_VALUES` values refused before it is built); a syntax error is a
    :class:`ConfigError` naming ``where`` (the file, or the ``--set`` item) and the line."""
    loader = _StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node) > MAX_YAML_VALUES:
            raise ConfigError(f"{where}: the document expands to more than {MAX_YAML_VALUES:,} values through its "
                              "YAML aliases (&anchor / *alias); refusing to read it")
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{where}: invalid YAML{at}: {problem}") from None
    finally:
        loader.dispose()


def parse_set(item: str) -> tuple[str, Any]:
    """``key=value`` with the value parsed as YAML (``lr=1e-4`` → 0.0001, ``seeds=[0,1]``)."""
    if "=" not in item:
        raise ConfigError(f"--set expects key=value, got {item!r}")
    k, v = item.split("=", 1)
    val = yaml_load(v, f"--set {item!r}")
    if isinstance(val, str):
        try:  # YAML 1.1 reads "1e-4" (no dot) as a string
            val = float(val)
        except ValueError:
            pass
    return k.strip(), val


def load_config(path: str | Path | None = None, sets: list[str] | None = None, cls=ExperimentConfig):
    """Defaults < YAML file ``path`` (a local path or an ``s3://`` URI) < ``sets`` (``key=value`` strings)."""
    from ffr.paths import local_path

    cfg = cls()
    if path is not None:
        path = local_path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        try:
            data = yaml_load(path.read_text(encoding="utf-8"), str(path)) or {}
        except UnicodeDecodeError as e:
            raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}: {e.reason})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        cfg = from_dict(cls, data, where=str(path))
    for item in sets or []:
        k, v = parse_set(item)
        set_dotted(cfg, k, v)
    return cfg


def to_dict(cfg) -> dict:
    return asdict(cfg)


def save_config(cfg, path: str | Path) -> None:
    """Write the resolved config as YAML."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


def with_overrides(cfg, overrides: dict[str, Any]):
    """A deep copy of ``cfg`` with dotted ``overrides`` applied."""
    import copy

    out = copy.deepcopy(cfg)
    for k, v in overrides.items():
        set_dotted(out, k, v)
    return out
