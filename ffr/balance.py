"""Balancing strategies: how real and synthetic images make up the training set(s).

All strategies spend the same synthetic budget (PAPER.md):

- ``none``: real data only.
- ``usb``  (uniform synthetic balancing): every group is filled with synthetic images up to the
  size of the largest real group; one mixed training set.
- ``asb``  (added synthetic balancing): ``USB_total // n_groups`` synthetic images are added to
  every group; one mixed training set.
- ``ffr``: step 1 trains on ``USB_total // n_groups`` synthetic images per group alone; step 2
  fine-tunes on the real images alone. Real and synthetic never share a batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ffr.data.manifest import Manifest, group_key
from ffr.registry import Registry

STRATEGIES: Registry = Registry("balancing strategy")


@dataclass
class Stage:
    """One call of the training loop: a name and the manifest it trains on.
    ``init_from`` names an earlier stage whose selected checkpoint initialises this one."""

    name: str
    train: Manifest
    init_from: str | None = None


@dataclass
class BalancePlan:
    """What a strategy trains on, stage by stage, and how many synthetic images it drew per group."""

    strategy: str
    stages: list[Stage]
    synthetic_per_group: dict[str, int] = field(default_factory=dict)

    def summary(self) -> dict:
        return {
            "strategy": self.strategy,
            "synthetic_per_group": self.synthetic_per_group,
            "stages": [{"name": s.name, "init_from": s.init_from, "n": len(s.train),
                        "groups": {group_key(*g): n for g, n in s.train.group_counts().items()},
                        "synthetic": int(s.train.is_synthetic().sum())} for s in self.stages],
        }


def usb_need(real_counts: dict[tuple[str, str], int]) -> dict[tuple[str, str], int]:
    """Synthetic images USB adds to each group: up to the largest real group."""
    top = max(real_counts.values()) if real_counts else 0
    return {g: top - n for g, n in real_counts.items()}


def synthetic_budget(strategy: str, real_counts: dict[tuple[str, str], int]) -> dict[tuple[str, str], int]:
    """Synthetic images per group that ``strategy`` uses, given the real train counts per group."""
    STRATEGIES.get(strategy)  # unknown names fail here, listing the known ones
    if strategy == "none":
        return {g: 0 for g in real_counts}
    usb = usb_need(real_counts)
    if strategy == "usb":
        return usb
    per_group = sum(usb.values()) // max(1, len(real_counts))
    return {g: per_group for g in real_counts}


def pool_requirement(strategies, real_counts_list) -> dict[tuple[str, str], int]:
    """The synthetic pool that serves every (strategy, real counts) pair: the max per group."""
    need: dict[tuple[str, str], int] = {}
    for counts in real_counts_list:
        for s in strategies:
            for g, n in synthetic_budget(s, counts).items():
                need[g] = max(need.get(g, 0), n)
    return need


def draw_synthetic(pool: Manifest, need: dict[tuple[str, str], int]) -> Manifest:
    """The first ``need[g]`` synthetic images of each group of ``pool`` (in index order, so every
    strategy draws the same images); a clear error when the pool is too small."""
    frame = pool.frame
    parts, short = [], []
    for (label, bias), n in need.items():
        if n <= 0:
            continue
        rows = frame[(frame["label"] == label) & (frame["bias"] == bias) & (frame["source"] == "synthetic")]
        rows = rows.sort_values(["path"], kind="stable")
        if len(rows) < n:
            short.append(f"group {group_key(label, bias)}: needs {n}, pool has {len(rows)}")
        parts.append(rows.iloc[:n])
    if short:
        raise ValueError("synthetic pool too small: " + "; ".join(short))
    import pandas as pd

    chosen = pd.concat(parts, ignore_index=True) if parts else frame.iloc[:0]
    chosen = chosen.assign(split="train")
    return Manifest(chosen, pool.card, pool.root)


def balance(strategy: str, real_train: Manifest, synthetic_pool: Manifest | None = None) -> BalancePlan:
    """The training plan of ``strategy`` for the real train rows ``real_train``."""
    real_train = real_train.select(split="train", source="real")
    return STRATEGIES.get(strategy)(real_train, synthetic_pool)


def _need_pool(strategy, pool):
    if pool is None:
        raise ValueError(f"strategy {strategy!r} needs a synthetic pool")
    return pool


@STRATEGIES.register("none")
def _none(real: Manifest, pool: Manifest | None) -> BalancePlan:
    return BalancePlan("none", [Stage("train", real)], {g: 0 for g in real.card.group_keys})


def _mixed(name: str, real: Manifest, pool: Manifest | None) -> BalancePlan:
    need = synthetic_budget(name, real.group_counts())
    synth = draw_synthetic(_need_pool(name, pool), need)
    return BalancePlan(name, [Stage("train", Manifest.concat([real, synth]))],
                       {group_key(*g): n for g, n in need.items()})


@STRATEGIES.register("usb")
def _usb(real: Manifest, pool: Manifest | None) -> BalancePlan:
    return _mixed("usb", real, pool)


@STRATEGIES.register("asb")
def _asb(real: Manifest, pool: Manifest | None) -> BalancePlan:
    return _mixed("asb", real, pool)


@STRATEGIES.register("ffr")
def _ffr(real: Manifest, pool: Manifest | None) -> BalancePlan:
    need = synthetic_budget("ffr", real.group_counts())
    synth = draw_synthetic(_need_pool("ffr", pool), need)
    return BalancePlan("ffr", [Stage("pretrain", synth), Stage("finetune", real, init_from="pretrain")],
                       {group_key(*g): n for g, n in need.items()})
