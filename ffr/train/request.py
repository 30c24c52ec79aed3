"""One training stage as every entry point asks for it: a :class:`StageRequest`.

``ffr train`` (and so the DVC training stages), the Kubeflow train step, each ``torchrun`` rank and
every grid cell build one request, check it once (:meth:`StageRequest.problems` is the only home
of its rules) and hand it down whole to :func:`ffr.steps.train_stage` or the stage driver
:func:`ffr.train.stage.run_stage`. It travels as JSON (:meth:`~StageRequest.to_dict` /
:meth:`~StageRequest.from_dict`): to ``torchrun``'s ranks in a file, to a Kubeflow train step in
the run plan its check step wrote.

Torch-free: building a request costs no model library (checking one loads the registries of
objectives and backbones, beside it in :mod:`ffr.train`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING

from ffr.config import BACKBONE, IMAGE_SIZE, OBJECTIVE, ExperimentConfig, TrainConfig, from_dict
from ffr.rules import Problem, check, refuse

if TYPE_CHECKING:  # a plan is read, never built, here
    from ffr.balance import StagePlan

# A request's fields as an experiment config names them (the rest have the same name there):
# what ``ffr train --set ...`` reports a bad value under.
CONFIG_NAMES = {"image_size": "data.image_size"}


@dataclass
class StageRequest:
    """One training stage: which stage of which strategy, its loop settings, the model, the
    objective, the data it reads and writes, where it starts and where it runs.

    Args:
        stage: The stage's name in its strategy's plan (``train`` for none/USB/ASB,
            ``pretrain`` / ``finetune`` for FFR).
        settings: The training loop's settings (epochs, step budget, lr, step-2 options ...).
        strategy: The strategy whose stage it is; None: the stage name alone says (a name every
            strategy that has it plans alike).
        backbone: The network (``ffr.train.backbones``).
        weights: Pretrained backbone weights (a state dict file); None: random init.
        objective: The objective the stage trains with, the stage plan's rule applied (FFR's
            step 1 is always ERM).
        objective_options: That objective's options (e.g. ``{"eta": 0.01}`` for GroupDRO).
        image_size: Images are resized to this many pixels square.
        seed: Seed of the model's initialisation and the data order.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        processes: More than 1: data-parallel in that many processes (``torchrun``).
        group_by: The groups a group-aware objective optimises over when ``settings.group_by``
            is ``auto``: the strategy's (``label_bias`` or ``label_bias_source``), or ``auto``
            (decided by whether the set mixes real and synthetic images).
        train_data: The folder of the manifest trained on (all its rows); None for a grid cell,
            which passes its manifests in memory.
        val_data: The dataset folder whose real ``val`` rows select the checkpoint.
        init: A checkpoint whose weights start the stage (FFR's step 2 starts from step 1's).
        out: Where the selected model is written (``X.pt``, with ``X.pt.history.jsonl`` and
            ``X.pt.json`` beside it).
    """

    stage: str = "train"
    settings: TrainConfig = field(default_factory=TrainConfig)
    strategy: str | None = None
    backbone: str = BACKBONE
    weights: str | None = None
    objective: str = OBJECTIVE
    objective_options: dict = field(default_factory=dict)
    image_size: int = IMAGE_SIZE
    seed: int = 0
    device: str = "auto"
    processes: int = 1
    group_by: str = "auto"
    train_data: str | None = None
    val_data: str | None = None
    init: str | None = None
    out: str | None = None

    @classmethod
    def for_stage(cls, cfg: ExperimentConfig, plan: "StagePlan", seed: int, strategy: str | None = None,
                  **refs) -> "StageRequest":
        """The request of stage ``plan`` in experiment ``cfg`` for ``seed``: its section's
        settings, the plan's objective rule (else the configured objective) with that
        objective's options, the plan's grouping; ``refs`` sets the data references
        (``train_data``, ``val_data``, ``init``, ``out``) and ``processes``."""
        objective = plan.objective_for(cfg.objective)
        return cls(stage=plan.name, settings=cfg.stage_settings(plan.name), strategy=strategy,
                   backbone=cfg.backbone, weights=cfg.weights, objective=objective,
                   objective_options=dict(cfg.objective_options.get(objective) or {}),
                   image_size=cfg.data.image_size, seed=seed, device=cfg.device, group_by=plan.group_by, **refs)

    def with_refs(self, **refs) -> "StageRequest":
        """A copy with other data references (``train_data``, ``val_data``, ``init``, ``out``)."""
        return dataclasses.replace(self, **{k: None if v is None else str(v) for k, v in refs.items()})

    def loop_settings(self, has_synthetic: bool) -> TrainConfig:
        """The settings the loop runs with: ``group_by`` resolved to the strategy's. A mixed
        strategy's (Y, B, G) grouping on a set with no synthetic image (USB with nothing to add)
        is (Y, B): a source group with no row would only dilute GroupDRO's weights."""
        if self.settings.group_by != "auto" or self.group_by == "auto":
            return self.settings
        group_by = self.group_by
        if group_by == "label_bias_source" and not has_synthetic:
            group_by = "label_bias"
        return dataclasses.replace(self.settings, group_by=group_by)

    # ------------------------------------------------------------------------------- the rules
    def problems(self, names: dict[str, str] | None = None) -> list[Problem]:
        """Everything wrong with this request (empty when nothing): its settings (named
        ``<stage>.<field>``), image size, device, seed, processes, grouping, and the backbone,
        objective and objective options by their registries. ``names`` renames fields for the
        entry point's user (e.g. :data:`CONFIG_NAMES`)."""
        from ffr.train.backbones import BACKBONES
        from ffr.train.objectives import objective_problems

        out = self.settings.problems(self.stage)
        out += check("image_size", self.image_size)
        out += check("device", self.device)
        out += check("seed", self.seed)
        out += check("processes", self.processes)
        out += check("group_by", self.group_by)
        out += BACKBONES.problems(self.backbone, "backbone") + objective_problems(self.objective, self.objective_options)
        names = names or {}
        return [p.renamed(names[p.field]) if p.field in names else p for p in out]

    def check(self, names: dict[str, str] | None = None, what: str = "stage request") -> "StageRequest":
        """This request, or a :class:`~ffr.rules.ConfigError` listing every problem."""
        refuse(self.problems(names), what)
        return self

    # ------------------------------------------------------------------------------------ JSON
    def to_dict(self) -> dict:
        """The request as JSON-able values (``settings`` a mapping; a field that is None left out,
        as a pipeline's protobuf values have no null)."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, data: dict, where: str = "request") -> "StageRequest":
        """A request from :meth:`to_dict`'s form; an unknown field or an ill-typed value is a
        :class:`~ffr.rules.ConfigError` naming it (numbers that JSON or a protobuf Struct turned
        into floats, 5.0 for 5, are taken back)."""
        return from_dict(cls, data, where)
