"""The decoded tensor cache: every image of a manifest decoded and resized once into a raw uint8
file on disk, then read by index in batches.

On disk, under ``cache_dir``, for cache key ``K`` (manifest digest + dataset root + resolution):

- ``K.u8``: raw uint8 pixels, shape (N, H, W, 3), rows in path order. One image is one
  contiguous record, so a batch read is N small copies, and the (N, 3, H, W) view of a batch
  is already channels-last in memory: no transpose before a channels-last model.
- ``K.json``: what the file holds (key, digest, resolution, N, byte size, sha256), written
  *last*. A cache without it, or whose file size disagrees with it, is incomplete (a build was
  killed) and is rebuilt, never read.

Builds go to a temporary file that is renamed into place, under an exclusive ``flock`` on
``K.lock``: concurrent processes build the cache once, the others wait and then read it; a
killed builder releases the lock with its process.

Reading goes through :class:`CachedImages`, which looks like a (n, 3, H, W) uint8 tensor to the
training loop (``images[idx]``) but reads only the requested rows from the file, so a dataset
larger than memory trains with bounded resident memory (the kernel's page cache holds what fits).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ffr.data.loading import TensorData, decode_into
from ffr.data.manifest import Manifest

FORMAT = "ffr-u8-nhwc-v1"   # bump when the layout or the decode changes: old caches are ignored
CHUNK_BYTES = 32 << 20      # builds and whole-set reads go this many bytes at a time


def cache_key(manifest: Manifest, image_size: int) -> str:
    """The name of ``manifest``'s cache at ``image_size`` px: changes with the manifest's digest,
    its root directory, the resolution and the image files' sizes and modification times (an
    image replaced in place gets a new cache)."""
    blob = json.dumps([FORMAT, manifest.digest(), str(manifest.root), int(image_size),
                       manifest.files_fingerprint()])
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _unique_paths(manifest: Manifest) -> list[str]:
    """Absolute image paths in the cache's row order (sorted, duplicates once)."""
    return sorted({str(p) for p in manifest.abs_paths()})


class ImageCache:
    """A built cache, opened read-only: ``rows(manifest)`` maps images to rows, ``read(rows)``
    returns them as a uint8 (B, 3, H, W) tensor, ``tensors(manifest)`` a :class:`TensorData`.

    Rows are read with ``pread`` into a fresh buffer rather than through a memory map: a mapped
    file's pages count in the process's resident memory, and the kernel maps neighbouring pages
    on every fault (fault-around, large folios), so a random-order epoch over a mapped cache
    would make most of the file resident. Read this way, resident memory holds only the batch;
    the kernel's page cache keeps what fits, outside the process.
    """

    def __init__(self, data_path: Path, meta: dict, paths: list[str]):
        self.path = Path(data_path)
        self.meta = meta
        self.image_size = int(meta["image_size"])
        self.n = int(meta["n"])
        self._row = {p: i for i, p in enumerate(paths)}
        self._fd = os.open(self.path, os.O_RDONLY)
        if hasattr(os, "posix_fadvise"):  # batches are random rows: no speculative read-ahead
            os.posix_fadvise(self._fd, 0, 0, os.POSIX_FADV_RANDOM)

    def __del__(self) -> None:
        fd = getattr(self, "_fd", None)
        if fd is not None:
            os.close(fd)

    def __len__(self) -> int:
        return self.n

    def __repr__(self) -> str:
        return f"ImageCache({self.n} images, {self.image_size}px, {self.path})"

    @property
    def record_bytes(self) -> int:
        return 3 * self.image_size * self.image_size

    def rows(self, manifest: Manifest) -> np.ndarray:
        """Cache rows of ``manifest``'s images, in the manifest's row order."""
        try:
            return np.fromiter((self._row[str(p)] for p in manifest.abs_paths()), dtype=np.int64,
                               count=len(manifest))
        except KeyError as e:
            raise KeyError(f"image {e.args[0]} is not in the cache {self.path} "
                           f"(built for another manifest)") from None

    def read(self, rows) -> torch.Tensor:
        """Images at cache ``rows`` as a uint8 (B, 3, H, W) tensor (channels-last strides)."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        s, rec = self.image_size, self.record_bytes
        out = np.empty((len(rows), s, s, 3), dtype=np.uint8)
        if len(rows) and (rows.min() < 0 or rows.max() >= self.n):
            raise IndexError(f"row out of range [0, {self.n}) of cache {self.path}")
        flat = memoryview(out).cast("B")
        # One read per run of consecutive rows: a slice is one call, a shuffled batch one per image.
        starts = np.flatnonzero(np.diff(rows, prepend=-2) != 1)
        ends = np.append(starts[1:], len(rows))
        for a, b in zip(starts.tolist(), ends.tolist()):
            _pread_into(self._fd, flat[a * rec:b * rec], int(rows[a]) * rec, self.path)
        return torch.from_numpy(out).permute(0, 3, 1, 2)

    def tensors(self, manifest: Manifest) -> TensorData:
        """The rows of ``manifest`` as :class:`TensorData` whose images are read from this cache."""
        return TensorData.from_arrays(manifest, CachedImages(self, self.rows(manifest)))

    def verify(self) -> bool:
        """Whether the file's sha256 matches the one recorded when it was built."""
        h = hashlib.sha256()
        with open(self.path, "rb") as f:
            while chunk := f.read(CHUNK_BYTES):
                h.update(chunk)
        return h.hexdigest() == self.meta["sha256"]


def _pread_into(fd: int, buf: memoryview, offset: int, path: Path) -> None:
    while len(buf):
        got = os.preadv(fd, [buf], offset)
        if got <= 0:
            raise OSError(f"{path}: unexpected end of file at byte {offset} (the cache was truncated)")
        buf, offset = buf[got:], offset + got


class CachedImages:
    """Rows of an :class:`ImageCache`, indexed like a uint8 (n, 3, H, W) tensor: ``x[i]``,
    ``x[a:b]`` and ``x[index_tensor]`` read just those images from the cache file."""

    dtype = torch.uint8

    def __init__(self, cache: ImageCache, rows: np.ndarray):
        self.cache = cache
        self.rows = np.asarray(rows, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> torch.Size:
        s = self.cache.image_size
        return torch.Size((len(self.rows), 3, s, s))

    @property
    def nbytes(self) -> int:
        return len(self.rows) * self.cache.record_bytes

    def __getitem__(self, idx) -> torch.Tensor:
        if isinstance(idx, (int, np.integer)):
            return self.cache.read(self.rows[[idx]])[0]
        if isinstance(idx, torch.Tensor):
            idx = idx.cpu().numpy()
        return self.cache.read(self.rows[idx])

    def subset(self, idx) -> "CachedImages":
        """A view of some of these rows (nothing is read)."""
        if isinstance(idx, torch.Tensor):
            idx = idx.cpu().numpy()
        return CachedImages(self.cache, self.rows[idx])

    def to(self, device: str | torch.device) -> torch.Tensor:
        """All rows as one tensor on ``device`` (read in chunks, so host memory stays bounded)."""
        out = torch.empty(self.shape, dtype=torch.uint8, device=device).contiguous(memory_format=torch.channels_last)
        step = max(1, CHUNK_BYTES // max(1, self.cache.record_bytes))
        for start in range(0, len(self.rows), step):
            out[start:start + step] = self.cache.read(self.rows[start:start + step])
        return out


def _read_meta(meta_path: Path, data_path: Path, key: str) -> dict | None:
    """The sidecar of a complete cache, or None when the cache is absent or incomplete."""
    try:
        meta = json.loads(meta_path.read_text())
        size = data_path.stat().st_size
    except (OSError, ValueError):
        return None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("key") != key:
        return None
    return meta if size == meta.get("bytes") else None


@contextmanager
def _locked(path: Path):
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # released when the file closes or the process dies
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def build(paths: list[str], image_size: int, data_path: Path, workers: int | None = None,
          progress: Callable[[int], None] | None = None) -> str:
    """Decode ``paths`` at ``image_size`` into ``data_path`` (through a temporary file renamed
    into place); returns the sha256 of the pixels. A bad image raises
    :class:`ffr.data.loading.ImageDecodeError` naming it; the temporary file is removed."""
    s, rec = image_size, 3 * image_size * image_size
    tmp = data_path.with_name(f"{data_path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    h = hashlib.sha256()
    step = max(1, min(1024, CHUNK_BYTES // rec))  # decode a few MiB at a time: memory stays bounded
    try:
        with open(tmp, "wb", buffering=0) as f:  # chunks are large: write them straight through
            for start in range(0, len(paths), step):
                chunk = np.empty((min(step, len(paths) - start), s, s, 3), dtype=np.uint8)
                decode_into(chunk, paths[start:start + step], s, workers)
                h.update(chunk)
                view = memoryview(chunk).cast("B")
                while view:  # a raw write may be partial
                    view = view[f.write(view):]
                if progress is not None:
                    progress(start + len(chunk))
            os.fsync(f.fileno())
        os.replace(tmp, data_path)
    finally:
        tmp.unlink(missing_ok=True)
    return h.hexdigest()


def open_cache(manifest: Manifest, image_size: int, cache_dir: str | os.PathLike, workers: int | None = None,
               verify: bool = False, progress: bool = False) -> ImageCache:
    """The cache of ``manifest`` at ``image_size`` px under ``cache_dir``, built first when it is
    missing or incomplete. ``verify`` also checks the cache file's sha256 and the image files'
    contents (reads them all: an image rewritten with its old size and time is caught too) and
    rebuilds on a mismatch. Safe to call from several processes at once."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = cache_key(manifest, image_size)
    data_path, meta_path = cache_dir / f"{key}.u8", cache_dir / f"{key}.json"
    paths = _unique_paths(manifest)
    content = manifest.files_fingerprint(content=True) if verify else None

    def sound(meta):
        return meta is not None and (not verify or (meta.get("content") == content
                                                    and ImageCache(data_path, meta, paths).verify()))

    meta = _read_meta(meta_path, data_path, key)
    if sound(meta):
        return ImageCache(data_path, meta, paths)
    with _locked(cache_dir / f"{key}.lock"):
        meta = _read_meta(meta_path, data_path, key)  # another process may have built it meanwhile
        if meta is not None and not sound(meta):
            meta = None
        if meta is None:
            meta_path.unlink(missing_ok=True)  # from here on the old file is never read
            for stale in cache_dir.glob(f"{key}.u8.*.tmp"):
                stale.unlink(missing_ok=True)  # left by a killed builder (we hold the lock)
            bar = None
            if progress:
                from tqdm import tqdm
                bar = tqdm(total=len(paths), desc=f"cache {image_size}px", unit="img", leave=False)
            sha = build(paths, image_size, data_path, workers,
                        (lambda k: bar.update(k - bar.n)) if bar is not None else None)
            if bar is not None:
                bar.close()
            meta = {"format": FORMAT, "key": key, "digest": manifest.digest(), "root": str(manifest.root),
                    "image_size": int(image_size), "n": len(paths), "bytes": len(paths) * 3 * image_size ** 2,
                    "sha256": sha, "content": content}
            tmp = meta_path.with_name(meta_path.name + f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(meta, indent=1) + "\n")
            os.replace(tmp, meta_path)  # last: marks the cache complete
    return ImageCache(data_path, meta, paths)
