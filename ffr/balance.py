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
from ffr.plugins import Registry

STRATEGIES: Registry = Registry("balancing strategy")


@dataclass(frozen=True)
class StagePlan:
    """One training stage of a strategy, before any data is drawn.

    ``data``: what it trains on — ``real``, ``synthetic`` or ``mixed`` (real + synthetic in one
    set). ``objective``: the objective it always trains with (FFR's step 1 is ERM on a balanced
    set), or None for the configured one. ``init_from``: an earlier stage whose selected model
    starts this one. ``group_by``: the groups a group-aware objective (Resample, GroupDRO)
    optimises over — ``label_bias`` (Y, B) or ``label_bias_source`` (Y, B, G), the paper's
    protocol for a set that mixes real and synthetic images."""

    name: str
    data: str
    objective: str | None = None
    init_from: str | None = None
    group_by: str = "label_bias"

    def objective_for(self, configured: str) -> str:
        """The objective this stage trains with when ``configured`` is the experiment's."""
        return self.objective or configured


@dataclass
class Stage:
    """One call of the training loop: its plan and the manifest it trains on."""

    plan: StagePlan
    train: Manifest

    @property
    def name(self) -> str:
        return self.plan.name

    @property
    def init_from(self) -> str | None:
        return self.plan.init_from


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


def equal_share(real_counts: dict[tuple[str, str], int]) -> dict[tuple[str, str], int]:
    """USB's synthetic total spread evenly over the groups (ASB's and FFR's budget)."""
    per_group = sum(usb_need(real_counts).values()) // max(1, len(real_counts))
    return {g: per_group for g in real_counts}


class Strategy:
    """A balancing strategy: its synthetic budget per group and its stage plan.

    Subclasses set ``name`` and ``stages`` and override :meth:`synthetic_budget`; :meth:`plan`
    draws the synthetic images and builds each stage's training set from the plan.
    """

    name: str = ""
    stages: tuple[StagePlan, ...] = ()

    def synthetic_budget(self, real_counts: dict[tuple[str, str], int]) -> dict[tuple[str, str], int]:
        """Synthetic images per group this strategy uses, given the real train counts per group."""
        raise NotImplementedError

    @property
    def stage_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.stages)

    def stage(self, name: str) -> StagePlan:
        """The plan of stage ``name``; a KeyError names this strategy's stages otherwise."""
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(f"strategy {self.name!r} has no stage {name!r}; its stages: {list(self.stage_names)}")

    @property
    def uses_synthetic(self) -> bool:
        return any(s.data != "real" for s in self.stages)

    def stage_sizes(self, n_real: int, n_synthetic: int) -> list[tuple[str, int]]:
        """(stage name, training images) of every stage, for ``n_real`` real and ``n_synthetic``
        synthetic images drawn (what a grid costs, without drawing anything)."""
        size = {"real": n_real, "synthetic": n_synthetic, "mixed": n_real + n_synthetic}
        return [(s.name, size[s.data]) for s in self.stages]

    def plan(self, real: Manifest, pool: Manifest | None) -> "BalancePlan":
        """The training set of every stage for the real train rows ``real`` and the synthetic
        ``pool`` (needed unless the strategy uses no synthetic image)."""
        need = self.synthetic_budget(real.group_counts())
        if self.uses_synthetic and pool is None:
            raise ValueError(f"strategy {self.name!r} needs a synthetic pool")
        synth = draw_synthetic(pool, need) if self.uses_synthetic else None
        sets = {"real": lambda: real, "synthetic": lambda: synth,
                "mixed": lambda: Manifest.concat([real, synth])}
        return BalancePlan(self.name, [Stage(s, sets[s.data]()) for s in self.stages],
                           {group_key(*g): n for g, n in need.items()})


def stage_plan(stage: str, strategy: str | None = None) -> StagePlan:
    """The plan of stage ``stage`` of ``strategy``; with no strategy, of the stage of that name
    in the registered strategies: what ``ffr train --stage`` knows of the stage it runs when no
    ``--strategy`` is given. Strategies sharing a stage name must then plan it alike (objective,
    start); where they differ in data or grouping (``train`` is real-only for ``none``, mixed for
    USB/ASB) the plan says ``auto``: grouped by what the set holds."""
    if strategy is not None:
        return STRATEGIES.get(strategy).stage(stage)
    owners = [n for n in STRATEGIES.names() if stage in STRATEGIES.get(n).stage_names]
    plans = [STRATEGIES.get(n).stage(stage) for n in owners]
    if not plans:
        known = sorted({s for n in STRATEGIES.names() for s in STRATEGIES.get(n).stage_names})
        raise KeyError(f"unknown stage {stage!r}; known: {', '.join(known)}")
    if len({(p.objective, p.init_from) for p in plans}) > 1:
        raise KeyError(f"stage {stage!r} is planned differently by strategies {owners}: name the strategy "
                       "(--strategy)")
    if len({(p.data, p.group_by) for p in plans}) > 1:
        return StagePlan(stage, "any", plans[0].objective, plans[0].init_from, group_by="auto")
    return plans[0]


def synthetic_budget(strategy: str, real_counts: dict[tuple[str, str], int]) -> dict[tuple[str, str], int]:
    """Synthetic images per group that ``strategy`` uses, given the real train counts per group."""
    return STRATEGIES.get(strategy).synthetic_budget(real_counts)


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
    return STRATEGIES.get(strategy).plan(real_train, synthetic_pool)


def _register(cls: type[Strategy]) -> type[Strategy]:
    STRATEGIES.register(cls.name)(cls())
    return cls


@_register
class NoSynthetic(Strategy):
    """``none``: the real images alone."""

    name = "none"
    stages = (StagePlan("train", "real"),)

    def synthetic_budget(self, real_counts):
        return {g: 0 for g in real_counts}


@_register
class UniformSyntheticBalancing(Strategy):
    """``usb``: every group filled with synthetic images up to the largest real group, one mixed set."""

    name = "usb"
    stages = (StagePlan("train", "mixed", group_by="label_bias_source"),)

    def synthetic_budget(self, real_counts):
        return usb_need(real_counts)


@_register
class AddedSyntheticBalancing(Strategy):
    """``asb``: USB's synthetic total split evenly over the groups and added, one mixed set."""

    name = "asb"
    stages = (StagePlan("train", "mixed", group_by="label_bias_source"),)

    def synthetic_budget(self, real_counts):
        return equal_share(real_counts)


@_register
class FromFakeToReal(Strategy):
    """``ffr``: step 1 on ASB's synthetic budget alone (balanced, so ERM), step 2 on the real
    images alone, starting from step 1's selected model. Real and synthetic never share a batch."""

    name = "ffr"
    stages = (StagePlan("pretrain", "synthetic", objective="erm"),
              StagePlan("finetune", "real", init_from="pretrain"))

    def synthetic_budget(self, real_counts):
        return equal_share(real_counts)
