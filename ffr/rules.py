"""Every rule a value given to ffr must follow, written once, and the one form a refusal takes.

A rule is a predicate and the words that say it (:data:`RULES`); :func:`check` applies one to a
value under a field name and returns a :class:`Problem` (``"<field>: <value> <rule>"``). The typed
objects hold their fields' rules by name (:meth:`ffr.config.TrainConfig.problems`,
:meth:`ffr.train.request.StageRequest.problems`, the experiment config, the Kubeflow run form, the
built-in benchmarks' specs) and every entry point refuses the same way: :func:`refuse` raises one
:class:`ConfigError` listing every problem (the CLI prints ``ffr: error: ...`` and exits 2). A
rule's words exist here only, so a bad value reads the same wherever it is given.

Standard library only: the command line, a Kubeflow step's check and the configs import it before
anything heavy.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable

MAX_IMAGE_SIZE = 1024
MAX_SEED = 2 ** 63 - 1
DEVICE_PATTERN = r"auto|cpu|mps|cuda(:\d+)?"


class ConfigError(ValueError):
    """A config, a run form or a request names an unknown field or gives a bad value; the message
    lists every problem."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one field: ``field`` names it as the user wrote it (``finetune.lr``,
    ``pretrain_epochs``, ``--per-group``), ``text`` says what is wrong."""

    field: str
    text: str

    def __str__(self) -> str:
        return f"{self.field}: {self.text}" if self.field else self.text

    def renamed(self, field: str) -> "Problem":
        """The same problem under another field name (the name an entry point's user gave it)."""
        return Problem(field, self.text)

    def within(self, prefix: str, sep: str = ".") -> "Problem":
        """The same problem, its field under ``prefix`` (``datasets.faces``; a search candidate
        with ``sep`` ``": "``)."""
        return Problem(f"{prefix}{sep}{self.field}" if self.field else prefix, self.text)


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _integer(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


# rule name -> (predicate, what a value must be). The field names of ffr's configs use these names;
# a field whose rule has another name says so where it is checked (synthesis.batch_size: "count").
RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    # one training stage (ffr.config.TrainConfig)
    "epochs": (lambda v: _integer(v) and v >= 1, "must be at least 1"),
    "min_steps": (lambda v: _integer(v) and v >= 0, "must be 0 (no floor) or more"),
    "max_steps": (lambda v: _integer(v) and v >= 0, "must be 0 (no cap) or more"),
    "patience": (lambda v: _integer(v) and v >= 0, "must be 0 (no early stopping) or more"),
    "warmup_steps": (lambda v: _integer(v) and v >= 0, "must be 0 (no stop before min_steps) or more"),
    "batch_size": (lambda v: _integer(v) and v >= 2,
                   "must be at least 2 (a batch of one breaks BatchNorm: nothing would train)"),
    "eval_batch_size": (lambda v: _integer(v) and v >= 1, "must be at least 1"),
    "lr": (lambda v: _number(v) and v > 0, "must be positive"),
    "weight_decay": (lambda v: _number(v) and v >= 0, "must not be negative"),
    "momentum": (lambda v: _number(v) and 0 <= v < 1, "must be in [0, 1)"),
    "optimizer": (lambda v: v in ("adam", "sgd"), "must be adam or sgd"),
    "tie_break": (lambda v: v in ("worst_group_loss", "first"), "must be worst_group_loss or first"),
    "amp": (lambda v: v in ("auto", "bf16", "fp16", "off"), "must be auto, bf16, fp16 or off"),
    "normalize": (lambda v: v in ("imagenet", "half"), "must be imagenet or half"),
    "group_by": (lambda v: v in ("auto", "label_bias", "label_bias_source"),
                 "must be auto, label_bias or label_bias_source"),
    "num_threads": (lambda v: _integer(v) and v >= -1,
                    "must be 0 (the machine's CPUs), N > 0, or -1 (adaptive: follows the load, not reproducible)"),
    "freeze_stages": (lambda v: _integer(v) and v >= 0, "must not be negative"),
    "backbone_lr_mult": (lambda v: _number(v) and v >= 0, "must not be negative"),
    "l2sp": (lambda v: _number(v) and v >= 0, "must not be negative"),
    # a stage's model, data and machine
    "image_size": (lambda v: _integer(v) and 8 <= v <= MAX_IMAGE_SIZE, f"must be in [8, {MAX_IMAGE_SIZE}] pixels"),
    "device": (lambda v: isinstance(v, str) and re.fullmatch(DEVICE_PATTERN, v) is not None,
               "is not a device: auto, cpu, cuda, cuda:N or mps"),
    "seed": (lambda v: _integer(v) and 0 <= v <= MAX_SEED, "must be an integer in [0, 2**63)"),
    "processes": (lambda v: _integer(v) and v >= 1, "must be at least 1"),
    # data, synthesis and fan-outs
    "bias_rate": (lambda v: _number(v) and 0 < v < 1, "must be a number in (0, 1)"),
    "split_fractions": (lambda v: isinstance(v, (list, tuple)) and len(v) == 3 and all(_number(f) and f > 0 for f in v)
                        and abs(sum(v) - 1) <= 1e-6, "must be 3 positive numbers summing to 1"),
    "per_split": (lambda v: v is None or (_integer(v) and v >= 3), "must be at least 3 (one for each split)"),
    "image_count": (lambda v: _integer(v) and v >= 0, "must not be negative"),
    "min_val_per_group": (lambda v: _integer(v) and v >= 1, "must be at least 1"),
    "count": (lambda v: _integer(v) and v >= 1, "must be at least 1"),
    "parallelism": (lambda v: _integer(v) and v >= 0, "must be 0 (no cap) or more"),
    "positive": (lambda v: _number(v) and v > 0, "must be positive"),
    # the promotion gate's margin, tolerance and floor (accuracies as fractions)
    "fraction": (lambda v: _number(v) and 0 <= v <= 1, "must be a fraction in [0, 1]"),
}


def check(rule: str, value: Any, field: str | None = None) -> list[Problem]:
    """``[]`` when ``value`` follows rule ``rule``, else the one :class:`Problem` naming ``field``
    (default: the rule's name)."""
    ok, words = RULES[rule]
    try:
        good = bool(ok(value))
    except TypeError:  # e.g. a string compared with a number
        good = False
    return [] if good else [Problem(field or rule, f"{value!r} {words}")]


def require(rule: str, value: Any, field: str | None = None):
    """``value``, or a :class:`ConfigError` saying which rule it breaks (a single value checked
    where it is used, e.g. a command-line flag or a benchmark spec's field)."""
    problems = check(rule, value, field)
    if problems:
        raise ConfigError(str(problems[0]))
    return value


def unique(problems: Iterable[Problem]) -> list[Problem]:
    """``problems`` without repeats, in order."""
    return list(dict.fromkeys(problems))


def error_text(problems: Iterable[Problem], what: str = "config") -> str:
    """The one text of a refusal: ``invalid <what>:`` and every problem on its own line."""
    return f"invalid {what}:\n  - " + "\n  - ".join(str(p) for p in unique(problems))


def refuse(problems: Iterable[Problem], what: str = "config") -> None:
    """Raise one :class:`ConfigError` listing ``problems``; nothing when there are none."""
    problems = unique(problems)
    if problems:
        raise ConfigError(error_text(problems, what))
