"""The one group evaluator: per-group accuracy and counts, worst-group, balanced and average
accuracy, and — when the confidences are given — the expected calibration error (ECE) per group.
Used for checkpoint selection and for the final report alike.

Counts are accumulated in a :class:`GroupTally` (correct and total per group, and per group and
confidence bin the count, the correct predictions and the summed confidence), so tallies from
several batches — or several processes — add up before any ratio is taken.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ffr.config import TIE_BREAK
from ffr.data.manifest import DatasetCard, group_key


ECE_BINS = 15  # equal-width confidence bins, as in Guo et al. (2017) and SubpopBench
LOSS_DECIMALS = 6  # group losses are reported to 1e-6


@dataclass
class GroupTally:
    """Correct and total predictions per group (index = label * n_bias + bias); with
    confidences, per group and confidence bin (``[n_groups, ECE_BINS]``) the count, the correct
    predictions and the summed confidence, for the expected calibration error."""

    n_groups: int
    correct: np.ndarray = field(default=None)  # type: ignore[assignment]
    total: np.ndarray = field(default=None)  # type: ignore[assignment]
    bin_count: np.ndarray = field(default=None)  # type: ignore[assignment]
    bin_correct: np.ndarray = field(default=None)  # type: ignore[assignment]
    bin_confidence: np.ndarray = field(default=None)  # type: ignore[assignment]
    # with per-row losses (the true class's negative log-likelihood): their sum and count per group
    loss_sum: np.ndarray = field(default=None)  # type: ignore[assignment]
    loss_count: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.correct is None:
            self.correct = np.zeros(self.n_groups, dtype=np.int64)
        if self.total is None:
            self.total = np.zeros(self.n_groups, dtype=np.int64)
        if self.loss_sum is None:
            self.loss_sum = np.zeros(self.n_groups, dtype=np.float64)
        if self.loss_count is None:
            self.loss_count = np.zeros(self.n_groups, dtype=np.int64)
        shape = (self.n_groups, ECE_BINS)
        if self.bin_count is None:
            self.bin_count = np.zeros(shape, dtype=np.int64)
        if self.bin_correct is None:
            self.bin_correct = np.zeros(shape, dtype=np.int64)
        if self.bin_confidence is None:
            self.bin_confidence = np.zeros(shape, dtype=np.float64)

    def add(self, pred, label, group, confidence=None, loss=None) -> "GroupTally":
        """Count a batch of predictions (array-likes or tensors of equal length); ``confidence``:
        the predicted class's probability per row, for the calibration error; ``loss``: each row's
        cross-entropy (negative log-likelihood of its label), for the worst-group loss."""
        pred, label, group = (np.asarray(_np(a)).astype(np.int64).ravel() for a in (pred, label, group))
        if not (len(pred) == len(label) == len(group)):
            raise ValueError(f"pred, label and group lengths differ: {len(pred)}, {len(label)}, {len(group)}")
        if len(group) and (group.min() < 0 or group.max() >= self.n_groups):
            raise ValueError(f"group index out of range [0, {self.n_groups})")
        hit = pred == label
        self.correct += np.bincount(group, weights=hit, minlength=self.n_groups).astype(np.int64)
        self.total += np.bincount(group, minlength=self.n_groups).astype(np.int64)
        if confidence is not None:
            conf = np.asarray(_np(confidence), dtype=np.float64).ravel()
            if len(conf) != len(pred):
                raise ValueError(f"confidence has {len(conf)} values for {len(pred)} predictions")
            b = np.clip((conf * ECE_BINS).astype(np.int64), 0, ECE_BINS - 1)  # bin k: (k/B, (k+1)/B]
            cell = group * ECE_BINS + b
            size = self.n_groups * ECE_BINS
            self.bin_count += np.bincount(cell, minlength=size).reshape(self.n_groups, ECE_BINS)
            self.bin_correct += np.bincount(cell, weights=hit, minlength=size).astype(np.int64).reshape(
                self.n_groups, ECE_BINS)
            self.bin_confidence += np.bincount(cell, weights=conf, minlength=size).reshape(self.n_groups, ECE_BINS)
        if loss is not None:
            nll = np.asarray(_np(loss), dtype=np.float64).ravel()
            if len(nll) != len(pred):
                raise ValueError(f"loss has {len(nll)} values for {len(pred)} predictions")
            self.loss_sum += np.bincount(group, weights=nll, minlength=self.n_groups)
            self.loss_count += np.bincount(group, minlength=self.n_groups).astype(np.int64)
        return self

    def __iadd__(self, other: "GroupTally") -> "GroupTally":
        self.correct += other.correct
        self.total += other.total
        self.bin_count += other.bin_count
        self.bin_correct += other.bin_correct
        self.bin_confidence += other.bin_confidence
        self.loss_sum += other.loss_sum
        self.loss_count += other.loss_count
        return self

    def ece(self) -> tuple[np.ndarray, float] | None:
        """(ECE per group, ECE over all rows) — Σ over bins of |correct − summed confidence|
        divided by the rows counted — or None when no confidences were counted."""
        counted = self.bin_count.sum(1)
        if not counted.sum():
            return None
        gap = np.abs(self.bin_correct - self.bin_confidence)
        per_group = np.where(counted > 0, gap.sum(1) / np.maximum(counted, 1), np.nan)
        overall = float(np.abs(self.bin_correct.sum(0) - self.bin_confidence.sum(0)).sum() / counted.sum())
        return per_group, overall


def _np(a):
    if hasattr(a, "detach"):
        return a.detach().cpu().numpy()
    return a


def metrics_from_tally(tally: GroupTally, card: DatasetCard) -> dict:
    """The report for a tally: ``worst_group_acc``, ``worst_group``, ``balanced_acc``,
    ``average_acc``, ``n`` and ``groups`` (``{"<label>_<bias>": {"acc", "n"}}``). With
    confidences counted also ``ece`` (all rows), ``worst_group_ece`` (the largest group ECE) and
    each group's ``ece``; with losses counted, each group's mean cross-entropy ``loss`` and
    ``worst_group_loss`` (the largest), the tie-break of checkpoint and hyperparameter selection
    when worst-group accuracies tie (:func:`selection_key`).

    A group with no images is reported with ``acc: None`` and ``n: 0`` and left out of the
    worst-group and balanced figures; if no group has images these are ``None`` too.
    """
    keys = card.group_keys
    if len(keys) != tally.n_groups:
        raise ValueError(f"tally has {tally.n_groups} groups, card {card.name!r} has {len(keys)}")
    groups = {}
    accs = {}
    for k, c, t in zip(keys, tally.correct, tally.total):
        if t > 0:
            accs[k] = float(c) / float(t)
        groups[k] = {"acc": accs.get(k), "n": int(t)}
    total = int(tally.total.sum())
    if accs:
        worst = min(accs, key=lambda k: (accs[k], keys.index(k)))
        wga, bal = accs[worst], float(np.mean(list(accs.values())))
    else:
        worst, wga, bal = None, None, None
    out = {
        "worst_group_acc": wga,
        "worst_group": worst,
        "balanced_acc": bal,
        "average_acc": float(tally.correct.sum()) / total if total else None,
        "n": total,
        "absent_groups": [k for k in keys if groups[k]["n"] == 0],
        "groups": groups,
    }
    calibration = tally.ece()
    if calibration is not None:
        per_group, overall = calibration
        for k, e in zip(keys, per_group):
            groups[k]["ece"] = None if np.isnan(e) else float(e)
        present = [float(e) for e in per_group if not np.isnan(e)]
        out["ece"], out["worst_group_ece"] = overall, max(present) if present else None
    if tally.loss_count.sum():
        # rounded to 1e-6: the float32 cross-entropies differ in their last bits with the batch
        # layout (one process or several), which must not change a report or a tie-break
        losses = {k: round(float(s) / int(c), LOSS_DECIMALS) if c > 0 else None
                  for k, s, c in zip(keys, tally.loss_sum, tally.loss_count)}
        for k, v in losses.items():
            groups[k]["loss"] = v
        out["worst_group_loss"] = max(v for v in losses.values() if v is not None)
    return out


def selection_key(metrics: dict, tie_break: str = TIE_BREAK) -> tuple:
    """The order of validation results for selection (larger is better): worst-group accuracy,
    balanced accuracy, then (``tie_break`` ``worst_group_loss``) minus the worst-group loss.
    Missing values rank last."""
    def value(k, sign=1.0):
        v = metrics.get(k)
        return sign * v if v is not None else -float("inf")
    key = (value("worst_group_acc"), value("balanced_acc"))
    return key + ((value("worst_group_loss", -1.0),) if tie_break == "worst_group_loss" else ())


def group_metrics(pred, label, group, card: DatasetCard, confidence=None) -> dict:
    """Group metrics of predictions ``pred`` against ``label`` with group indices ``group``
    (and the calibration error when ``confidence`` is given)."""
    return metrics_from_tally(GroupTally(card.n_groups).add(pred, label, group, confidence), card)


def confusion_matrix(pred, label, num_classes: int) -> np.ndarray:
    """``m[true, predicted]`` counts."""
    pred, label = np.asarray(_np(pred)).astype(np.int64), np.asarray(_np(label)).astype(np.int64)
    return np.bincount(label * num_classes + pred, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def train_weighted_acc(metrics: dict, train_counts: dict[str, int]) -> float | None:
    """Average accuracy as the group-robustness literature reports it (the Waterbirds
    convention): each group's accuracy weighted by the group's share of the *training* set, not of
    the evaluated split. ``metrics``: a group evaluation (:func:`metrics_from_tally`);
    ``train_counts``: training images per group (``"<label>_<bias>"``). Groups absent from either
    side are left out; None when nothing is left."""
    pairs = [(train_counts.get(g, 0), v["acc"]) for g, v in metrics["groups"].items() if v["acc"] is not None]
    total = sum(n for n, _ in pairs)
    return sum(n * acc for n, acc in pairs) / total if total else None


def with_train_weighting(metrics: dict, train) -> dict:
    """``metrics`` with ``train_weighted_acc`` (:func:`train_weighted_acc`) over the real training
    rows of ``train`` (a manifest); unchanged when it has none."""
    rows = train.select(split="train", source="real")
    if len(rows):
        counts = {group_key(*g): int(n) for g, n in rows.group_counts().items()}
        metrics["train_weighted_acc"] = train_weighted_acc(metrics, counts)
    return metrics


def flat_metrics(metrics: dict, prefix: str) -> dict[str, float]:
    """Stable scalar names for trackers: ``<prefix>/worst_group_acc``,
    ``<prefix>/group/<label>_<bias>/acc`` ... (absent groups are omitted)."""
    out = {}
    for k in ("worst_group_acc", "balanced_acc", "average_acc", "train_weighted_acc", "ece", "worst_group_ece",
              "worst_group_loss"):
        if metrics.get(k) is not None:
            out[f"{prefix}/{k}"] = float(metrics[k])
    for g, v in metrics["groups"].items():
        if v["acc"] is not None:
            out[f"{prefix}/group/{g}/acc"] = float(v["acc"])
        if v.get("ece") is not None:
            out[f"{prefix}/group/{g}/ece"] = float(v["ece"])
        out[f"{prefix}/group/{g}/n"] = float(v["n"])
    return out
