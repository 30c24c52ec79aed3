"""The ``procedural`` synthesis backend: the built-in benchmarks' stand-in for a text-to-image model.

It picks the generator of the card's benchmark (``faces``: :mod:`ffr.synthesis.faces`,
``galaxies``: :mod:`ffr.synthesis.galaxies`); any other card gets the digits of this module.
For the digits benchmark it renders any (class, background) group on request, from other sources than the real demo: digits
typeset with the TrueType fonts matplotlib ships (with random size, position, rotation, shear and
stroke) over procedurally generated imitations of each texture. The result is recognisably the same
task as the real demo, with a real-vs-synthetic domain gap, as Stable Diffusion images have.
Every image depends only on its request's seed.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from ffr.data.demo import class_digits
from ffr.data.manifest import DatasetCard
from ffr.synthesis.generation import SYNTHESIS_BACKENDS, ImageRequest

# Varied faces (sans, serif, italic, Computer Modern, STIX) so no single glyph shape stands for a digit.
FONT_FILES = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSerif.ttf",
              "DejaVuSerif-Italic.ttf", "DejaVuSansMono.ttf", "cmr10.ttf", "cmss10.ttf", "cmti10.ttf",
              "STIXGeneral.ttf", "STIXGeneralItalic.ttf")


def _font_paths() -> list[Path]:
    import matplotlib

    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    paths = [folder / f for f in FONT_FILES if (folder / f).is_file()]
    if not paths:
        raise FileNotFoundError(f"no DejaVu font found in {folder}: the procedural backend needs matplotlib's fonts")
    return paths


# ---------------------------------------------------------------- textures: float32 (S, S, 3) in [0, 1]
def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Value noise: a ``cells``×``cells`` random grid upsampled bicubically to ``size``, in about [0, 1]."""
    grid = Image.fromarray(rng.random((cells, cells), dtype=np.float32))
    return np.asarray(grid.resize((size, size), Image.BICUBIC), dtype=np.float32)


def _grass(rng: np.random.Generator, s: int) -> np.ndarray:
    # Blades: noise stretched vertically (few rows, many columns), slanted by a random shear.
    blades = Image.fromarray(rng.random((max(2, s // 12), s), dtype=np.float32)).resize((s, s), Image.BILINEAR)
    blades = np.asarray(blades.transform((s, s), Image.AFFINE, (1, rng.uniform(-0.3, 0.3), 0, 0, 1, 0),
                                         Image.BILINEAR), dtype=np.float32)
    v = 0.55 * blades + 0.3 * _smooth_noise(rng, s, 4) + 0.15 * rng.random((s, s), dtype=np.float32)
    return v[..., None] * np.array([0.25, 0.75, 0.2], np.float32) + np.array([0.05, 0.12, 0.03], np.float32)


def _brick(rng: np.random.Generator, s: int) -> np.ndarray:
    h = int(rng.integers(s // 6, s // 3))
    w = int(2 * h * rng.uniform(0.8, 1.3))
    mortar = max(1, h // 7)
    y0, x0 = int(rng.integers(0, h)), int(rng.integers(0, w))
    out = np.empty((s, s, 3), np.float32)
    for top in range(-y0, s, h):
        row = (top + y0) // h
        offset = x0 + (w // 2 if row % 2 else 0)
        for left in range(-offset, s, w):
            shade = rng.uniform(0.7, 1.1)
            ys, xs = slice(max(0, top), max(0, top + h)), slice(max(0, left), max(0, left + w))
            out[ys, xs] = np.array([0.72, 0.28, 0.2], np.float32) * shade
            # Mortar: the bottom and right edge of each brick.
            out[max(0, top + h - mortar):max(0, top + h), xs] = 0.72
            out[ys, max(0, left + w - mortar):max(0, left + w)] = 0.72
    return out * (0.85 + 0.3 * rng.random((s, s, 1), dtype=np.float32))


def _gravel(rng: np.random.Generator, s: int) -> np.ndarray:
    img = Image.new("RGB", (s, s), (60, 65, 85))
    draw = ImageDraw.Draw(img)
    for _ in range(int(s * s / 30)):
        x, y = rng.uniform(-4, s, size=2)
        rx, ry = rng.uniform(s / 40, s / 10, size=2)
        g = rng.uniform(80, 200)
        draw.ellipse([x - rx, y - ry, x + rx, y + ry], fill=(int(g * 0.85), int(g * 0.9), int(min(255, g * 1.15))))
    return np.asarray(img.filter(ImageFilter.GaussianBlur(0.6)), dtype=np.float32) / 255.0


def _moon(rng: np.random.Generator, s: int) -> np.ndarray:
    v = 0.55 + 0.25 * _smooth_noise(rng, s, 6)
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    for _ in range(int(rng.integers(3, 9))):
        cy, cx, r = rng.uniform(0, s), rng.uniform(0, s), rng.uniform(s / 20, s / 6)
        d = np.hypot(yy - cy, xx - cx) / r
        v = v - 0.25 * (d < 1) + 0.15 * ((d >= 1) & (d < 1.2))  # dark floor, bright rim
    v = np.clip(v + 0.05 * rng.standard_normal((s, s)).astype(np.float32), 0, 1)
    return v[..., None] * np.array([0.9, 0.85, 0.6], np.float32)


def _generic(name: str):
    """A texture for any bias value without its own generator: smooth noise in a colour hashed from the name."""
    colour = np.frombuffer(hashlib.sha256(name.encode()).digest()[:3], np.uint8).astype(np.float32) / 255.0

    def render(rng: np.random.Generator, s: int) -> np.ndarray:
        v = 0.4 + 0.45 * _smooth_noise(rng, s, 5) + 0.15 * rng.random((s, s), dtype=np.float32)
        return v[..., None] * (0.25 + 0.75 * colour)

    return render


TEXTURE_GENERATORS = {"grass": _grass, "brick": _brick, "gravel": _gravel, "moon": _moon}


# ---------------------------------------------------------------- the backend
# The generator of each built-in benchmark (ffr.data.builtin) by its card's name; any other card
# (the digits demo, or a user's dataset) gets the typeset digits.
BUILTIN_GENERATORS = {"faces": ("ffr.synthesis.faces", "FacesBackend"),
                        "galaxies": ("ffr.synthesis.galaxies", "GalaxiesBackend")}


@SYNTHESIS_BACKENDS.register("procedural")
def procedural_backend(card: DatasetCard, **opts):
    """The procedural generator for ``card``: its benchmark's own (by the card's name, when the
    card has that benchmark's classes and bias values), else the digits of
    :class:`ProceduralBackend`. ``opts`` go to that generator (e.g. ``image_size``)."""
    import importlib

    if card.name in BUILTIN_GENERATORS:
        module, cls = BUILTIN_GENERATORS[card.name]
        try:
            return getattr(importlib.import_module(module), cls)(card, **opts)
        except ValueError:  # a user's dataset that only shares the name (a folder called faces/)
            pass
    return ProceduralBackend(card, **opts)


class ProceduralBackend:
    """Typeset digits over procedural textures, for every (class, bias) group of ``card``.

    ``image_size`` is the output size (images are drawn at twice that size, then shrunk, to
    antialias them); ``digits`` overrides the class → digits mapping read from the card.
    """

    generator = "procedural-v1"
    batch_invariant = True  # each image is drawn on its own: batching cannot change it

    def __init__(self, card: DatasetCard, image_size: int = 32,
                 digits: dict[str, tuple[int, ...]] | None = None, **opts):
        if opts:
            raise TypeError(f"unknown option(s) for the procedural backend: {sorted(opts)}")
        self.card = card
        self.image_size = int(image_size)
        self.digits = {c: tuple(d) for c, d in (digits or class_digits(card)).items()}
        missing = [c for c in card.classes if not self.digits.get(c)]
        if missing:
            raise ValueError(f"no digits given for class(es) {missing}")
        self.textures = {b: TEXTURE_GENERATORS.get(b) or _generic(b) for b in card.bias_values}
        self.font_paths = _font_paths()
        self._fonts: dict[tuple[int, int], ImageFont.FreeTypeFont] = {}

    def _digit(self, request: ImageRequest, rng: np.random.Generator) -> int:
        digits = self.digits[request.label]
        return digits[int(rng.integers(len(digits)))]

    def prompt_for(self, request: ImageRequest) -> str:
        """A pseudo-prompt naming the digit this request will show and its background."""
        digit = self._digit(request, np.random.default_rng(request.seed))
        return f"a handwritten-looking digit {digit} on {request.bias}"

    def generate(self, requests: list[ImageRequest]) -> list[Image.Image]:
        """One RGB image per request, each a function of the request's seed alone."""
        return [self.render(r) for r in requests]

    def render(self, request: ImageRequest) -> Image.Image:
        """The image of one request."""
        if request.label not in self.digits or request.bias not in self.textures:
            raise ValueError(f"group ({request.label!r}, {request.bias!r}) is not a group of card {self.card.name!r}")
        rng = np.random.default_rng(request.seed)
        digit = self._digit(request, rng)  # first draw: the same digit prompt_for names
        s = 2 * self.image_size
        background = self.textures[request.bias](rng, s)
        alpha = self._glyph(str(digit), rng, s)[..., None]
        ink = rng.uniform(0.88, 1.0) * np.array([1.0, rng.uniform(0.95, 1.0), rng.uniform(0.9, 1.0)], np.float32)
        out = alpha * ink + (1 - alpha) * np.clip(background, 0, 1)
        img = Image.fromarray(np.clip(np.round(out * 255), 0, 255).astype(np.uint8))
        return img.resize((self.image_size, self.image_size), Image.LANCZOS)

    def _glyph(self, text: str, rng: np.random.Generator, s: int) -> np.ndarray:
        """The digit's coverage (float32 s×s in [0, 1]): random font, size, stroke, rotation,
        shear, position and a smooth warp."""
        from scipy.ndimage import map_coordinates

        font_i = int(rng.integers(len(self.font_paths)))
        size = int(s * rng.uniform(0.85, 1.05))  # digit ~0.6-0.75 of the height, as in MNIST
        key = (font_i, size)
        if key not in self._fonts:  # fonts are cached per instance; loading one costs ~1 ms
            self._fonts[key] = ImageFont.truetype(str(self.font_paths[font_i]), size)
        mask = Image.new("L", (s, s), 0)
        stroke = int(rng.integers(0, s // 32 + 1))  # thicker strokes fill the loops of bold glyphs
        ImageDraw.Draw(mask).text((s / 2, s / 2), text, fill=255, font=self._fonts[key], anchor="mm",
                                  stroke_width=stroke, stroke_fill=255)
        angle = math.radians(rng.uniform(-15, 15))
        shear, scale = rng.uniform(-0.2, 0.2), rng.uniform(0.9, 1.1)
        tx, ty = rng.uniform(-0.1, 0.1, size=2) * s
        # Inverse affine map (output → input pixel) about the centre: rotation, shear, scale, shift.
        c, si = math.cos(angle) / scale, math.sin(angle) / scale
        a, b, d, e = c, -si + shear, si, c
        cx = cy = s / 2
        coeffs = (a, b, cx - a * (cx + tx) - b * (cy + ty), d, e, cy - d * (cx + tx) - e * (cy + ty))
        mask = np.asarray(mask.transform((s, s), Image.AFFINE, coeffs, Image.BILINEAR), dtype=np.float32) / 255.0
        # A smooth random displacement field bends the strokes, as a hand would.
        amp = rng.uniform(0.02, 0.06) * s
        dy, dx = ((_smooth_noise(rng, s, 4) - 0.5) * 2 * amp for _ in range(2))
        yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
        return np.clip(map_coordinates(mask, [yy + dy, xx + dx], order=1, mode="constant"), 0, 1)
