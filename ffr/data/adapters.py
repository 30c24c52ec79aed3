"""Dataset adapters: each reads a dataset as it is distributed and produces a manifest.

``csv``: a manifest you bring (CSV with the manifest columns + a card JSON).
``folder``: ``root/<split>/<class>/<bias>/*.png|jpg`` — classes and bias values are the folder
names; the card is written from them (a ``majority_bias`` mapping may be given).
The public datasets (``waterbirds``, ``celeba``, ``celeba_hq``, ``utkface``, ``spuco_animals``)
live in :mod:`ffr.data.public`. :func:`ffr.data.sources.load_dataset` reads any of them.
"""

from __future__ import annotations

import os
from pathlib import Path

from ffr.data.manifest import (CARD_FILE, IMAGE_SUFFIXES, SPLITS, DatasetCard, Manifest,
                               ManifestError)
from ffr.plugins import Registry

ADAPTERS: Registry = Registry("dataset adapter")


@ADAPTERS.register("csv")
def csv_adapter(source, card: str | os.PathLike | None = None, check_files: bool = True) -> Manifest:
    """A manifest CSV you bring (or a directory holding ``manifest.csv``), validated in full."""
    return Manifest.load(source, card=card, check_files=check_files)


def _warn(message: str) -> None:
    import sys

    print(f"ffr: warning: {message}", file=sys.stderr)


@ADAPTERS.register("folder")
def folder_adapter(source, name: str | None = None, majority_bias: dict | None = None,
                   bias_name: str = "bias", check_files: bool = True) -> Manifest:
    """Images laid out as ``root/<split>/<class>/<bias>/<file>``.

    Every split folder must be one of train/val/test; classes and bias values are the union of
    the folder names, sorted. Files with other suffixes are ignored; an empty layout is an error.
    """
    root = Path(source)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {root}")
    problems, rows, skipped = [], [], []
    for split_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        if split_dir.name not in SPLITS:
            problems.append(f"folder {split_dir}: split folder name must be one of {list(SPLITS)}")
            continue
        skipped += [f for f in split_dir.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES]
        for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            skipped += [f for f in class_dir.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES]
            bias_dirs = sorted(p for p in class_dir.iterdir() if p.is_dir())
            if not bias_dirs:
                problems.append(f"folder {class_dir}: expected one sub-folder per bias value")
            for bias_dir in bias_dirs:
                for f in sorted(bias_dir.iterdir()):
                    if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
                        rows.append({"path": f.relative_to(root).as_posix(), "label": class_dir.name,
                                     "bias": bias_dir.name, "split": split_dir.name, "source": "real"})
    if problems:
        raise ManifestError(str(root), problems)
    if not rows:
        raise ManifestError(str(root), ["no images found under <split>/<class>/<bias>/ (png, jpg, jpeg, bmp, webp)"])
    classes = sorted({r["label"] for r in rows})
    biases = sorted({r["bias"] for r in rows})
    card_path = root / CARD_FILE
    if skipped:
        _warn(f"{root}: {len(skipped)} image(s) outside <split>/<class>/<bias>/ are not part of the dataset, e.g. "
              f"{sorted(skipped)[0].relative_to(root)} (one folder level too high?)")
    if card_path.is_file():
        card = DatasetCard.load(card_path)
    else:
        card = DatasetCard(name=name or root.name, classes=classes, bias_values=biases,
                           majority_bias=majority_bias or {}, bias_name=bias_name)
        if not majority_bias:
            pairs = ", ".join(f"{c} → {b}" for c, b in card.majority_bias.items())
            _warn(f"{root}: no majority_bias given: assumed {pairs} (classes and bias values paired in sorted "
                  "order); pass the adapter option majority_bias={class: bias, ...} if that is not the correlation")
    manifest = Manifest.from_records(rows, card, root)
    from ffr.data.manifest import validate

    validate(manifest, check_files=check_files, source=str(root))
    return manifest
