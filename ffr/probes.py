"""Probes: diagnostics of datasets and trained models.

:func:`domain_gap` asks how easily a classifier tells real from synthetic images. FFR rests on
this gap: when it is high, mixing real and synthetic images in one training set hands the model a
new shortcut (bias × source), which is why FFR keeps them in separate training stages.

:func:`shortcut_probe` — the paper's diagnosis of that (B, G) shortcut in a trained model. For a
model and a set holding real and synthetic images of every group it reports:

(a) per group (Y, B), how well a linear probe on the model's penultimate features tells real from
    synthetic images (cross-validated accuracy on a real/synthetic-balanced subsample; 0.5 is
    chance) — how strongly the model encodes G within a group;
(b) the model's accuracy on the real and on the synthetic images of the minority groups (and the
    majority groups) — whether it classifies a rare group correctly only when the image is
    synthetic.

Use synthetic images the model did not train on (e.g. a pool rendered with another seed), and the
real test split.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ffr.data.loading import BatchTransform, TensorData, load_images
from ffr.data.manifest import Manifest, group_key
from ffr.train.backbones import create_model
from ffr.train.runtime import resolve_device


def _subsample(manifest: Manifest, n: int, rng: np.random.Generator) -> Manifest:
    idx = np.sort(rng.choice(len(manifest), size=n, replace=False))
    return Manifest(manifest.frame.iloc[idx], manifest.card, manifest.root)


def domain_gap(real: Manifest, synthetic: Manifest, image_size: int = 32, seed: int = 0,
               epochs: int = 3, batch_size: int = 64, lr: float = 2e-3, test_fraction: float = 0.3,
               max_per_source: int | None = None, device: str | torch.device | None = None) -> dict:
    """Held-out accuracy of a small CNN trained to tell ``real`` from ``synthetic`` images.

    Both sources are subsampled to the same size (the smaller one, capped by ``max_per_source``),
    so chance is 0.5; ``test_fraction`` of each source is held out. Deterministic for a given
    ``seed`` on a given device, and leaves the global RNG state untouched.

    Returns ``{"accuracy", "n_train", "n_test", "per_source": {"real", "synthetic"},
    "per_group": {group_key: accuracy}}``, the last over held-out images of both sources.
    """
    n = min(len(real), len(synthetic), max_per_source or len(real))
    n_test = int(round(test_fraction * n))
    if n_test < 1 or n - n_test < 1:
        raise ValueError(f"domain_gap needs images of both sources to train and test on; got {len(real)} "
                         f"real and {len(synthetic)} synthetic with test_fraction={test_fraction}")
    device = resolve_device(device)
    rng = np.random.default_rng(seed)
    parts = [_subsample(m, n, rng) for m in (real, synthetic)]
    images = torch.cat([load_images(m, image_size) for m in parts])
    is_syn = torch.cat([torch.zeros(n, dtype=torch.long), torch.ones(n, dtype=torch.long)])
    groups = np.array([group_key(l, b) for m in parts for l, b in zip(m.frame["label"], m.frame["bias"])])
    # Hold out the same share of each source, so the test set is balanced too.
    test = np.concatenate([rng.permutation(n)[:n_test] + k * n for k in (0, 1)])
    train = np.setdiff1d(np.arange(2 * n), test)

    tf = BatchTransform("half")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = create_model("small_cnn", 2).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    x_train, y_train = images[train], is_syn[train]
    model.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(train), generator=gen).split(batch_size):
            loss = F.cross_entropy(model(tf(x_train[batch].to(device))), y_train[batch].to(device))
            opt.zero_grad()
            loss.backward()
            opt.step()

    model.eval()
    with torch.inference_mode():
        pred = torch.cat([model(tf(images[test][i:i + 512].to(device))).argmax(1).cpu()
                          for i in range(0, len(test), 512)])
    correct = (pred == is_syn[test]).numpy()
    test_groups, test_syn = groups[test], is_syn[test].numpy()
    return {
        "accuracy": float(correct.mean()),
        "n_train": int(len(train)),
        "n_test": int(len(test)),
        "per_source": {name: float(correct[test_syn == k].mean()) for k, name in enumerate(("real", "synthetic"))},
        "per_group": {g: float(correct[test_groups == g].mean())
                      for g in real.card.group_keys if (test_groups == g).any()},
    }


def _probe_accuracy(x: np.ndarray, is_synth: np.ndarray, seed: int, folds: int = 5) -> tuple[float | None, int]:
    """Cross-validated accuracy of a logistic-regression probe separating the two sources, on a
    subsample with as many real as synthetic rows. Returns (accuracy, rows per source)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(seed)
    real, synth = np.flatnonzero(~is_synth), np.flatnonzero(is_synth)
    n = min(len(real), len(synth))
    if n < 2:
        return None, n
    rows = np.concatenate([rng.choice(real, n, replace=False), rng.choice(synth, n, replace=False)])
    y = is_synth[rows].astype(int)
    cv = StratifiedKFold(n_splits=min(folds, n), shuffle=True, random_state=seed)
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
    return float(cross_val_score(probe, x[rows], y, cv=cv).mean()), n


def _mean(xs):
    xs = [x for x in xs if x is not None]
    return float(np.mean(xs)) if xs else None


@torch.inference_mode()
def shortcut_probe(model, data: TensorData, device: torch.device | str = "cpu", normalize: str = "imagenet",
                   features: np.ndarray | None = None, seed: int = 0, batch_size: int = 512) -> dict:
    """The (B, G) shortcut report of ``model`` on ``data`` (real and synthetic rows). ``features``
    may be given (e.g. from :func:`ffr.train.embeddings.cached_embed`); they are computed
    otherwise. Predictions are made from the same features, in one pass."""
    from ffr.train.embeddings import embed

    device = torch.device(device)
    if features is None:
        features = embed(model, data, device, normalize, batch_size)
    f = torch.as_tensor(features, device=device)
    if getattr(model, "feature_norm", False):
        f = torch.nn.functional.normalize(f, dim=1)
    model.to(device).eval()
    pred = model.head(f).argmax(1).cpu().numpy()
    labels, groups, synth = data.labels.numpy(), data.groups.numpy(), data.sources.numpy() == 1
    if not synth.any() or synth.all():
        raise ValueError("the shortcut probe needs real and synthetic images; got "
                         f"{int((~synth).sum())} real and {int(synth.sum())} synthetic")
    card = data.card
    report_groups = {}
    for gi, (label, bias) in enumerate(card.groups):
        rows = groups == gi
        correct = pred[rows] == labels[rows]
        acc = lambda mask: float(correct[mask].mean()) if mask.any() else None
        probe, n_each = _probe_accuracy(features[rows], synth[rows], seed)
        report_groups[group_key(label, bias)] = {
            "minority": bias != card.majority_bias[label],
            "n_real": int((~synth[rows]).sum()), "n_synthetic": int(synth[rows].sum()),
            "probe_acc": probe, "probe_n_per_source": n_each,
            "model_acc_real": acc(~synth[rows]), "model_acc_synthetic": acc(synth[rows]),
        }
    out = {"n_real": int((~synth).sum()), "n_synthetic": int(synth.sum()), "groups": report_groups,
           "probe_acc_mean": _mean([g["probe_acc"] for g in report_groups.values()])}
    for part, minority in (("minority", True), ("majority", False)):
        gs = [g for g in report_groups.values() if g["minority"] == minority]
        real, syn = _mean([g["model_acc_real"] for g in gs]), _mean([g["model_acc_synthetic"] for g in gs])
        out[part] = {"probe_acc_mean": _mean([g["probe_acc"] for g in gs]),
                     "model_acc_real": real, "model_acc_synthetic": syn,
                     "synthetic_minus_real": None if real is None or syn is None else syn - real}
    return out


def cell_checkpoint(cell_dir: str | os.PathLike) -> tuple[Path, str]:
    """The final model of a finished grid cell (``record.json``'s last stage) and a label
    ``<strategy> <objective> r=<rate> s=<seed>``."""
    cell_dir = Path(cell_dir)
    record = json.loads(_require_file(cell_dir / "record.json").read_text())
    last = record["stages"][-1]
    # the recorded path may be relative to where the grid ran: look beside the grid too
    candidates = [Path(last["checkpoint"]), cell_dir.parent.parent / "stages" / last["key"] / "model.pt",
                  cell_dir / Path(last["checkpoint"]).name]
    path = next((c for c in candidates if c.is_file()), None)
    if path is None:
        raise FileNotFoundError(f"{cell_dir}: checkpoint not found (tried {[str(c) for c in candidates]})")
    return path, f"{record['strategy']} {record['objective']} r={record['bias_rate']} s={record['seed']}"


def _require_file(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"not found: {path}")
    return path


def probe_checkpoint(checkpoint: str | os.PathLike, manifest: Manifest, device: str | torch.device = "cpu",
                     seed: int = 0, cache_dir: str | os.PathLike | None = None) -> dict:
    """:func:`shortcut_probe` of a saved checkpoint (its image size and normalisation from its
    metadata) or of a grid cell's directory (its final model), features cached on disk in
    ``cache_dir`` (default: ``embeddings/`` beside the checkpoint) keyed by the checkpoint's bytes
    and the manifest's digest."""
    from ffr.train.embeddings import cached_embed, embedding_key
    from ffr.train.loop import load_checkpoint

    label = None
    if Path(checkpoint).is_dir():
        checkpoint, label = cell_checkpoint(checkpoint)
    device = torch.device(device)
    model, meta = load_checkpoint(checkpoint, device)
    size, normalize = int(meta["image_size"]), meta.get("normalize", "imagenet")
    if list(meta["classes"]) != list(manifest.card.classes):
        raise ValueError(f"{checkpoint}: classes {meta['classes']} differ from the manifest's {manifest.card.classes}")
    data = TensorData.from_manifest(manifest, size)
    key = embedding_key(checkpoint, manifest.digest(), size, normalize)
    cache = Path(cache_dir) if cache_dir else Path(checkpoint).parent / "embeddings"
    feats, hit = cached_embed(model, data, device, key, cache, normalize)
    out = shortcut_probe(model, data, device, normalize, features=feats, seed=seed)
    return {"model": str(checkpoint), "label": label or f"{meta.get('stage', '')} {meta.get('objective', '')}".strip(),
            "features_cached": hit, **out}


def format_shortcut(results: list[dict]) -> str:
    """A Markdown table of shortcut-probe results, one row per model."""
    lines = ["| model | probe real-vs-synthetic acc (mean over groups) | minority acc real | minority acc synthetic "
             "| synthetic − real |", "|---|---|---|---|---|"]
    f = lambda v: "—" if v is None else f"{v:.3f}"
    for r in results:
        m = r["minority"]
        lines.append(f"| {r['label']} | "
                     f"{f(r['probe_acc_mean'])} | {f(m['model_acc_real'])} | {f(m['model_acc_synthetic'])} | "
                     f"{f(m['synthetic_minus_real'])} |")
    return "\n".join(lines)


def cells_from_results(results: str | os.PathLike, where: dict[str, list[str]] | None = None) -> list[Path]:
    """The directories of the selected cells of a grid's ``results.json`` whose fields match
    ``where`` (field → accepted values as strings, e.g. ``{"strategy": ["usb", "ffr"]}``)."""
    results = Path(results)
    records = json.loads(_require_file(results).read_text())
    out = []
    for r in records:
        if not r.get("selected", True) or any(str(r.get(k)) not in vs for k, vs in (where or {}).items()):
            continue
        cands = [results.parent / "cells" / r["cell"], results.parent / str(r.get("dataset")) / "cells" / r["cell"]]
        out.append(next((c for c in cands if c.is_dir()), cands[0]))
    if not out:
        raise ValueError(f"{results}: no selected cell matches {where}")
    return out


SHORTCUT_FIGURES = {"probe_acc": "probe real-vs-synthetic acc",
                    "probe_minority": "probe acc, minority groups",
                    "probe_majority": "probe acc, majority groups",
                    "minority_real": "minority acc real",
                    "minority_synthetic": "minority acc synthetic",
                    "minority_gap": "synthetic − real"}


def shortcut_stats(results: list[dict]) -> dict[str, dict]:
    """Per model label without its seed (``usb erm r=0.99``), in first-seen order: ``seeds`` and,
    for each figure of :data:`SHORTCUT_FIGURES`, ``(mean, std)`` over the seeds (None where no
    seed has the figure)."""
    from collections import defaultdict

    from ffr.results.tables import _mean, _std

    by: dict[str, list[dict]] = defaultdict(list)
    for r in results:
        by[r["label"].rsplit(" s=", 1)[0]].append(r)
    values = {"probe_acc": lambda r: r["probe_acc_mean"],
              "probe_minority": lambda r: r["minority"]["probe_acc_mean"],
              "probe_majority": lambda r: r["majority"]["probe_acc_mean"],
              "minority_real": lambda r: r["minority"]["model_acc_real"],
              "minority_synthetic": lambda r: r["minority"]["model_acc_synthetic"],
              "minority_gap": lambda r: r["minority"]["synthetic_minus_real"]}
    out = {}
    for label, rs in by.items():
        out[label] = {"seeds": len(rs)}
        for name, get in values.items():
            xs = [get(r) for r in rs]
            out[label][name] = None if _mean(xs) is None else (_mean(xs), _std(xs))
    return out


def summarize_shortcut(results: list[dict]) -> str:
    """Mean ± std over seeds of the shortcut figures, one row per model label without its seed."""
    from ffr.results.tables import _pm

    cols = ("probe_acc", "minority_real", "minority_synthetic", "minority_gap")
    lines = ["| model | seeds | " + " | ".join(SHORTCUT_FIGURES[c] for c in cols) + " |",
             "|---|---|" + "---|" * len(cols)]
    for label, st in shortcut_stats(results).items():
        lines.append(f"| {label} | {st['seeds']} | " + " | ".join(_pm(*(st[c] or (None, None))) for c in cols) + " |")
    return "\n".join(lines)
