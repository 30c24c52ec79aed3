"""Short content fingerprints of model folders: what names a generator or a filter model in the
records of the images it made, so a resumed run can tell another model's images from its own."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def fingerprint_dir(path: str | os.PathLike, edge_bytes: int = 1 << 20) -> str:
    """A short, fast content fingerprint of a model directory: every small file in full, and the
    size plus first and last ``edge_bytes`` of large ones (hashing gigabytes of weights per run
    would cost more than it tells)."""
    root = Path(path)
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")):
        size = f.stat().st_size
        h.update(f"{f.relative_to(root).as_posix()}|{size}|".encode())
        with f.open("rb") as fh:
            if size <= 2 * edge_bytes:
                h.update(fh.read())
            else:
                h.update(fh.read(edge_bytes))
                fh.seek(size - edge_bytes)
                h.update(fh.read(edge_bytes))
    return h.hexdigest()[:12]
