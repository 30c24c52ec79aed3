"""Small helpers shared by test modules (importable by name: tests/ is on sys.path)."""

from __future__ import annotations

import numpy as np
from PIL import Image


def write_png(path, seed: int, size: int = 8) -> None:
    """A small random RGB PNG (distinct per seed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
