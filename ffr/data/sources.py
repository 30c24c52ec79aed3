"""Where the real data comes from, and the one prepare step.

:func:`load_source` reads the real dataset — the built-in demo, or a folder read by any dataset
adapter (``csv``, ``folder``, ``waterbirds``, ``celeba``, ``celeba_hq``, ``utkface``,
``spuco_animals``) with its options; :func:`prepare` adds the bias-rate split and writes the
result. ``ffr prepare``, the DVC prepare stage, the Kubeflow prepare step and ``ffr compare`` all
go through these two functions.
"""

from __future__ import annotations

import inspect
import os
from pathlib import Path

from ffr.config import MIN_VAL_PER_GROUP
from ffr.data import public as _public  # noqa: F401  (registers the public datasets' adapters)
from ffr.data.adapters import ADAPTERS
from ffr.data.manifest import Manifest
from ffr.data.splits import bias_rate_split
from ffr.paths import is_remote


def load_dataset(adapter: str, source: str | os.PathLike, **options) -> Manifest:
    """Read dataset ``source`` with the adapter registered as ``adapter``; an option the adapter
    does not take is an error naming it."""
    fn = ADAPTERS.get(adapter)
    try:
        inspect.signature(fn).bind(source, **options)
    except TypeError as e:
        raise ValueError(f"adapter {adapter!r}: {e} (options given: {sorted(options)})") from None
    return fn(source, **options)


def load_source(dataset: str, adapter: str = "csv", options: dict | None = None, demo: dict | None = None,
                demo_dir: str | os.PathLike | None = None) -> Manifest:
    """The real dataset.

    Args:
        dataset: ``demo`` (a built-in benchmark, :mod:`ffr.data.builtin`) or the dataset's folder
            (an ``s3://`` URI for the ``csv`` adapter).
        adapter: The dataset adapter reading ``dataset`` (``csv``: ``manifest.csv`` + ``card.json``;
            ``folder``: ``<split>/<class>/<bias>/`` image folders; or a public dataset's).
        options: The adapter's options (e.g. ``{"label": "Blond_Hair"}`` for CelebA).
        demo: Which built-in benchmark (``name``: digits, faces, galaxies; default digits) and its
            spec options (``dataset == "demo"`` only).
        demo_dir: Where the benchmark is built.
    """
    if dataset == "demo":
        from ffr.data.builtin import make_builtin

        if demo_dir is None:
            raise ValueError("the demo dataset needs a folder to be built in")
        try:
            return make_builtin(Path(demo_dir), demo)
        except (TypeError, ValueError) as e:
            raise ValueError(f"data.demo: {e}") from None
    return load_dataset(adapter, dataset, **(options or {}))


def refuse_overwriting_source(out_dir: str | os.PathLike, source: str | os.PathLike | None) -> None:
    """Refuse to write a dataset made from ``source`` (a split, a prepared copy) into the folder of
    ``source`` itself: its manifest and card would be replaced by the derived ones, the images
    they described left unlisted, and a later run would silently derive from the derivation.

    Args:
        out_dir: Where the derived dataset would be written.
        source: The dataset it is made from: its folder or its manifest file (``s3://`` sources
            are never local folders and pass).
    """
    if source is None or is_remote(source) or is_remote(out_dir):
        return
    src = Path(source)
    if src.suffix == ".csv" or src.is_file():
        src = src.parent
    if Path(out_dir).resolve() == src.resolve():
        raise ValueError(f"--out {out_dir}: is the folder of the dataset it is made from ({src}); writing there "
                         "would replace that dataset with what is made from it — choose another folder")


def prepare(dataset: str, out_dir: str | os.PathLike, bias_rate: float, seed: int = 0,
            min_val_per_group: int = MIN_VAL_PER_GROUP, demo: dict | None = None,
            source_dir: str | os.PathLike | None = None, adapter: str = "csv",
            options: dict | None = None) -> Manifest:
    """Load the real dataset (:func:`load_source`; the demo is built under ``source_dir``, default
    ``out_dir/../source``) and write its bias-rate split to ``out_dir`` (manifest.csv, card.json,
    split_report.json). Returns the split manifest."""
    out_dir = Path(out_dir)
    source_dir = source_dir or out_dir.parent / "source"
    refuse_overwriting_source(out_dir, source_dir if dataset == "demo" else dataset)
    real = load_source(dataset, adapter, options, demo, source_dir)
    split, report = bias_rate_split(real, bias_rate, seed, min_val_per_group)
    split.save(out_dir)
    report.save(out_dir / "split_report.json")
    return split
