"""Penultimate features of a trained model, computed once.

DFR and the shortcut probe fit many linear models on the same features; they are computed in one
pass under inference mode and, for a model saved as a checkpoint, kept on disk in a cache keyed by
the checkpoint's bytes, the manifest's digest, the resolution and the input normalisation, so a
second probe of the same model and data reads them back instead of recomputing them.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch

from ffr.data.loading import BatchTransform, TensorData
from ffr.paths import file_digest


@torch.inference_mode()
def embed(model, data: TensorData, device: torch.device, normalize: str = "imagenet",
          batch_size: int = 512) -> np.ndarray:
    """``model.embed`` of every row of ``data`` as a float32 (N, D) array, in row order."""
    model.eval()
    model.to(device)
    tf = BatchTransform(normalize)
    out = [model.embed(tf(data.images[s:s + batch_size].to(device))).float().cpu()
           for s in range(0, len(data), batch_size)]
    if not out:
        return np.zeros((0, model.feature_dim), dtype=np.float32)
    return torch.cat(out).numpy()


def embedding_key(checkpoint: str | os.PathLike, manifest_digest: str, image_size: int, normalize: str) -> str:
    """The cache key of the features of checkpoint ``checkpoint`` on a manifest."""
    blob = f"{file_digest(checkpoint)}|{manifest_digest}|{int(image_size)}|{normalize}"
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def cached_embed(model, data: TensorData, device: torch.device, key: str, cache_dir: str | os.PathLike,
                 normalize: str = "imagenet", batch_size: int = 512) -> tuple[np.ndarray, bool]:
    """:func:`embed`, read from ``cache_dir/<key>.npy`` when present (written atomically
    otherwise). Returns the features and whether they came from the cache."""
    path = Path(cache_dir) / f"{key}.npy"
    if path.is_file():
        feats = np.load(path)
        if feats.shape[0] == len(data):
            return feats, True
    feats = embed(model, data, device, normalize, batch_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npy")
    np.save(tmp, feats)
    os.replace(tmp, path)
    return feats, False
