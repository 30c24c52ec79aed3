"""Images into tensors: every image decoded and resized once into a uint8 array, then served by
index in batches; normalisation and augmentation run on whole batches on the training device."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ffr.data.manifest import DatasetCard, Manifest

NORMALIZATION = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "half": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}


def decode_image(path, image_size: int) -> np.ndarray:
    """One image as an (H, W, 3) uint8 array at ``image_size`` × ``image_size`` (bilinear)."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        if im.size != (image_size, image_size):
            im = im.resize((image_size, image_size), Image.BILINEAR)
        return np.asarray(im, dtype=np.uint8)


def load_images(manifest: Manifest, image_size: int) -> torch.Tensor:
    """All images of ``manifest`` as a (N, 3, H, W) uint8 tensor, in row order."""
    out = np.empty((len(manifest), image_size, image_size, 3), dtype=np.uint8)
    for i, p in enumerate(manifest.abs_paths()):
        out[i] = decode_image(p, image_size)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


@dataclass
class TensorData:
    """A decoded split: uint8 images and per-row label, bias, group and source indices."""

    images: torch.Tensor      # (N, 3, H, W) uint8
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
    def from_manifest(cls, manifest: Manifest, image_size: int) -> "TensorData":
        return cls(
            images=load_images(manifest, image_size),
            labels=torch.from_numpy(manifest.labels()),
            biases=torch.from_numpy(manifest.biases()),
            sources=torch.from_numpy(manifest.is_synthetic().astype(np.int64)),
            card=manifest.card,
        )


class BatchTransform:
    """uint8 batch → normalised float batch, with optional flip + padded random crop, applied to
    the whole batch on its device."""

    def __init__(self, normalize: str = "imagenet", augment: bool = False, crop_padding: int = 4):
        if normalize not in NORMALIZATION:
            raise ValueError(f"unknown normalize {normalize!r}; known: {sorted(NORMALIZATION)}")
        self.mean, self.std = NORMALIZATION[normalize]
        self.augment = augment
        self.crop_padding = crop_padding

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None, train: bool = False) -> torch.Tensor:
        x = x.float().div_(255.0)
        if train and self.augment:
            x = _flip_crop(x, self.crop_padding, generator)
        mean = torch.tensor(self.mean, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device).view(1, 3, 1, 1)
        return (x - mean) / std


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
