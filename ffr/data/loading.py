"""Images into tensors: every image decoded and resized once into a uint8 array, then served by
index in batches; normalisation and augmentation run on whole batches on the training device."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from ffr.data.manifest import DatasetCard, Manifest

NORMALIZATION = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "half": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}


def to_rgb(im):
    """PIL image ``im`` as 8-bit RGB, as a viewer shows it: turned upright by its EXIF orientation,
    and a 16-bit or 32-bit grey image scaled to 8 bits (PIL's own ``convert("RGB")`` clips it at
    255: a full-range 16-bit PNG would read as a white image)."""
    from PIL import Image, ImageOps

    im = ImageOps.exif_transpose(im) or im
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(im).astype(np.int64)
        if im.mode == "I" and arr.max(initial=0) > 65535:  # 32-bit values: scale by the range used
            arr = arr * 255 // max(int(arr.max()), 1)
        else:
            arr = arr >> 8
        im = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L")
    elif im.mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        scale = 255.0 if arr.max(initial=0.0) <= 1.0 else 1.0  # [0, 1] floats, or values already in [0, 255]
        im = Image.fromarray(np.clip(arr * scale, 0, 255).astype(np.uint8), "L")
    return im.convert("RGB")


def decode_image(path, image_size: int) -> np.ndarray:
    """One image as an (H, W, 3) uint8 array at ``image_size`` × ``image_size`` (bilinear), read by
    :func:`to_rgb` (upright, 16-bit images scaled, not clipped)."""
    from PIL import Image

    with Image.open(path) as im:
        im = to_rgb(im)
        if im.size != (image_size, image_size):
            im = im.resize((image_size, image_size), Image.BILINEAR)
        return np.asarray(im, dtype=np.uint8)


class ImageDecodeError(ValueError):
    """An image file could not be decoded (the message names the file)."""


def default_workers() -> int:
    """Decoding threads: PIL releases the GIL while it decodes and resizes, so threads scale
    with the CPUs this process may use (at most 8)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(8, cpus))


def decode_into(out: np.ndarray, paths: Sequence, image_size: int, workers: int | None = None) -> None:
    """Decode ``paths[i]`` into ``out[i]`` ((N, H, W, 3) uint8) with a pool of threads."""
    def one(i: int) -> None:
        try:
            out[i] = decode_image(paths[i], image_size)
        except Exception as e:  # any PIL/OS failure: name the image
            raise ImageDecodeError(f"{paths[i]}: cannot decode image ({type(e).__name__}: {e})") from e

    if len(paths) < 16 or workers == 1:
        for i in range(len(paths)):
            one(i)
        return
    with ThreadPoolExecutor(workers or default_workers()) as pool:
        list(pool.map(one, range(len(paths))))


def load_images(manifest: Manifest, image_size: int) -> torch.Tensor:
    """All images of ``manifest`` as a (N, 3, H, W) uint8 tensor in memory, in row order
    (channels-last strides). For large sets use :func:`ffr.data.cache.open_cache`."""
    out = np.empty((len(manifest), image_size, image_size, 3), dtype=np.uint8)
    decode_into(out, manifest.abs_paths(), image_size)
    return torch.from_numpy(out).permute(0, 3, 1, 2)


@dataclass
class TensorData:
    """A decoded split: uint8 images and per-row label, bias, group and source indices.

    ``images`` is a (N, 3, H, W) uint8 tensor, or a :class:`ffr.data.cache.CachedImages` view of
    the memory-mapped cache that is indexed the same way (``images[idx]``, ``images[a:b]``) and
    reads only the rows asked for.
    """

    images: torch.Tensor      # (N, 3, H, W) uint8, or CachedImages
    labels: torch.Tensor      # (N,) int64 class index
    biases: torch.Tensor      # (N,) int64 bias-value index
    sources: torch.Tensor     # (N,) int64: 0 real, 1 synthetic
    card: DatasetCard

    @property
    def groups(self) -> torch.Tensor:
        """(label, bias) group index: label * n_bias + bias."""
        return self.labels * len(self.card.bias_values) + self.biases

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @classmethod
    def from_arrays(cls, manifest: Manifest, images) -> "TensorData":
        """``images`` (one per row of ``manifest``) with the manifest's labels, biases, sources."""
        return cls(
            images=images,
            labels=torch.tensor(manifest.labels()),
            biases=torch.tensor(manifest.biases()),
            sources=torch.tensor(manifest.is_synthetic().astype(np.int64)),
            card=manifest.card,
        )

    @classmethod
    def from_manifest(cls, manifest: Manifest, image_size: int) -> "TensorData":
        """Decode ``manifest``'s images into memory (a large set: :func:`ffr.data.cache.open_cache`,
        built once on disk and reused while the manifest and resolution stay the same)."""
        return cls.from_arrays(manifest, load_images(manifest, image_size))

    def subset(self, idx) -> "TensorData":
        """Rows ``idx`` (an index tensor or array); a cache-backed set stays cache-backed."""
        idx = torch.as_tensor(idx, dtype=torch.long)
        images = self.images.subset(idx) if hasattr(self.images, "subset") else self.images[idx]
        return TensorData(images, self.labels[idx], self.biases[idx], self.sources[idx], self.card)

    def resident(self, device: torch.device, fraction: float = 0.25) -> "TensorData":
        """This set with its images on an accelerator ``device`` when they fit in ``fraction`` of
        its free memory, so batches are gathered there; unchanged otherwise (on the CPU batches
        are read from memory or the memory map as they come)."""
        device = torch.device(device)
        if device.type != "cuda" or (isinstance(self.images, torch.Tensor) and self.images.device == device):
            return self
        nbytes = len(self) * int(np.prod(self.images.shape[1:]))
        if nbytes > fraction * torch.cuda.mem_get_info(device)[0]:
            return self
        images = self.images.to(device)
        return TensorData(images, self.labels, self.biases, self.sources, self.card)


class BatchTransform:
    """uint8 batch → normalised float batch, with optional flip + padded random crop, applied to
    the whole batch on its device."""

    def __init__(self, normalize: str = "imagenet", augment: bool = False, crop_padding: int = 4):
        if normalize not in NORMALIZATION:
            raise ValueError(f"unknown normalize {normalize!r}; known: {sorted(NORMALIZATION)}")
        self.mean, self.std = NORMALIZATION[normalize]
        self.augment = augment
        self.crop_padding = crop_padding
        self._constants: dict = {}

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None, train: bool = False) -> torch.Tensor:
        scale, offset = self._affine(x.device)
        if train and self.augment:
            x = _flip_crop(x.float(), self.crop_padding, generator)
            return x.mul_(scale).add_(offset)
        return torch.addcmul(offset, x, scale)  # (x / 255 - mean) / std: uint8 in, one pass

    def _affine(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        if device not in self._constants:  # built once per device: no host-to-device copy per batch
            mean = torch.tensor(self.mean, dtype=torch.float32).view(1, 3, 1, 1)
            std = torch.tensor(self.std, dtype=torch.float32).view(1, 3, 1, 1)
            self._constants[device] = ((1.0 / (255.0 * std)).to(device), (-mean / std).to(device))
        return self._constants[device]


def _flip_crop(x: torch.Tensor, pad: int, generator: torch.Generator | None) -> torch.Tensor:
    n, _, h, w = x.shape
    flip = torch.rand(n, generator=generator) < 0.5
    x = torch.where(flip.to(x.device).view(n, 1, 1, 1), x.flip(3), x)
    if pad <= 0:
        return x
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad), mode="reflect")
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator).to(x.device)
    rows = (dy.view(n, 1) + torch.arange(h, device=x.device).view(1, h))  # (n, h)
    cols = (dx.view(n, 1) + torch.arange(w, device=x.device).view(1, w))  # (n, w)
    idx_r = rows.view(n, 1, h, 1).expand(n, 3, h, w + 2 * pad)
    padded = padded.gather(2, idx_r)
    idx_c = cols.view(n, 1, 1, w).expand(n, 3, h, w)
    return padded.gather(3, idx_c)
