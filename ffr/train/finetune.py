"""What a stage may keep from its initialisation: the step-2 options of :class:`ffr.config.TrainConfig`.

On a strongly biased real set, plain fine-tuning of FFR's step-1 model re-learns the background
shortcut within a few dozen steps. These options limit how far step 2 moves from step 1:

- ``freeze_bn``: every BatchNorm layer stays in eval mode (running statistics unchanged) and its
  affine parameters are not trained;
- ``freeze_stages`` = k: the first k stages of the feature extractor (``Classifier.stages()``) are
  not trained and their BatchNorm statistics are unchanged;
- ``backbone_lr_mult``: the feature extractor trains at ``lr * backbone_lr_mult``, the head at ``lr``;
- ``l2sp``: adds ``l2sp / 2 * sum ||w - w_init||^2`` over the feature extractor's trainable
  weights, ``w_init`` being the weights the stage started from (step 1's for FFR's step 2);
- ``lpft_epochs`` = e: the first e epochs train the head alone (features in eval mode), the
  remaining ``epochs - e`` train everything (LP-FT);
- ``select_init`` (in :func:`~ffr.train.loop.fit`): the starting weights are evaluated before the
  first epoch and compete in checkpoint selection as epoch -1, so a stage never returns a model
  with a worse validation WGA than the one it started from.
"""

from __future__ import annotations

import torch
from torch import nn


class StageControls:
    """Applies a :class:`~ffr.config.TrainConfig`'s step-2 options to a model for one call of
    the training loop: which parameters train at which rate, which modules stay in eval mode,
    and the L2-SP penalty."""

    def __init__(self, model: nn.Module, cfg):
        self.cfg = cfg
        self.frozen: list[nn.Module] = []
        stages = model.stages() if cfg.freeze_stages else []
        if cfg.freeze_stages > len(stages):
            raise ValueError(f"freeze_stages={cfg.freeze_stages}, but the backbone has {len(stages)} stages")
        self.frozen.extend(stages[: cfg.freeze_stages])
        if cfg.freeze_bn:
            self.frozen.extend(m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))
        for m in self.frozen:
            m.requires_grad_(False)
        self.head = [p for p in model.head.parameters() if p.requires_grad]
        head_ids = {id(p) for p in self.head}
        self.backbone = [p for p in model.parameters() if p.requires_grad and id(p) not in head_ids]
        self.reference = [p.detach().clone() for p in self.backbone] if cfg.l2sp > 0 else []

    def param_groups(self) -> list[dict]:
        """Optimizer parameter groups: the feature extractor at ``lr * backbone_lr_mult``, the head
        at ``lr``. Frozen parameters are left out."""
        groups = [{"params": self.head, "lr": self.cfg.lr}]
        if self.backbone:
            groups.insert(0, {"params": self.backbone, "lr": self.cfg.lr * self.cfg.backbone_lr_mult})
        return groups

    def start_epoch(self, model: nn.Module, epoch: int) -> None:
        """Put ``model`` in training mode for ``epoch``, except what must not change."""
        model.train()
        for m in self.frozen:
            m.eval()
        probing = epoch < self.cfg.lpft_epochs
        if probing:
            model.features.eval()
        for p in self.backbone:
            # Parameters without a gradient are skipped by the optimizer (weight decay included).
            p.requires_grad_(not probing)

    def penalty(self) -> torch.Tensor | None:
        """The L2-SP term (``None`` when ``l2sp`` is 0)."""
        if not self.reference:
            return None
        total = sum(((p - r.to(p.device)) ** 2).sum() for p, r in zip(self.backbone, self.reference))
        return 0.5 * self.cfg.l2sp * total

    def release(self, model: nn.Module) -> None:
        """Make every parameter trainable again (the returned model carries no freezing)."""
        model.requires_grad_(True)
