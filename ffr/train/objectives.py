"""Objective registry: each training objective is a hook on the one training loop.

A loss-level method overrides :meth:`Objective.loss`; a data-level method overrides
:meth:`Objective.epoch_indices`; a last-layer method overrides :meth:`Objective.finalize`.
The loop itself is never forked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from ffr.registry import Registry

OBJECTIVES: Registry = Registry("objective")


@dataclass
class ObjectiveContext:
    """What an objective may look at when it is set up: the training groups it optimises over
    (``group_ids``, one per training row, ``n_groups`` in all) and the training device."""

    group_ids: torch.Tensor
    n_groups: int
    device: torch.device
    options: dict[str, Any] = field(default_factory=dict)


def training_groups(labels: torch.Tensor, biases: torch.Tensor, sources: torch.Tensor,
                    n_bias: int, n_classes: int, group_by: str = "auto") -> tuple[torch.Tensor, int]:
    """Group ids the objective optimises over.

    ``label_bias``: (Y, B). ``label_bias_source``: (Y, B, G), G = real/synthetic — the paper's
    protocol for mixed real + synthetic sets. ``auto``: (Y, B, G) when the set mixes sources,
    (Y, B) otherwise.
    """
    base = labels * n_bias + biases
    n = n_classes * n_bias
    mixed = bool(sources.min() != sources.max()) if len(sources) else False
    if group_by == "auto":
        group_by = "label_bias_source" if mixed else "label_bias"
    if group_by == "label_bias":
        return base, n
    if group_by == "label_bias_source":
        return base + n * sources, 2 * n
    raise ValueError(f"unknown group_by {group_by!r}; known: auto, label_bias, label_bias_source")


class Objective:
    """Empirical risk minimisation; the base every objective refines."""

    name = "erm"

    def __init__(self, **options: Any):
        self.options = options

    def setup(self, ctx: ObjectiveContext) -> None:
        """Called once before training with the training groups."""
        self.ctx = ctx

    def epoch_indices(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """The order in which one epoch visits the training rows (default: a permutation)."""
        return torch.randperm(n, generator=generator)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
        """The scalar loss of a batch (default: mean cross-entropy)."""
        return F.cross_entropy(logits, labels)

    def finalize(self, model, train, val, device):
        """Called on the selected model after training (default: unchanged)."""
        return model

    def state(self) -> dict:
        """Scalars worth logging per epoch (e.g. GroupDRO's group weights)."""
        return {}


@OBJECTIVES.register("erm")
class ERM(Objective):
    """Plain ERM: uniform sampling, mean cross-entropy."""


def create_objective(name: str, **options: Any) -> Objective:
    """Instantiate the objective registered as ``name``."""
    return OBJECTIVES.get(name)(**options)
