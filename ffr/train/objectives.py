"""Objective registry: each training objective is a hook on the one training loop.

A loss-level method overrides :meth:`Objective.loss`; a data-level method overrides
:meth:`Objective.epoch_indices`; a last-layer method overrides :meth:`Objective.finalize`.
The loop itself is never forked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ffr.plugins import Registry

OBJECTIVES: Registry = Registry("objective")


@dataclass
class ObjectiveContext:
    """What an objective may look at when it is set up: the training groups it optimises over
    (``group_ids``, one per training row, ``n_groups`` in all) and the training device."""

    group_ids: torch.Tensor
    n_groups: int
    device: torch.device
    options: dict[str, Any] = field(default_factory=dict)
    group_names: list[str] | None = None   # one per group id, for logs
    normalize: str = "imagenet"            # input normalisation, for objectives that embed data
    eval_batch_size: int = 512
    seed: int = 0


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


def training_group_names(card, n_groups: int) -> list[str]:
    """Names of the ids :func:`training_groups` returns: ``<label>_<bias>``, suffixed with
    ``_real`` / ``_synthetic`` when groups are split by source."""
    keys = card.group_keys
    if n_groups == len(keys):
        return list(keys)
    return [f"{k}_{src}" for src in ("real", "synthetic") for k in keys]


class Objective:
    """Empirical risk minimisation; the base every objective refines.

    ``trains_as`` names another objective whose training this one shares exactly (it differs only
    in :meth:`finalize`): a grid may then reuse that objective's trained model.
    """

    name = "erm"
    trains_as: str | None = None

    def __init__(self, **options: Any):
        if options:
            raise TypeError(f"unexpected option(s) {sorted(options)}")
        self.options: dict[str, Any] = {}

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


@OBJECTIVES.register("resample")
class Resample(Objective):
    """Group-balanced sampling with replacement: row weights ∝ 1 / (size of the row's training
    group), so every group is drawn equally often in expectation. An epoch draws as many rows as
    the training set has."""

    name = "resample"

    def setup(self, ctx: ObjectiveContext) -> None:
        super().setup(ctx)
        counts = torch.bincount(ctx.group_ids, minlength=ctx.n_groups).double()
        self.weights = 1.0 / counts[ctx.group_ids]

    def epoch_indices(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return torch.multinomial(self.weights, n, replacement=True, generator=generator)


@OBJECTIVES.register("groupdro")
class GroupDRO(Objective):
    """Online GroupDRO (Sagawa et al. 2020): group weights ``q`` follow exponentiated-gradient
    ascent on the per-group mean losses (step size ``eta``); the loss is ``sum_g q_g * loss_g``.
    A group absent from a batch contributes no loss and keeps its weight (before renormalising).

    Data-parallel (several ranks, each with a part of the global batch): the per-group sums and
    counts are summed over ranks, so every rank updates ``q`` from the global batch's group losses
    (the same ``q`` everywhere), and each rank's loss is its share of the global objective, so the
    averaged gradient is the single-process one."""

    name = "groupdro"

    def __init__(self, eta: float = 0.01):
        self.eta = float(eta)
        self.options = {"eta": self.eta}

    def setup(self, ctx: ObjectiveContext) -> None:
        super().setup(ctx)
        self.q = torch.full((ctx.n_groups,), 1.0 / ctx.n_groups, device=ctx.device)

    def loss(self, logits: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
        from ffr.train import distributed as dist

        n = self.ctx.n_groups
        per_row = F.cross_entropy(logits, labels, reduction="none")
        sums = torch.zeros(n, dtype=per_row.dtype, device=per_row.device).scatter_add(0, groups, per_row)
        # over every rank's part of the batch (one process: this batch)
        counts = dist.sum_over_ranks(torch.bincount(groups, minlength=n).to(per_row.dtype))
        present, counts = counts > 0, counts.clamp(min=1)
        with torch.no_grad():
            losses = dist.sum_over_ranks(sums.detach()) / counts  # mean loss per group, 0 where absent
            q = self.q.to(per_row.device) * torch.exp(self.eta * losses * present)
            self.q = q / q.sum()
        # DDP averages the ranks' gradients: scaling by the world size makes the average the
        # gradient of sum_g q_g * (sum_g / count_g) over the whole batch.
        return (self.q * sums / counts).sum() * dist.world_size()

    def state(self) -> dict:
        names = self.ctx.group_names or [str(i) for i in range(self.ctx.n_groups)]
        return {f"groupdro/q/{k}": float(v) for k, v in zip(names, self.q.cpu())}


DFR_CS = (3.0, 1.0, 0.3, 0.1, 0.03, 0.01, 0.003)


def balanced_subsample(groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Indices of a group-balanced subsample: every group present cut down, at random, to the
    size of the smallest group present."""
    present = [np.flatnonzero(groups == g) for g in np.unique(groups)]
    m = min(len(ix) for ix in present)
    return np.sort(np.concatenate([rng.choice(ix, m, replace=False) for ix in present]))


def worst_group_accuracy(pred: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> float:
    """Minimum over the groups present of the accuracy within the group."""
    return float(min((pred[groups == g] == labels[groups == g]).mean() for g in np.unique(groups)))


def _l1_logistic(C: float, n_classes: int, seed: int):
    import sklearn
    from sklearn.linear_model import LogisticRegression

    # scikit-learn 1.8 deprecates ``penalty`` in favour of ``l1_ratio``.
    major, minor = (int(v) for v in sklearn.__version__.split(".")[:2])
    l1 = {"l1_ratio": 1.0} if (major, minor) >= (1, 8) else {"penalty": "l1"}
    # liblinear is the reference's solver; it is binary only, so multi-class uses saga.
    solver = "liblinear" if n_classes == 2 else "saga"
    return LogisticRegression(C=C, solver=solver, max_iter=2000, random_state=seed, **l1)


@dataclass
class DFRHead:
    """A last layer fitted by :func:`dfr_fit`: ``logits = weight @ z + bias`` on standardised,
    L2-normalised features ``z = (f / |f| - mean) / scale``."""

    weight: np.ndarray     # (n_classes, D)
    bias: np.ndarray       # (n_classes,)
    mean: np.ndarray       # (D,)
    scale: np.ndarray      # (D,)
    C: float
    scores: dict           # C → worst-group accuracy on the held-out half

    def logits(self, features: np.ndarray) -> np.ndarray:
        return self.weight @ ((_l2(features) - self.mean) / self.scale).T + self.bias[:, None]


def _l2(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _to_classes(coef: np.ndarray, intercept: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    if n_classes == 2 and coef.shape[0] == 1:  # binary: one logit difference, class 1 vs class 0
        return np.vstack([np.zeros_like(coef[0]), coef[0]]), np.array([0.0, intercept[0]])
    return coef, intercept


def dfr_fit(features: np.ndarray, labels: np.ndarray, groups: np.ndarray, n_classes: int,
            Cs=DFR_CS, n_refits: int = 20, seed: int = 0) -> DFRHead:
    """Deep feature reweighting (Kirichenko et al.) on precomputed features.

    Features are L2-normalised, then standardised. Each C of ``Cs`` is fitted (L1 logistic
    regression) on a group-balanced subsample of one half of the rows (each group halved at
    random) and scored by worst-group accuracy on the other half; the best C (the first on ties)
    is refitted ``n_refits`` times on group-balanced subsamples of all rows and the weights are
    averaged. The features are never recomputed here.
    """
    features, labels, groups = np.asarray(features, np.float64), np.asarray(labels), np.asarray(groups)
    if len(np.unique(labels)) < 2:
        raise ValueError("DFR needs rows of at least two classes in the validation split")
    rng = np.random.default_rng(seed)
    x = _l2(features)
    mean, scale = x.mean(0), x.std(0)
    scale = np.where(scale > 1e-12, scale, 1.0)
    z = (x - mean) / scale
    first = np.zeros(len(z), dtype=bool)
    for g in np.unique(groups):
        ix = rng.permutation(np.flatnonzero(groups == g))
        first[ix[: max(1, len(ix) // 2)]] = True
    fit_rows = np.flatnonzero(first)[balanced_subsample(groups[first], rng)]
    held = ~first if (~first).any() else first
    scores = {}
    for C in Cs:
        clf = _l1_logistic(C, n_classes, seed).fit(z[fit_rows], labels[fit_rows])
        scores[float(C)] = worst_group_accuracy(clf.predict(z[held]), labels[held], groups[held])
    best = max(scores, key=lambda c: scores[c])  # max keeps the first of equal scores
    coefs, intercepts = [], []
    for _ in range(n_refits):
        rows = balanced_subsample(groups, rng)
        clf = _l1_logistic(best, n_classes, seed).fit(z[rows], labels[rows])
        w, b = _to_classes(clf.coef_, clf.intercept_, n_classes)
        if len(clf.classes_) != n_classes:  # a class absent from the subsample: place its row
            full_w, full_b = np.zeros((n_classes, z.shape[1])), np.full(n_classes, -1e4)
            full_w[clf.classes_], full_b[clf.classes_] = w, b
            w, b = full_w, full_b
        coefs.append(w)
        intercepts.append(b)
    return DFRHead(np.mean(coefs, 0), np.mean(intercepts, 0), mean, scale, best, scores)


@OBJECTIVES.register("dfr")
class DFR(Objective):
    """ERM training, then deep feature reweighting of the selected model's last layer on the real
    validation split (:func:`dfr_fit`). The new head absorbs the standardisation; the model
    L2-normalises its features before the head (``Classifier.feature_norm``)."""

    name = "dfr"
    trains_as = "erm"

    def __init__(self, Cs=DFR_CS, n_refits: int = 20):
        self.Cs, self.n_refits = tuple(float(c) for c in Cs), int(n_refits)
        self.options = {"Cs": list(self.Cs), "n_refits": self.n_refits}
        self.head: DFRHead | None = None

    def finalize(self, model, train, val, device):
        from ffr.train.embeddings import embed

        feats = embed(model, val, device, self.ctx.normalize, self.ctx.eval_batch_size)  # once
        self.head = dfr_fit(feats, val.labels.numpy(), val.groups.numpy(), len(val.card.classes),
                            self.Cs, self.n_refits, self.ctx.seed)
        return fold_head(model, self.head)

    def state(self) -> dict:
        if self.head is None:
            return {}
        return {"dfr/C": self.head.C, **{f"dfr/wga_at_C/{c:g}": s for c, s in self.head.scores.items()}}


def fold_head(model, head: DFRHead):
    """A copy of ``model`` whose ``head`` computes ``head.logits`` from raw features: the
    standardisation folds into the linear layer; the L2 normalisation (not linear) is done by
    the model (``feature_norm``)."""
    import copy

    out = copy.deepcopy(model)
    w = head.weight / head.scale[None, :]
    b = head.bias - w @ head.mean
    with torch.no_grad():
        out.head.weight.copy_(torch.as_tensor(w, dtype=out.head.weight.dtype))
        out.head.bias.copy_(torch.as_tensor(b, dtype=out.head.bias.dtype))
    out.feature_norm = True
    return out


def create_objective(name: str, **options: Any) -> Objective:
    """Instantiate the objective registered as ``name`` with its options (e.g. ``eta`` of
    ``groupdro``); an option the objective does not take is an error naming it."""
    cls = OBJECTIVES.get(name)
    try:
        return cls(**options)
    except TypeError as e:
        raise ValueError(f"objective {name!r}: bad option(s) {sorted(options)}: {e}") from None


def objective_problems(name: str, options: dict | None = None) -> list:
    """What is wrong with objective ``name`` and its ``options`` (empty when nothing): an unknown
    name, or options the objective does not take or values it refuses."""
    from ffr.rules import Problem

    problems = OBJECTIVES.problems(name, "objective")
    if not problems:
        try:
            create_objective(name, **(options or {}))
        except (ValueError, TypeError) as e:
            problems.append(Problem(f"objective_options.{name}", str(e)))
    return problems
