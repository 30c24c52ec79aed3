"""Bias-rate splits with the paper's semantics.

Within each class c of the train split, the majority group (c, majority_bias[c]) is kept whole
and the minority groups are subsampled so the majority holds a fraction ``r`` of the class:
``keep = floor(n_majority * (1 - r) / r)`` images in all for the minority groups (with one
minority bias value — every dataset of the paper — that is the paper's per-group formula;
with several, it is shared equally among them). At least one image of each group is kept so
every group exists. The validation split is biased the same way but keeps at least
``min_val_per_group`` images per group (when that many exist). The test split is left as given.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ffr.config import MIN_VAL_PER_GROUP
from ffr.data.manifest import Manifest, group_key
from ffr.rules import require


@dataclass
class SplitReport:
    """Counts per group and split before and after the bias-rate split."""

    bias_rate: float
    seed: int
    before: dict[str, dict[str, int]]
    after: dict[str, dict[str, int]]

    @property
    def absent(self) -> dict[str, list[str]]:
        """Groups with no real image in the validation or test split, per split: worst-group
        accuracy there is taken over the groups present, so these are reported wherever it is."""
        return {s: [k.replace("|", "_") for k, n in self.after[s].items() if n == 0]
                for s in ("val", "test") if any(n == 0 for n in self.after.get(s, {}).values())}

    def warnings(self) -> list[str]:
        """One line per split with absent groups."""
        return [f"warning: no real {s} image in group(s) {', '.join(g)}: worst-group accuracy on {s} covers only "
                "the groups present" for s, g in self.absent.items()]

    def to_dict(self) -> dict:
        return {"bias_rate": self.bias_rate, "seed": self.seed, "before": self.before, "after": self.after,
                "absent": self.absent}

    def save(self, path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    def format(self) -> str:
        table = {s: {tuple(k.split("|")): v for k, v in c.items()} for s, c in self.after.items()}
        return "\n".join([f"bias rate {self.bias_rate}, seed {self.seed}", format_group_counts(table),
                          *self.warnings()])


def minority_keep(n_majority: int, bias_rate: float, n_minority_groups: int = 1) -> int:
    """Images kept per minority group so that the majority holds ``bias_rate`` of the class."""
    require("bias_rate", bias_rate)
    # The small epsilon keeps exact products (e.g. 990 * 0.01 / 0.99 = 10) from flooring to 9.
    total = n_majority * (1.0 - bias_rate) / bias_rate
    return max(1, int(math.floor(total / max(1, n_minority_groups) + 1e-9)))


def bias_rate_split(manifest: Manifest, bias_rate: float, seed: int = 0,
                    min_val_per_group: int = MIN_VAL_PER_GROUP) -> tuple[Manifest, SplitReport]:
    """Subsample the real train and val rows of ``manifest`` to bias rate ``bias_rate``.

    Sampling is seeded and independent of row order (rows are sorted by path first). Synthetic
    rows and the test split pass through untouched.
    """
    card = manifest.card
    frame = manifest.frame
    before = _counts(frame, card)
    keep_mask = np.ones(len(frame), dtype=bool)
    rng = np.random.default_rng(seed)
    real = frame["source"] == "real"
    for split in ("train", "val"):
        for c in card.classes:
            maj = card.majority_bias[c]
            in_class = real & (frame["split"] == split) & (frame["label"] == c)
            n_maj = int((in_class & (frame["bias"] == maj)).sum())
            minority_values = [b for b in card.bias_values if b != maj]
            n_min = int((in_class & (frame["bias"] != maj)).sum())
            if split == "train" and n_maj == 0 and n_min:
                raise ValueError(f"class {c!r}: its majority group {group_key(c, maj)} has no real train image, so a "
                                 f"bias-rate split would drop all {n_min} of its minority images and the class "
                                 "with them; fix the card's majority_bias or the data")
            keep = minority_keep(n_maj, bias_rate, len(minority_values)) if n_maj else 0
            if split == "val":
                keep = max(keep, min_val_per_group)
            for b in minority_values:
                idx = frame.index[in_class & (frame["bias"] == b)]
                if len(idx) <= keep:
                    continue
                order = frame.loc[idx, "path"].sort_values(kind="stable").index.to_numpy()
                chosen = set(rng.permutation(order)[:keep].tolist())
                drop = [i for i in order if i not in chosen]
                keep_mask[drop] = False
    out = Manifest(frame[keep_mask], card, manifest.root)
    return out, SplitReport(float(bias_rate), int(seed), before, _counts(out.frame, card))


def _counts(frame: pd.DataFrame, card) -> dict[str, dict[str, int]]:
    out = {}
    for split in ("train", "val", "test"):
        sub = frame[(frame["split"] == split) & (frame["source"] == "real")]
        counts = sub.groupby(["label", "bias"]).size().to_dict()
        out[split] = {f"{c}|{b}": int(counts.get((c, b), 0)) for c, b in card.groups}
    return out


def class_bias_fraction(manifest: Manifest, split: str = "train") -> dict[str, float]:
    """Per class, the fraction of real images of ``split`` in the majority group."""
    sub = manifest.select(split=split, source="real").frame
    out = {}
    for c in manifest.card.classes:
        rows = sub[sub["label"] == c]
        out[c] = float((rows["bias"] == manifest.card.majority_bias[c]).mean()) if len(rows) else float("nan")
    return out


__all__ = ["bias_rate_split", "minority_keep", "SplitReport", "class_bias_fraction", "group_key"]


def format_group_counts(counts_by_split: dict[str, dict[tuple[str, str], int]]) -> str:
    """A plain-text table: one row per group, one column per split."""
    splits = list(counts_by_split)
    groups = list(next(iter(counts_by_split.values()))) if counts_by_split else []
    width = max([len("group")] + [len(group_key(*g)) for g in groups])
    lines = ["group".ljust(width) + "".join(f"{s:>9}" for s in splits)]
    for g in groups:
        lines.append(group_key(*g).ljust(width) + "".join(f"{counts_by_split[s][g]:>9}" for s in splits))
    return "\n".join(lines)
