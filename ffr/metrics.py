"""The one group evaluator: per-group accuracy and counts, worst-group, balanced and average
accuracy. Used for checkpoint selection and for the final report alike.

Counts are accumulated in a :class:`GroupTally` (correct and total per group), so tallies from
several batches — or several processes — add up exactly before any ratio is taken.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ffr.data.manifest import DatasetCard


@dataclass
class GroupTally:
    """Correct and total predictions per group (index = label * n_bias + bias)."""

    n_groups: int
    correct: np.ndarray = field(default=None)  # type: ignore[assignment]
    total: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.correct is None:
            self.correct = np.zeros(self.n_groups, dtype=np.int64)
        if self.total is None:
            self.total = np.zeros(self.n_groups, dtype=np.int64)

    def add(self, pred, label, group) -> "GroupTally":
        """Count a batch of predictions (array-likes or tensors of equal length)."""
        pred, label, group = (np.asarray(_np(a)).astype(np.int64).ravel() for a in (pred, label, group))
        if not (len(pred) == len(label) == len(group)):
            raise ValueError(f"pred, label and group lengths differ: {len(pred)}, {len(label)}, {len(group)}")
        if len(group) and (group.min() < 0 or group.max() >= self.n_groups):
            raise ValueError(f"group index out of range [0, {self.n_groups})")
        self.correct += np.bincount(group, weights=(pred == label), minlength=self.n_groups).astype(np.int64)
        self.total += np.bincount(group, minlength=self.n_groups).astype(np.int64)
        return self

    def __iadd__(self, other: "GroupTally") -> "GroupTally":
        self.correct += other.correct
        self.total += other.total
        return self


def _np(a):
    if hasattr(a, "detach"):
        return a.detach().cpu().numpy()
    return a


def metrics_from_tally(tally: GroupTally, card: DatasetCard) -> dict:
    """The report for a tally: ``worst_group_acc``, ``worst_group``, ``balanced_acc``,
    ``average_acc``, ``n`` and ``groups`` (``{"<label>_<bias>": {"acc", "n"}}``).

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
    return {
        "worst_group_acc": wga,
        "worst_group": worst,
        "balanced_acc": bal,
        "average_acc": float(tally.correct.sum()) / total if total else None,
        "n": total,
        "absent_groups": [k for k in keys if groups[k]["n"] == 0],
        "groups": groups,
    }


def group_metrics(pred, label, group, card: DatasetCard) -> dict:
    """Group metrics of predictions ``pred`` against ``label`` with group indices ``group``."""
    return metrics_from_tally(GroupTally(card.n_groups).add(pred, label, group), card)


def confusion_matrix(pred, label, num_classes: int) -> np.ndarray:
    """``m[true, predicted]`` counts."""
    pred, label = np.asarray(_np(pred)).astype(np.int64), np.asarray(_np(label)).astype(np.int64)
    return np.bincount(label * num_classes + pred, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def flat_metrics(metrics: dict, prefix: str) -> dict[str, float]:
    """Stable scalar names for trackers: ``<prefix>/worst_group_acc``,
    ``<prefix>/group/<label>_<bias>/acc`` ... (absent groups are omitted)."""
    out = {}
    for k in ("worst_group_acc", "balanced_acc", "average_acc"):
        if metrics.get(k) is not None:
            out[f"{prefix}/{k}"] = float(metrics[k])
    for g, v in metrics["groups"].items():
        if v["acc"] is not None:
            out[f"{prefix}/group/{g}/acc"] = float(v["acc"])
        out[f"{prefix}/group/{g}/n"] = float(v["n"])
    return out
