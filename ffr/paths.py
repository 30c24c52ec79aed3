"""Paths or URIs: the library's load points accept ``s3://`` URIs wherever they take a path.

A URI is resolved to a local copy (downloaded once into a cache) by :mod:`ffr.integrations.s3`,
imported only when a URI is actually met, so the core keeps no boto3 dependency.
"""

from __future__ import annotations

import os
from pathlib import Path


def is_remote(path) -> bool:
    """True for an ``s3://`` URI."""
    return isinstance(path, str) and path.startswith("s3://")


def inside(root: str | os.PathLike, rel: str | os.PathLike) -> Path:
    """``root / rel``, checked to resolve inside ``root``: every file ffr writes under an output
    folder goes through here, so no name (a class, a bias value, a key) can place it elsewhere."""
    base = Path(root).resolve()
    full = (base / rel).resolve()
    if full != base and base not in full.parents:
        raise ValueError(f"{rel!s}: resolves to {full}, outside the output folder {base}; refusing to write there")
    return base / rel


def local_path(path: str | os.PathLike) -> Path:
    """``path`` itself, or the local copy of the object or prefix an ``s3://`` URI names."""
    if not is_remote(path):
        return Path(path)
    from ffr.integrations.s3 import resolve_path

    return resolve_path(path)


def local_dataset(path: str | os.PathLike) -> Path:
    """A dataset directory (or manifest.csv), or the local copy of one at an ``s3://`` URI: its
    manifest, card and exactly the images its rows name."""
    if not is_remote(path):
        return Path(path)
    from ffr.integrations.s3 import fetch_dataset

    return fetch_dataset(path)
