"""The synthesis-backend interface, per-image seeds, and the generation loop.

Every synthetic image's seed derives from (base seed, group, index) alone, so the same request
always yields the same image, whatever order, batch or shard produced it.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Protocol

from ffr.data.manifest import DatasetCard, Manifest, group_key
from ffr.registry import Registry

SYNTHESIS_BACKENDS: Registry = Registry("synthesis backend")


@dataclass(frozen=True)
class ImageRequest:
    """One image to render: its group, its index within the group, and its derived seed."""

    label: str
    bias: str
    index: int
    seed: int
    prompt: str | None = None

    @property
    def group(self) -> str:
        return group_key(self.label, self.bias)


class SynthesisBackend(Protocol):
    """What a backend provides. ``generator`` names it in manifest rows (e.g.
    ``procedural-v1`` or a model id with revision)."""

    generator: str

    def prompt_for(self, request: ImageRequest) -> str | None:  # pragma: no cover - protocol
        ...

    def generate(self, requests: list[ImageRequest]):  # -> list[PIL.Image.Image]
        ...


def create_backend(name: str, card: DatasetCard, **options) -> SynthesisBackend:
    """Instantiate the backend registered as ``name`` for the groups of ``card``."""
    return SYNTHESIS_BACKENDS.get(name)(card=card, **options)


def image_seed(base_seed: int, label: str, bias: str, index: int) -> int:
    """The seed of image ``index`` of group (label, bias): a 63-bit hash of the four values."""
    key = f"{int(base_seed)}|{label}|{bias}|{int(index)}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") & ((1 << 63) - 1)


def image_relpath(label: str, bias: str, index: int) -> str:
    """Where image ``index`` of a group lives, relative to the synthetic dataset root."""
    return f"{group_key(label, bias)}/{index:06d}.png"


def plan_requests(backend: SynthesisBackend, counts: dict[tuple[str, str], int], base_seed: int = 0,
                  shard: int = 0, num_shards: int = 1) -> list[ImageRequest]:
    """The requests of shard ``shard`` of ``num_shards``: image ``index`` of a group belongs to
    shard ``index % num_shards``. Seeds and prompts depend on (base seed, group, index) only, so
    the union of all shards is the same set of images whatever ``num_shards`` is."""
    if not 0 <= shard < num_shards:
        raise ValueError(f"shard must be in [0, {num_shards}), got {shard}")
    requests: list[ImageRequest] = []
    for (label, bias), n in counts.items():
        for i in range(shard, int(n), num_shards):
            req = ImageRequest(label, bias, i, image_seed(base_seed, label, bias, i))
            requests.append(ImageRequest(label, bias, i, req.seed, backend.prompt_for(req)))
    return requests


def synthesize(backend: SynthesisBackend, card: DatasetCard, counts: dict[tuple[str, str], int],
               out_dir: str | os.PathLike, base_seed: int = 0, batch_size: int = 64,
               split: str = "train", progress: bool = False, shard: int = 0,
               num_shards: int = 1) -> Manifest:
    """Render ``counts[(label, bias)]`` images per group (this shard's part of them) into
    ``out_dir`` and return their manifest.

    Images already on disk at their deterministic path are kept, not re-rendered, so an
    interrupted run continues where it stopped. Files are written atomically (temp + rename).
    """
    out_dir = Path(out_dir)
    requests = plan_requests(backend, counts, base_seed, shard, num_shards)
    todo = [r for r in requests if not (out_dir / image_relpath(r.label, r.bias, r.index)).is_file()]
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(todo), desc=f"synthesize ({backend.generator})", unit="img")
    for start in range(0, len(todo), batch_size):
        batch = todo[start:start + batch_size]
        for req, img in zip(batch, backend.generate(batch)):
            dest = out_dir / image_relpath(req.label, req.bias, req.index)
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(dest.name + ".tmp")
            img.save(tmp, format="PNG")
            os.replace(tmp, dest)
        if bar is not None:
            bar.update(len(batch))
    if bar is not None:
        bar.close()
    return Manifest.from_records(_rows(requests, backend.generator, split), card, out_dir)


def _rows(requests: Iterable[ImageRequest], generator: str, split: str) -> list[dict]:
    return [
        {"path": image_relpath(r.label, r.bias, r.index), "label": r.label, "bias": r.bias,
         "split": split, "source": "synthetic", "prompt": r.prompt, "seed": r.seed,
         "generator": generator}
        for r in requests
    ]
