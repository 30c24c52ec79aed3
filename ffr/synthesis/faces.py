"""The faces benchmark's procedural generator: drawn faces and drawn clutter, for every lighting.

The real faces benchmark (:mod:`ffr.data.faces`) is photographs; this generator draws its two
classes instead, with PIL: ``face`` is a schematic face (a head ellipse of random skin tone, size,
position and rotation; eyes, brows, nose and mouth of random geometry; optional hair, ears,
shoulders and glasses; smooth shading), ``nonface`` drawn clutter of the kind LFW's non-face patches
show (flat shapes with hard edges, dark borders, gradients, stripes, soft blobs — never a face
layout). Both are grayscale, like the photos, and then get the very same warm/cool colour cast
(:func:`ffr.data.faces.apply_lighting`), so the bias means the same thing in real and synthetic
images while the class content has a real-vs-synthetic domain gap. Every image depends only on
its request's seed.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ffr.data.faces import CLASSES, LIGHTING, apply_lighting, cast_strength, to_uint8
from ffr.data.manifest import DatasetCard
from ffr.synthesis.generation import ImageRequest

EXPRESSIONS = ("smiling", "neutral", "open-mouthed")
CLUTTER = ("shapes", "stripes", "gradient", "blobs")


# ---------------------------------------------------------------- helpers: float32 (s, s) gray in [0, 1]
def _gradient(rng: np.random.Generator, s: int, lo: float, hi: float) -> np.ndarray:
    """A linear ramp from ``lo`` to ``hi`` across the image, in a random direction."""
    angle = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) / s - 0.5
    t = np.clip(0.5 + xx * math.cos(angle) + yy * math.sin(angle), 0, 1)
    return (lo + (hi - lo) * t).astype(np.float32)


def _paste(canvas: np.ndarray, layer: Image.Image, mask: Image.Image) -> np.ndarray:
    """``layer`` (an "L" image) over ``canvas`` where ``mask`` covers it."""
    alpha = np.asarray(mask, dtype=np.float32) / 255.0
    return alpha * (np.asarray(layer, dtype=np.float32) / 255.0) + (1 - alpha) * canvas


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """A Gaussian blur (the smooth look of a drawing shrunk by a lens, not a photo's grain)."""
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(np.asarray(image, dtype=np.float32), sigma, mode="nearest")


def _grey(v: float) -> int:
    return int(np.clip(round(v * 255), 0, 255))


def _polygon(rng: np.random.Generator, s: int) -> list[tuple[float, float]]:
    """A random rotated quadrilateral, often larger than the image (so its edges cut across it)."""
    cx, cy = rng.uniform(-0.2, 1.2, size=2) * s
    w, h = rng.uniform(0.3, 1.2, size=2) * s
    a = rng.uniform(0, math.pi)
    c, si = math.cos(a), math.sin(a)
    return [(cx + c * dx - si * dy, cy + si * dx + c * dy)
            for dx, dy in ((-w / 2, -h / 2), (w / 2, -h / 2), (w / 2, h / 2), (-w / 2, h / 2))]


# ---------------------------------------------------------------- the face class
def _draw_face(rng: np.random.Generator, s: int, expression: str) -> np.ndarray:
    """A schematic face, upright in a layer, then rotated and moved over a drawn background."""
    canvas = _gradient(rng, s, *sorted(rng.uniform(0.03, 0.8, size=2)))
    layer, mask = Image.new("L", (s, s), 0), Image.new("L", (s, s), 0)
    dv, dm = ImageDraw.Draw(layer), ImageDraw.Draw(mask)

    def shape(kind: str, box, value: float, **kw) -> None:
        getattr(dv, kind)(box, fill=_grey(value), **kw)
        getattr(dm, kind)(box, fill=255, **kw)

    # The face fills most of the patch, as LFW's tight crops do.
    cx = cy = s / 2
    hw = rng.uniform(0.6, 0.85) * s / 2             # half-width of the head
    hh = hw * rng.uniform(1.15, 1.4)                  # half-height
    skin = rng.uniform(0.3, 0.85)
    if rng.random() < 0.6:                            # shoulders and neck
        clothes = rng.uniform(0.02, 0.9)
        shape("ellipse", [cx - 1.6 * hw, cy + 0.8 * hh, cx + 1.6 * hw, cy + 2.2 * hh], clothes)
        shape("rectangle", [cx - 0.45 * hw, cy + 0.5 * hh, cx + 0.45 * hw, cy + 1.1 * hh], skin * 0.8)
    if rng.random() < 0.75:                           # hair: a larger ellipse behind the top of the head
        hair = rng.uniform(0.02, 0.35) if rng.random() < 0.8 else rng.uniform(0.5, 0.9)
        grow = rng.uniform(1.05, 1.25)
        shape("ellipse", [cx - grow * hw, cy - hh * rng.uniform(1.05, 1.3), cx + grow * hw,
                          cy + hh * rng.uniform(0.0, 0.5)], hair)
    else:
        hair = rng.uniform(0.05, 0.4)
    if rng.random() < 0.6:                            # ears
        ey, er = cy + rng.uniform(-0.1, 0.1) * hh, rng.uniform(0.12, 0.2) * hw
        for side in (-1, 1):
            shape("ellipse", [cx + side * hw - er, ey - 1.6 * er, cx + side * hw + er, ey + 1.6 * er], skin * 0.9)
    shape("ellipse", [cx - hw, cy - hh, cx + hw, cy + hh], skin)

    dark = skin * rng.uniform(0.15, 0.45)
    eye_y = cy - hh * rng.uniform(0.02, 0.15)
    eye_dx, eye_rx = hw * rng.uniform(0.33, 0.46), hw * rng.uniform(0.12, 0.19)
    eye_ry = eye_rx * rng.uniform(0.45, 0.8)
    brow_y = eye_y - eye_ry - hw * rng.uniform(0.08, 0.18)
    brow_tilt, brow_w = rng.uniform(-0.12, 0.12) * hw, max(1, int(s * rng.uniform(0.02, 0.05)))
    for side in (-1, 1):
        ex = cx + side * eye_dx
        shape("ellipse", [ex - eye_rx, eye_y - eye_ry, ex + eye_rx, eye_y + eye_ry], skin * rng.uniform(0.5, 0.75))
        pr = eye_ry * rng.uniform(0.5, 0.8)
        shape("ellipse", [ex - pr, eye_y - pr, ex + pr, eye_y + pr], dark)
        shape("line", [(ex - 1.3 * eye_rx, brow_y + side * brow_tilt), (ex + 1.3 * eye_rx, brow_y - side * brow_tilt)],
              min(hair, dark + 0.1), width=brow_w)
    if rng.random() < 0.25:                           # glasses
        frame = rng.uniform(0.0, 0.3)
        for side in (-1, 1):
            ex, r = cx + side * eye_dx, eye_rx * 1.5
            dv.ellipse([ex - r, eye_y - r * 0.8, ex + r, eye_y + r * 0.8], outline=_grey(frame), width=max(1, s // 40))
        dv.line([(cx - eye_dx + eye_rx * 1.5, eye_y), (cx + eye_dx - eye_rx * 1.5, eye_y)], fill=_grey(frame),
                width=max(1, s // 40))

    nose_y = cy + hh * rng.uniform(0.08, 0.22)
    nose_w = hw * rng.uniform(0.1, 0.2)
    shape("line", [(cx + rng.uniform(-0.05, 0.05) * hw, eye_y + eye_ry), (cx, nose_y)], skin * 0.8,
          width=max(1, s // 48))
    shape("chord", [cx - nose_w, nose_y - nose_w * 0.5, cx + nose_w, nose_y + nose_w * 0.5], skin * 0.6,
          start=0, end=180)

    mouth_y = nose_y + hh * rng.uniform(0.15, 0.25)
    mouth_w = hw * rng.uniform(0.28, 0.48)
    lip = skin * rng.uniform(0.3, 0.6)
    line_w = max(1, int(s * rng.uniform(0.02, 0.04)))
    if expression == "smiling":
        curve = mouth_w * rng.uniform(0.25, 0.6)
        shape("arc", [cx - mouth_w, mouth_y - curve, cx + mouth_w, mouth_y + curve], lip, start=15, end=165,
              width=line_w)
    elif expression == "open-mouthed":
        open_h = mouth_w * rng.uniform(0.3, 0.6)
        shape("ellipse", [cx - mouth_w * 0.8, mouth_y - open_h, cx + mouth_w * 0.8, mouth_y + open_h], dark)
        if rng.random() < 0.6:                        # teeth
            shape("rectangle", [cx - mouth_w * 0.5, mouth_y - open_h * 0.7, cx + mouth_w * 0.5, mouth_y - open_h * 0.2],
                  rng.uniform(0.7, 0.95))
    else:
        tilt = rng.uniform(-0.05, 0.05) * hw
        shape("line", [(cx - mouth_w, mouth_y + tilt), (cx + mouth_w, mouth_y - tilt)], lip, width=line_w)
    if rng.random() < 0.15:                           # moustache
        shape("line", [(cx - mouth_w * 0.8, mouth_y - hh * 0.08), (cx + mouth_w * 0.8, mouth_y - hh * 0.08)],
              min(hair, 0.3), width=max(2, s // 20))

    # Pose: rotate about the head and shift it; then light it from one side, darker toward the rim.
    angle, (tx, ty) = rng.uniform(-15, 15), rng.normal(0, 0.05, size=2) * s
    layer, mask = (im.rotate(angle, resample=Image.BILINEAR, center=(cx, cy), translate=(tx, ty))
                   for im in (layer, mask))
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    side = rng.uniform(0, 2 * math.pi)
    u, v = (xx - cx - tx) / hw, (yy - cy - ty) / hh
    shade = (1 + rng.uniform(0.0, 0.35) * (u * math.cos(side) + v * math.sin(side))
             - rng.uniform(0.1, 0.3) * np.clip(u * u + v * v, 0, 1.5))
    face = np.clip(np.asarray(layer, dtype=np.float32) / 255.0 * shade, 0, 1)
    out = _paste(canvas, Image.fromarray(np.round(face * 255).astype(np.uint8)), mask)
    return _blur(out, rng.uniform(0.4, 1.2))


# ---------------------------------------------------------------- the nonface class
def _shapes(rng: np.random.Generator, s: int, canvas: np.ndarray) -> np.ndarray:
    for _ in range(int(rng.integers(1, 4))):
        layer, mask = Image.new("L", (s, s), _grey(rng.uniform(0, 1))), Image.new("L", (s, s), 0)
        ImageDraw.Draw(mask).polygon(_polygon(rng, s), fill=255)
        canvas = _paste(canvas, layer, mask)
    return canvas


def _stripes(rng: np.random.Generator, s: int, canvas: np.ndarray) -> np.ndarray:
    period, angle = rng.uniform(0.08, 0.35) * s, rng.uniform(0, math.pi)
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    wave = np.sin(2 * math.pi * (xx * math.cos(angle) + yy * math.sin(angle)) / period + rng.uniform(0, 2 * math.pi))
    if rng.random() < 0.5:
        wave = np.sign(wave)  # blinds, railings: hard-edged bands
    stripes = np.clip(rng.uniform(0.2, 0.8) + rng.uniform(0.1, 0.35) * wave, 0, 1)
    mask = Image.new("L", (s, s), 255 if rng.random() < 0.5 else 0)
    ImageDraw.Draw(mask).polygon(_polygon(rng, s), fill=255)  # the stripes cover part of the patch
    return _paste(canvas, Image.fromarray(np.round(stripes * 255).astype(np.uint8)), mask)


def _soft_gradient(rng: np.random.Generator, s: int, canvas: np.ndarray) -> np.ndarray:
    ramp = _gradient(rng, s, *rng.uniform(0, 1, size=2))
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32)
    cy, cx, r = rng.uniform(0, s), rng.uniform(0, s), rng.uniform(0.3, 1.0) * s
    glow = rng.uniform(-0.4, 0.4) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
    return np.clip(0.5 * canvas + 0.5 * ramp + glow, 0, 1)


def _blobs(rng: np.random.Generator, s: int, canvas: np.ndarray) -> np.ndarray:
    for _ in range(int(rng.integers(2, 6))):
        layer, mask = Image.new("L", (s, s), _grey(rng.uniform(0, 1))), Image.new("L", (s, s), 0)
        x, y = rng.uniform(0, s, size=2)
        rx, ry = rng.uniform(0.08, 0.4, size=2) * s
        ImageDraw.Draw(mask).ellipse([x - rx, y - ry, x + rx, y + ry], fill=int(rng.integers(120, 256)))
        canvas = _paste(canvas, layer, mask.filter(ImageFilter.GaussianBlur(rng.uniform(1, 0.15 * s))))
    return canvas


CLUTTER_DRAWERS = {"shapes": _shapes, "stripes": _stripes, "gradient": _soft_gradient, "blobs": _blobs}


def _draw_clutter(rng: np.random.Generator, s: int, kind: str) -> np.ndarray:
    """Drawn background clutter: ``kind`` over a ramp, maybe a second kind and a dark border."""
    canvas = _gradient(rng, s, *rng.uniform(0, 0.9, size=2))
    canvas = CLUTTER_DRAWERS[kind](rng, s, canvas)
    if rng.random() < 0.3:
        canvas = CLUTTER_DRAWERS[CLUTTER[int(rng.integers(len(CLUTTER)))]](rng, s, canvas)
    if rng.random() < 0.4:  # the black margin of a photo's border, as many LFW patches show
        layer, mask = Image.new("L", (s, s), _grey(rng.uniform(0, 0.05))), Image.new("L", (s, s), 0)
        ImageDraw.Draw(mask).polygon(_polygon(rng, s), fill=255)
        canvas = _paste(canvas, layer, mask)
    return _blur(canvas, rng.uniform(0.3, 1.5))


# ---------------------------------------------------------------- the backend
class FacesBackend:
    """Drawn faces and drawn clutter under the faces benchmark's lightings, for every group of ``card``.

    ``image_size`` is the output size (images are drawn at twice that size, then shrunk, to
    antialias them). The card's classes must be :data:`ffr.data.faces.CLASSES` and its bias values
    lightings of :data:`ffr.data.faces.LIGHTING`.
    """

    generator = "procedural-faces-v1"
    batch_invariant = True  # each image is drawn on its own: batching cannot change it

    def __init__(self, card: DatasetCard, image_size: int = 32, **opts):
        if opts:
            raise TypeError(f"unknown option(s) for the faces backend: {sorted(opts)}")
        unknown_classes = [c for c in card.classes if c not in CLASSES]
        if unknown_classes:
            raise ValueError(f"the faces backend draws only the classes {list(CLASSES)}; "
                             f"card {card.name!r} has {unknown_classes}")
        unknown_bias = [b for b in card.bias_values if b not in LIGHTING]
        if unknown_bias:
            raise ValueError(f"the faces backend knows only the lightings {sorted(LIGHTING)}; "
                             f"card {card.name!r} has {unknown_bias}")
        self.card = card
        self.image_size = int(image_size)

    @staticmethod
    def _kind(request: ImageRequest, rng: np.random.Generator) -> str:
        kinds = EXPRESSIONS if request.label == "face" else CLUTTER
        return kinds[int(rng.integers(len(kinds)))]

    def prompt_for(self, request: ImageRequest) -> str:
        """A pseudo-prompt naming what this request will show and its lighting."""
        kind = self._kind(request, np.random.default_rng(request.seed))
        if request.label == "face":
            return f"a drawn {kind} face under {request.bias} light"
        return f"drawn {kind}, no face, under {request.bias} light"

    def generate(self, requests: list[ImageRequest]) -> list[Image.Image]:
        """One RGB image per request, each a function of the request's seed alone."""
        return [self.render(r) for r in requests]

    def render(self, request: ImageRequest) -> Image.Image:
        """The image of one request."""
        if request.label not in self.card.classes or request.bias not in self.card.bias_values:
            raise ValueError(f"group ({request.label!r}, {request.bias!r}) is not a group of card {self.card.name!r}")
        rng = np.random.default_rng(request.seed)
        kind = self._kind(request, rng)  # first draw: the same kind prompt_for names
        s = 2 * self.image_size
        gray = _draw_face(rng, s, kind) if request.label == "face" else _draw_clutter(rng, s, kind)
        # Shrink, then cast, exactly as the real photos are: the lighting is the same in both.
        small = Image.fromarray(np.clip(gray, 0, 1).astype(np.float32)).resize(
            (self.image_size, self.image_size), Image.LANCZOS)
        pixels = apply_lighting(np.clip(np.asarray(small, dtype=np.float32), 0, 1), request.bias, cast_strength(rng))
        return Image.fromarray(to_uint8(pixels))
