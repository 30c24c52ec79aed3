"""One typed config: defaults here, a YAML file overrides them, ``--set key=value`` overrides the
YAML, and the resolved config is written next to every output."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

# ------------------------------------------------------------------------------------ defaults
# The one place for the training defaults. ``TrainConfig``, ``ExperimentConfig``, the pipelines'
# run form (pipelines/definitions.py) read these names; the Kubeflow components' signatures must
# hold literals (KFP ships a lightweight component's source alone), so tests/test_defaults.py
# checks that every component and pipeline default equals the constant here.
EPOCHS = 40              # epochs of every stage
# The step budget (TrainConfig.min_steps / max_steps / patience). 40 epochs of a 600-image set are
# 200 steps of 128 images, too few to learn it; min_steps gives it 200 epochs instead, while a
# 50,000-image set (391 steps an epoch) keeps its 40. Patience stops a stage that stopped improving.
MIN_STEPS = 1000
MAX_STEPS = 0            # no cap
PATIENCE = 10
LR = 1e-3                # learning rate of a stage trained from scratch on real or mixed data
PRETRAIN_LR = 1e-4       # FFR step 1 (synthetic pretraining)
FINETUNE_LR = 1e-3       # FFR step 2 (fine-tuning on real)
ASB_LR = 1e-4            # the paper trains ASB at 1e-4
BATCH_SIZE = 128
WEIGHT_DECAY = 1e-5
IMAGE_SIZE = 32
BACKBONE = "small_cnn"
OBJECTIVE = "erm"
BIAS_RATE = 0.95
MIN_VAL_PER_GROUP = 10
SYNTHESIS_BACKEND = "procedural"
SYNTHESIS_BATCH_SIZE = 8
MAX_ATTEMPTS = 10


@dataclass
class TrainConfig:
    """Hyperparameters of one training stage (one call of the training loop)."""

    epochs: int = EPOCHS
    # The budget in optimizer steps (0: off): at least min_steps (more epochs on a small dataset),
    # at most max_steps (the cap wins over the floor); patience stops after that many epochs
    # without a better validation WGA (never before min_steps).
    min_steps: int = MIN_STEPS
    max_steps: int = MAX_STEPS
    patience: int = PATIENCE
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
    lpft_epochs: int = 0             # first epochs train the head alone (LP-FT)
    select_init: bool = False        # the starting weights compete in checkpoint selection (epoch -1)


class ConfigError(ValueError):
    """A config file or override names an unknown field or gives a value of the wrong type."""


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
    ``finetune`` are FFR's steps 1 and 2. ``overrides`` maps a strategy to dotted overrides
    (the paper trains ASB at lr 1e-4); ``search`` maps a strategy (or ``"*"``) to a grid of dotted
    keys → values, chosen per (strategy, bias rate) by mean validation WGA over seeds;
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
    finetune: TrainConfig = field(default_factory=lambda: TrainConfig(lr=FINETUNE_LR))
    overrides: dict = field(default_factory=lambda: {"asb": {"train.lr": ASB_LR}})
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


# --------------------------------------------------------------------------------- validation
# Checked when a config is loaded, before any data is read or any image rendered: a bad value is
# an error naming the field, not a traceback hours later (or a silent run that trained nothing).
MAX_IMAGE_SIZE = 1024
MAX_SEED = 2 ** 63 - 1
DEVICE_PATTERN = r"auto|cpu|mps|cuda(:\d+)?"


def train_problems(cfg: TrainConfig, where: str) -> list[str]:
    """What is wrong with one stage's settings (empty when nothing)."""
    out = []

    def need(ok: bool, field_: str, rule: str) -> None:
        if not ok:
            out.append(f"{where}.{field_}: {getattr(cfg, field_)!r} {rule}")

    need(cfg.epochs >= 1, "epochs", "must be at least 1")
    need(cfg.min_steps >= 0, "min_steps", "must be 0 (no floor) or more")
    need(cfg.max_steps >= 0, "max_steps", "must be 0 (no cap) or more")
    need(cfg.patience >= 0, "patience", "must be 0 (no early stopping) or more")
    need(cfg.batch_size >= 2, "batch_size", "must be at least 2 (a batch of one breaks BatchNorm: nothing would train)")
    need(cfg.eval_batch_size >= 1, "eval_batch_size", "must be at least 1")
    need(cfg.lr > 0, "lr", "must be positive")
    need(cfg.weight_decay >= 0, "weight_decay", "must not be negative")
    need(0 <= cfg.momentum < 1, "momentum", "must be in [0, 1)")
    need(cfg.optimizer in ("adam", "sgd"), "optimizer", "must be adam or sgd")
    need(cfg.amp in ("auto", "bf16", "fp16", "off"), "amp", "must be auto, bf16, fp16 or off")
    need(cfg.normalize in ("imagenet", "half"), "normalize", "must be imagenet or half")
    need(cfg.group_by in ("auto", "label_bias", "label_bias_source"), "group_by",
         "must be auto, label_bias or label_bias_source")
    need(cfg.num_threads >= -1, "num_threads", "must be 0 (the machine's CPUs), N > 0, or -1 (adaptive: follows "
         "the load, not reproducible)")
    need(cfg.freeze_stages >= 0, "freeze_stages", "must not be negative")
    need(cfg.backbone_lr_mult >= 0, "backbone_lr_mult", "must not be negative")
    need(cfg.l2sp >= 0, "l2sp", "must not be negative")
    need(0 <= cfg.lpft_epochs <= max(cfg.epochs, 0), "lpft_epochs", f"must be in [0, epochs={cfg.epochs}]")
    return out


def check_train(cfg: TrainConfig, where: str = "train") -> TrainConfig:
    """``cfg``, or a :class:`ConfigError` listing every bad field."""
    problems = train_problems(cfg, where)
    if problems:
        raise ConfigError("; ".join(problems))
    return cfg


def experiment_problems(cfg: "ExperimentConfig") -> list[str]:
    """What is wrong with an experiment config, names of registered things left aside (those are
    :func:`ffr.checks.check_names`'s)."""
    import re

    out = []
    for stage in ("train", "pretrain", "finetune"):
        out += train_problems(getattr(cfg, stage), stage)
    if not 8 <= cfg.data.image_size <= MAX_IMAGE_SIZE:
        out.append(f"data.image_size: {cfg.data.image_size} must be in [8, {MAX_IMAGE_SIZE}]")
    if cfg.data.min_val_per_group < 1:
        out.append(f"data.min_val_per_group: {cfg.data.min_val_per_group} must be at least 1")
    if not re.fullmatch(DEVICE_PATTERN, str(cfg.device)):
        out.append(f"device: {cfg.device!r} is not a device: auto, cpu, cuda, cuda:N or mps")
    for i, rate in enumerate(cfg.bias_rates):
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate < 1:
            out.append(f"bias_rates[{i}]: {rate!r} must be a number in (0, 1)")
    for i, seed in enumerate(cfg.seeds):
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
            out.append(f"seeds[{i}]: {seed!r} must be an integer in [0, 2**63)")
    if not cfg.strategies:
        out.append("strategies: empty; name at least one of none, usb, asb, ffr")
    if cfg.synthesis.batch_size < 1:
        out.append(f"synthesis.batch_size: {cfg.synthesis.batch_size} must be at least 1")
    if cfg.synthesis.max_attempts < 1:
        out.append(f"synthesis.max_attempts: {cfg.synthesis.max_attempts} must be at least 1")
    if not 0 <= cfg.synthesis.seed <= MAX_SEED:
        out.append(f"synthesis.seed: {cfg.synthesis.seed} must be an integer in [0, 2**63)")
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


def from_dict(cls, data: dict, where: str = "config"):
    """Build dataclass ``cls`` from a mapping, naming any unknown field or ill-typed value."""
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {unknown}; known: {sorted(known)}")
    obj = cls()
    for k, v in data.items():
        setattr(obj, k, _coerce(v, hints[k], f"{where}.{k}"))
    return obj


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


def yaml_load(text: str, where: str):
    """Parse YAML ``text`` (duplicate keys refused); a syntax error is a :class:`ConfigError`
    naming ``where`` (the file, or the ``--set`` item) and the line."""
    try:
        return yaml.load(text, Loader=_StrictLoader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{where}: invalid YAML{at}: {problem}") from None


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
