"""The second built-in offline benchmark: "faces", real photographs under a warm or cool colour cast.

Source: the 200 real grayscale 25×25 photographs of ``skimage/data/lfw_subset.npy``, shipped inside
the scikit-image wheel: the first 100 are faces from Labeled Faces in the Wild, the last 100
non-face patches cut from the backgrounds of the same photos. Classes: ``face``, ``nonface``. The
bias attribute ``lighting`` is a white-balance colour cast laid over the grayscale photo —
``warm`` (orange/yellow) or ``cool`` (blue), with a mild per-image variation of its strength — a
feature with nothing to do with the class, correlated with it later by the bias-rate split.

Each class's 100 photos are split into train/val/test by source photo, so no photo (nor any
variant of it) is in two splits. Within a split each photo is shown under one cast only (a
class's photos are dealt to the casts in turn), so a minority image is never the colour-swapped
twin of a majority one: a model that pairs the two could read off that the cast is irrelevant,
and the shortcut would be too weak to measure. Each split is then enlarged with label-preserving
variants of every photo (the photo itself, its mirror image, random crops); the groups of a class
have the same size (one photo's variants apart when a split holds an odd number of a class's
photos). Nothing is downloaded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np

from ffr.data.build import BuildSpec, mark_complete, open_build, package_file, write_atomic
from ffr.data.manifest import SPLITS, DatasetCard, Manifest, group_key
from ffr.rules import require

CLASSES = ("face", "nonface")  # lfw_subset.npy: images 0-99, then 100-199
N_PER_CLASS = 100
# Bias value → white-balance gains (R, G, B) at full strength. Both casts dim the photo about
# equally (luma ≈ 0.82), so the bias is a hue, not a brightness.
LIGHTING: dict[str, tuple[float, float, float]] = {
    "warm": (1.00, 0.80, 0.52),
    "cool": (0.64, 0.87, 1.00),
}
CAST_LIFT = 0.06  # blacks are lifted this much before the cast, so dark patches show it too
CAST_STRENGTH = (0.7, 1.0)  # per-image cast strength is drawn uniformly from this range
CROP_SCALE = (0.72, 0.92)  # crop variants keep this fraction of the photo's side

SPEC_FILE = "faces_spec.json"
_FORMAT = "faces-v2"  # bump when the rendering changes, so cached builds are rebuilt


@dataclass
class FacesSpec(BuildSpec):
    """What the faces benchmark contains.

    ``bias_values`` are lighting names (a subset of :data:`LIGHTING`); class i's majority
    lighting is bias value i (``face`` ↔ the first, ``nonface`` ↔ the second).
    ``split_fractions`` divides each class's 100 source photos into train/val/test;
    ``variants`` is the number of images made of each source photo (the photo, its mirror image,
    then random crops), all under the one bias value the photo is dealt (see :func:`photo_bias`).
    """

    bias_values: list[str] = field(default_factory=lambda: ["warm", "cool"])
    image_size: int = 32
    seed: int = 0
    split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
    variants: int = 10

    def __post_init__(self) -> None:
        self.bias_values = [str(b) for b in self.bias_values]
        self.split_fractions = tuple(float(f) for f in self.split_fractions)
        if len(self.bias_values) < 2 or len(set(self.bias_values)) != len(self.bias_values):
            raise ValueError(f"the faces benchmark needs at least 2 distinct bias values, got {self.bias_values}")
        unknown = [b for b in self.bias_values if b not in LIGHTING]
        if unknown:
            raise ValueError(f"unknown lighting(s) {unknown} for the faces benchmark; available: {sorted(LIGHTING)}")
        require("split_fractions", tuple(self.split_fractions))
        sizes = _split_sizes(self.split_fractions)
        if min(sizes) < 1:
            raise ValueError(f"split_fractions {self.split_fractions} leave a split without a source photo "
                             f"({dict(zip(SPLITS, sizes))} of {N_PER_CLASS} per class)")
        if int(self.variants) != self.variants or self.variants < 1:
            raise ValueError(f"variants must be a whole number of at least 1, got {self.variants}")
        self.variants = int(self.variants)
        require("image_size", self.image_size)
        require("seed", self.seed)

    def card(self) -> DatasetCard:
        """The dataset card of this benchmark."""
        return DatasetCard(
            name="faces",
            classes=list(CLASSES),
            bias_values=list(self.bias_values),
            majority_bias={c: self.bias_values[i % len(self.bias_values)] for i, c in enumerate(CLASSES)},
            bias_name="lighting",
            description=("Faces vs non-faces: the 200 real 25x25 grayscale photographs of scikit-image's "
                         "lfw_subset (100 faces from Labeled Faces in the Wild, 100 non-face patches cut "
                         "from the same photos), split by source photo, enlarged with flips and crops, "
                         "under a warm or cool white-balance colour cast (the bias)."),
        )


def load_lfw_subset() -> tuple[np.ndarray, np.ndarray]:
    """The 200 real photographs of scikit-image's ``lfw_subset.npy``: images (200, 25, 25)
    float32 in [0, 1], labels (200,) (0 = face for the first 100, 1 = nonface)."""
    images = np.load(package_file("skimage", "data", "lfw_subset.npy"))
    if images.shape != (2 * N_PER_CLASS, 25, 25):
        raise ValueError(f"lfw_subset.npy holds an array of shape {images.shape}, expected (200, 25, 25)")
    return images.astype(np.float32), np.repeat(np.arange(len(CLASSES)), N_PER_CLASS)


def apply_lighting(gray: np.ndarray, bias: str, strength: float = 1.0) -> np.ndarray:
    """``gray`` (H, W) in [0, 1] under lighting ``bias``: float32 (H, W, 3) in [0, 1].

    The photo's blacks are lifted by :data:`CAST_LIFT`, then each channel is scaled by the
    lighting's gains, moved toward 1 (no cast) as ``strength`` goes from 1 to 0.
    """
    if bias not in LIGHTING:
        raise ValueError(f"unknown lighting {bias!r}; available: {sorted(LIGHTING)}")
    gains = 1.0 - float(strength) * (1.0 - np.asarray(LIGHTING[bias], dtype=np.float32))
    lifted = CAST_LIFT + (1.0 - CAST_LIFT) * np.clip(np.asarray(gray, dtype=np.float32), 0, 1)
    return lifted[..., None] * gains


def cast_strength(rng: np.random.Generator) -> float:
    """A random cast strength, the mild per-image variation of the lighting."""
    return float(rng.uniform(*CAST_STRENGTH))


def to_uint8(pixels: np.ndarray) -> np.ndarray:
    """Float pixels in [0, 1] as uint8."""
    return np.clip(np.round(pixels * 255), 0, 255).astype(np.uint8)


def _split_sizes(fractions) -> tuple[int, int, int]:
    n_train = int(round(fractions[0] * N_PER_CLASS))
    n_val = int(round(fractions[1] * N_PER_CLASS))
    return n_train, n_val, N_PER_CLASS - n_train - n_val


def split_sources(spec: FacesSpec) -> dict[str, dict[str, list[int]]]:
    """The source photos (indices into ``lfw_subset.npy``) of each split and class, sorted.

    Source ``k`` of a split's class list is shown under :func:`photo_bias` ``(spec, k)`` only:
    image ``n`` of group (label, bias) shows the ``n // spec.variants``-th of the class's sources
    dealt that bias, variant ``n % spec.variants`` (variant 0 is the whole photo).
    """
    rng = np.random.default_rng(spec.seed)
    n_train, n_val, _ = _split_sizes(spec.split_fractions)
    out: dict[str, dict[str, list[int]]] = {s: {} for s in SPLITS}
    for c, label in enumerate(CLASSES):
        idx = c * N_PER_CLASS + rng.permutation(N_PER_CLASS)
        for s, part in zip(SPLITS, np.split(idx, [n_train, n_train + n_val])):
            out[s][label] = sorted(int(i) for i in part)
    return out


def photo_bias(spec: FacesSpec, k: int) -> str:
    """The one bias value under which the ``k``-th source photo of a split's class is shown: the
    class's photos are dealt to the bias values in turn, so the groups of a class hold the same
    number of photos (within one) and no photo appears under two casts."""
    return spec.bias_values[k % len(spec.bias_values)]


def _variant_rng(seed: int, source: int, variant: int, *more: int) -> np.random.Generator:
    """The random stream of one variant (and, with ``more``, of one lighting of it): independent
    of the split the photo fell in and of every other variant."""
    return np.random.default_rng([int(seed), int(source), int(variant), *map(int, more)])


def render_variant(photo: np.ndarray, variant: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """Variant ``variant`` of a grayscale photo, resized to ``size``: float32 (size, size) in [0, 1].

    Variant 0 is the whole photo, 1 its mirror image, and every later one a random square crop
    (:data:`CROP_SCALE` of the side, anywhere in the photo), mirrored half the time.
    """
    from PIL import Image

    h, w = photo.shape
    box: tuple[float, float, float, float] = (0.0, 0.0, float(w), float(h))
    flip = variant == 1
    if variant >= 2:
        side = rng.uniform(*CROP_SCALE) * min(h, w)
        x0, y0 = rng.uniform(0, w - side), rng.uniform(0, h - side)
        box = (x0, y0, x0 + side, y0 + side)
        flip = bool(rng.random() < 0.5)
    im = Image.fromarray(np.ascontiguousarray(photo, dtype=np.float32))  # mode "F"
    out = np.asarray(im.resize((size, size), Image.BICUBIC, box=box), dtype=np.float32)
    return np.clip(out[:, ::-1] if flip else out, 0, 1)


def make_faces(out_dir: str | os.PathLike, spec: FacesSpec | None = None) -> Manifest:
    """Build the faces benchmark under ``out_dir`` and return its manifest.

    Writes ``images/<split>/<group>/<n>.png``, ``manifest.csv`` + ``card.json`` and, last,
    ``faces_spec.json``; a directory that already holds a complete build of the same spec is
    reused as is, one of another spec is replaced. The output depends only on the spec: the same
    seed gives byte-identical files. Each photo is shown under one bias value, dealt in turn, so
    the groups of a class have the same size, or differ by one photo's ``variants`` images when a
    split holds a number of the class's photos that the bias values do not divide (see
    :func:`split_sources` for which photo each image shows).
    """
    from PIL import Image

    spec = spec or FacesSpec()
    out_dir, wanted, built = open_build(out_dir, SPEC_FILE, _FORMAT, spec)
    if built is not None:
        return built

    card = spec.card()
    photos, _ = load_lfw_subset()
    lighting_ids = {b: list(LIGHTING).index(b) for b in spec.bias_values}
    rows = []
    for split, by_class in split_sources(spec).items():
        for label, sources in by_class.items():
            for k, src in enumerate(sources):
                bias = photo_bias(spec, k)
                first = (k // len(spec.bias_values)) * spec.variants
                for v in range(spec.variants):
                    gray = render_variant(photos[src], v, spec.image_size, _variant_rng(spec.seed, src, v))
                    strength = cast_strength(_variant_rng(spec.seed, src, v, 1 + lighting_ids[bias]))
                    pixels = to_uint8(apply_lighting(gray, bias, strength))
                    rel = f"images/{split}/{group_key(label, bias)}/{first + v:05d}.png"
                    write_atomic(out_dir / rel, lambda f: Image.fromarray(pixels).save(f, format="PNG"))
                    rows.append({"path": rel, "label": label, "bias": bias,
                                 "split": split, "source": "real"})
    manifest = Manifest.from_records(rows, card, out_dir)
    manifest.save(out_dir)
    mark_complete(out_dir, SPEC_FILE, wanted)
    return manifest
