"""The galaxies benchmark's synthetic generator: analytic sources rendered on an imitation sky.

Where the real images are cutouts of one telescope photograph, these are drawn from formulas:
``compact`` sources are point-spread functions (Moffat profiles, the bright ones with four
diffraction spikes), ``extended`` ones Sérsic-profile ellipses of random index, effective radius,
axis ratio and angle (disks, some with logarithmic spiral arms, or ellipticals), on a flat sky with
Gaussian noise and a few faint background specks. The light goes through an asinh stretch, as a
press image's does, and then through the same false-colour band palettes as the real cutouts
(:func:`ffr.data.galaxies.band_colour`), so a band means the same colours in both. Images are drawn
at twice their size and averaged down; each depends only on its request's seed.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from ffr.data.galaxies import BANDS, CLASSES, band_colour
from ffr.data.manifest import DatasetCard
from ffr.synthesis.generation import ImageRequest
from ffr.rules import require

# Sizes are in pixels of a 32 px image and scale with the image size, so a source fills the same
# share of the frame as a real cutout does (compact: a small dot; extended: about two thirds).
_REFERENCE_SIZE = 32
# Kinds of source per class, with the probability of each: the first draw of an image picks one.
KINDS: dict[str, tuple[tuple[str, float], ...]] = {
    "compact": (("point source", 0.85), ("bright star with diffraction spikes", 0.15)),
    "extended": (("spiral galaxy", 0.35), ("disk galaxy", 0.3), ("elliptical galaxy", 0.35)),
}


def _kind(label: str, rng: np.random.Generator) -> str:
    """The kind of source of an image of class ``label`` (:data:`KINDS`), from one draw of ``rng``."""
    u, edge = rng.random(), 0.0
    for kind, p in KINDS[label]:
        edge += p
        if u < edge:
            return kind
    return KINDS[label][-1][0]


def _sersic_b(n: float) -> float:
    """b_n of the Sérsic profile (half the light inside the effective radius), Ciotti & Bertin's expansion."""
    return 2 * n - 1 / 3 + 4 / (405 * n) + 46 / (25515 * n * n)


def _frame(s: int, cy: float, cx: float, angle: float, axis_ratio: float):
    """Elliptical radius and polar angle of every pixel of an s×s grid about (cy, cx), in the source's frame."""
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) + 0.5
    dy, dx = yy - cy, xx - cx
    c, si = math.cos(angle), math.sin(angle)
    major, minor = dx * c + dy * si, (-dx * si + dy * c) / axis_ratio
    return np.hypot(major, minor), np.arctan2(minor, major)


def _point_source(rng: np.random.Generator, s: int, unit: float, spikes: bool) -> np.ndarray:
    """A Moffat point-spread function (slightly elliptical), with diffraction spikes when asked: linear flux."""
    cy, cx = s / 2 + rng.uniform(-1, 1, size=2) * unit
    r, _ = _frame(s, cy, cx, rng.uniform(0, math.pi), rng.uniform(0.85, 1.0))
    beta = rng.uniform(2.5, 4.5)
    fwhm = rng.uniform(1.4, 2.6) * unit
    alpha = fwhm / (2 * math.sqrt(2 ** (1 / beta) - 1))
    amplitude = rng.uniform(2.0, 8.0) if spikes else rng.uniform(0.15, 2.0)
    flux = amplitude * (1 + (r / alpha) ** 2) ** -beta
    if spikes:
        yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) + 0.5
        base = rng.uniform(0, math.pi / 2)
        length, width = rng.uniform(2.5, 6) * unit, rng.uniform(0.25, 0.45) * unit
        for k in range(4):  # four spikes, 90° apart: the secondary mirror's supports
            a = base + k * math.pi / 2
            along = (xx - cx) * math.cos(a) + (yy - cy) * math.sin(a)
            across = -(xx - cx) * math.sin(a) + (yy - cy) * math.cos(a)
            flux += (0.08 * amplitude * (along > 0) * np.exp(-along / length)
                     * np.exp(-0.5 * (across / width) ** 2))
    return flux


def _galaxy(rng: np.random.Generator, s: int, unit: float, kind: str) -> np.ndarray:
    """A Sérsic ellipse (a disk, a spiral or an elliptical; disks and spirals with a small bulge): linear flux."""
    cy, cx = s / 2 + rng.uniform(-1, 1, size=2) * unit
    angle = rng.uniform(0, math.pi)
    elliptical = kind == "elliptical galaxy"
    axis_ratio = rng.uniform(0.5, 1.0) if elliptical else rng.uniform(0.2, 1.0)
    n = rng.uniform(2.0, 4.5) if elliptical else rng.uniform(0.5, 1.5)
    radius = rng.uniform(2.0, 4.5) * unit
    r, theta = _frame(s, cy, cx, angle, axis_ratio)
    flux = rng.uniform(0.08, 0.25) * np.exp(-_sersic_b(n) * ((r / radius) ** (1 / n) - 1))
    if kind == "spiral galaxy":
        arms = int(rng.integers(2, 4))
        pitch = math.radians(rng.uniform(12, 30))
        phase = rng.uniform(0, 2 * math.pi)
        spiral = np.cos(arms * (theta - np.log(np.maximum(r, 0.5 * unit) / radius) / math.tan(pitch)) - phase)
        flux = flux * (1 + rng.uniform(0.5, 0.9) * spiral)
    if not elliptical:  # a bulge: a small, rounder, concentrated core
        rb, _ = _frame(s, cy, cx, angle, min(1.0, axis_ratio + 0.3))
        core = 0.25 * radius
        flux = flux + rng.uniform(0.1, 0.8) * np.exp(-_sersic_b(2) * (rb / core) ** 0.5)
    return flux


def _specks(rng: np.random.Generator, s: int, unit: float) -> np.ndarray:
    """A few faint, small background sources anywhere in the frame: linear flux."""
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) + 0.5
    flux = np.zeros((s, s), np.float32)
    for _ in range(int(rng.integers(0, 6))):
        y, x = rng.uniform(0, s, size=2)
        sigma = rng.uniform(0.5, 1.2) * unit
        flux += rng.uniform(0.03, 0.25) * np.exp(-0.5 * ((yy - y) ** 2 + (xx - x) ** 2) / sigma ** 2)
    return flux


def _stretch(flux: np.ndarray) -> np.ndarray:
    """An asinh display stretch (faint light lifted, bright cores saturating towards 1)."""
    softening = 0.08
    return np.arcsinh(flux / softening) / math.asinh(1 / softening)


class GalaxiesBackend:
    """Analytic point sources and Sérsic galaxies in every band, for the groups of the galaxies card.

    ``image_size`` is the output size (images are drawn at twice that size, then averaged down,
    to antialias them).
    """

    generator = "procedural-galaxies-v1"
    batch_invariant = True  # each image is drawn on its own: batching cannot change it

    def __init__(self, card: DatasetCard, image_size: int = 32, **opts):
        if opts:
            raise TypeError(f"unknown option(s) for the galaxies backend: {sorted(opts)}")
        unknown_classes = [c for c in card.classes if c not in CLASSES]
        unknown_bands = [b for b in card.bias_values if b not in BANDS]
        if unknown_classes or unknown_bands:
            raise ValueError(f"card {card.name!r} is not the galaxies benchmark's: unknown class(es) "
                             f"{unknown_classes} (known: {list(CLASSES)}), unknown band(s) {unknown_bands} "
                             f"(known: {list(BANDS)})")
        self.card = card
        self.image_size = int(image_size)
        require("image_size", self.image_size)

    def prompt_for(self, request: ImageRequest) -> str:
        """A pseudo-prompt naming the kind of source this request will show and its band."""
        self._check(request)
        kind = _kind(request.label, np.random.default_rng(request.seed))
        return f"{'an' if kind[0] in 'aeiou' else 'a'} {kind} in the {request.bias} band"

    def generate(self, requests: list[ImageRequest]) -> list[Image.Image]:
        """One RGB image per request, each a function of the request's seed alone."""
        return [self.render(r) for r in requests]

    def render(self, request: ImageRequest) -> Image.Image:
        """The image of one request."""
        self._check(request)
        rng = np.random.default_rng(request.seed)
        kind = _kind(request.label, rng)  # first draw: the same kind prompt_for names
        s = 2 * self.image_size
        unit = s / _REFERENCE_SIZE
        if request.label == "compact":
            flux = _point_source(rng, s, unit, spikes=kind.startswith("bright star"))
        else:
            flux = _galaxy(rng, s, unit, kind)
        light = _stretch(flux + _specks(rng, s, unit))
        light = light.reshape(self.image_size, 2, self.image_size, 2).mean(axis=(1, 3))
        sky = rng.uniform(0.035, 0.065) + rng.uniform(0.012, 0.025) * rng.standard_normal(light.shape)
        return Image.fromarray(band_colour(light + sky, request.bias, rng))

    def _check(self, request: ImageRequest) -> None:
        if request.label not in self.card.classes or request.bias not in self.card.bias_values:
            raise ValueError(f"group ({request.label!r}, {request.bias!r}) is not a group of card {self.card.name!r}")
