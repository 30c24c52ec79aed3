"""One typed config: defaults here, a YAML file overrides them, ``--set key=value`` overrides the
YAML, and the resolved config is written next to every output."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ffr.train.loop import TrainConfig


class ConfigError(ValueError):
    """A config file or override names an unknown field or gives a value of the wrong type."""


@dataclass
class DataConfig:
    """Which dataset, at which resolution, and how the bias-rate split treats validation."""

    dataset: str = "demo"                 # "demo" or a dataset directory (manifest.csv + card.json)
    image_size: int = 32
    min_val_per_group: int = 10
    demo: dict = field(default_factory=dict)   # DemoSpec overrides (ffr.data.demo)
    adapter: str = "csv"                  # dataset adapter reading ``dataset`` (ffr.data.adapters)
    options: dict = field(default_factory=dict)  # adapter options (e.g. label/bias attributes)


@dataclass
class SynthesisConfig:
    """The synthesis backend that fills the synthetic pool."""

    backend: str = "procedural"
    seed: int = 0
    batch_size: int = 64
    options: dict = field(default_factory=dict)
    filters: list = field(default_factory=list)   # e.g. ["grayscale"] (ffr.synthesis.filters)
    max_attempts: int = 10                        # per image, when filters reject


@dataclass
class ExperimentConfig:
    """A grid of strategies × bias rates × seeds for one objective, with per-strategy stage
    hyperparameters. ``train`` is the single stage of none/usb/asb, ``pretrain`` and
    ``finetune`` are FFR's steps 1 and 2. ``overrides`` maps a strategy to dotted overrides
    (the paper trains ASB at lr 1e-4); ``search`` maps a strategy (or ``"*"``) to a grid of dotted
    keys → values, chosen per (strategy, bias rate) by mean validation WGA over seeds."""

    data: DataConfig = field(default_factory=DataConfig)
    synthesis: SynthesisConfig = field(default_factory=SynthesisConfig)
    backbone: str = "small_cnn"
    weights: str | None = None
    objective: str = "erm"
    device: str = "auto"
    strategies: list = field(default_factory=lambda: ["none", "usb", "asb", "ffr"])
    bias_rates: list = field(default_factory=lambda: [0.95, 0.99])
    seeds: list = field(default_factory=lambda: [0, 1, 2])
    train: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=40, lr=1e-3))
    pretrain: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=40, lr=1e-4))
    finetune: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=40, lr=1e-3))
    overrides: dict = field(default_factory=lambda: {"asb": {"train.lr": 1e-4}})
    search: dict = field(default_factory=dict)
    # ``ffr sweep``: several objectives (empty: just ``objective``), per-objective options
    # (``{groupdro: {eta: 0.01}, dfr: {n_refits: 20}}``), and several datasets, each a name →
    # dotted overrides (empty: just ``data``).
    objectives: list = field(default_factory=list)
    objective_options: dict = field(default_factory=dict)
    datasets: dict = field(default_factory=dict)


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


def parse_set(item: str) -> tuple[str, Any]:
    """``key=value`` with the value parsed as YAML (``lr=1e-4`` → 0.0001, ``seeds=[0,1]``)."""
    if "=" not in item:
        raise ConfigError(f"--set expects key=value, got {item!r}")
    k, v = item.split("=", 1)
    val = yaml.safe_load(v)
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
        data = yaml.safe_load(path.read_text()) or {}
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
