"""The built-in offline "galaxies" benchmark: compact vs extended sources of a real deep-sky photograph.

Source: the Hubble eXtreme Deep Field (``skimage/data/hubble_deep_field.jpg``, shipped inside the
``scikit-image`` wheel; NASA, public domain), a 1000×872 telescope photograph full of galaxies.
Its sources are detected deterministically (a threshold above the sky on the smoothed luminance,
then connected regions), measured (``skimage.measure.regionprops``) and labelled by morphology, the
classic star/galaxy-separation task: ``compact`` (small and round: star-like or tiny galaxies) vs
``extended`` (large galaxies, round or elongated); the sources in between are dropped, so the labels
are clean. The labels are a proxy measured on the image, not a catalogue's.
Each source becomes a square cutout scaled to the source, in up to 8 orientations (sky images have
no preferred one). The bias attribute ``band`` renders every cutout twice, through a red and a blue
false-colour palette (:func:`band_colour`), as if seen through another filter: a spurious colour the
bias-rate split later correlates with the class. Splits are made by source, and sources whose
cutouts overlap go to the same split, so no pixel of the photograph is in two splits; every split
is balanced over (class, band) groups. Nothing is downloaded.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np

from ffr.data.build import BuildSpec, mark_complete, open_build, package_file, write_atomic
from ffr.data.manifest import SPLITS, DatasetCard, Manifest, group_key
from ffr.rules import require

CLASSES = ("compact", "extended")

# Band → per-channel (gain, exponent) of its false-colour palette: channel = gain · luminance ** exponent.
# Faint light takes the colour of the low-exponent channel, bright cores go towards white.
BANDS: dict[str, tuple[tuple[float, float], ...]] = {
    "red": ((1.00, 0.75), (0.78, 1.35), (0.55, 2.30)),   # black → deep red → orange → warm white
    "blue": ((0.50, 2.30), (0.80, 1.30), (1.00, 0.75)),  # black → navy → cyan → cold white
}

SPEC_FILE = "galaxies_spec.json"
SOURCES_FILE = "sources.csv"  # each image's source, orientation and the source's measured morphology
_FORMAT = "galaxies-v1"  # bump when detection, labelling or rendering changes, so cached builds are rebuilt

# Detection: on the luminance smoothed by a Gaussian of SMOOTH_SIGMA px, pixels brighter than the sky
# (median) by DETECT_SIGMAS times its noise (from the median absolute deviation) form the sources.
SMOOTH_SIGMA = 1.0
DETECT_SIGMAS = 5.0
MIN_AREA = 12  # px: smaller regions are noise peaks
# Morphology (px of the photograph; the major axis is regionprops' axis_major_length, 4 σ of the region).
COMPACT_MAX_AXIS = 7.0        # compact: major axis at most this ...
COMPACT_MIN_AXIS_RATIO = 0.6  # ... and round (minor / major at least this)
EXTENDED_MIN_AXIS = 11.0      # extended: major axis at least this ...
EXTENDED_MIN_SOLIDITY = 0.75  # ... and one body (blends of knots, spiked stars are less solid)
# Cutouts: a square box BOX_SCALE times the region's extent (at least MIN_BOX px), on its centroid.
BOX_SCALE = 1.5
MIN_BOX = 24
# The dihedral group: transform t rotates by 90°·(t mod 4), then mirrors when t ≥ 4.
N_TRANSFORMS = 8


def band_colour(lum: np.ndarray, band: str, rng: np.random.Generator | None = None) -> np.ndarray:
    """``lum`` (float, about [0, 1]) through ``band``'s false-colour palette: uint8 (..., 3).

    With ``rng`` every gain and exponent varies by up to ±10 %, so no two renders share a tint.
    The synthetic generator uses this same function, so a band means the same colours in both.
    """
    if band not in BANDS:
        raise ValueError(f"unknown band {band!r}; available: {sorted(BANDS)}")
    lum = np.clip(np.asarray(lum, dtype=np.float32), 0, 1)
    channels = []
    for gain, exponent in BANDS[band]:
        if rng is not None:
            gain, exponent = gain * rng.uniform(0.9, 1.1), exponent * rng.uniform(0.9, 1.1)
        channels.append(np.clip(gain, 0, 1) * lum ** exponent)
    return np.clip(np.round(np.stack(channels, axis=-1) * 255), 0, 255).astype(np.uint8)


@lru_cache(maxsize=1)
def load_field() -> np.ndarray:
    """The Hubble eXtreme Deep Field's luminance (Rec. 601 weights), float32 (872, 1000) in [0, 1], read-only."""
    from PIL import Image

    with Image.open(package_file("skimage", "data", "hubble_deep_field.jpg")) as im:
        rgb = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    lum = rgb @ np.array([0.299, 0.587, 0.114], np.float32)
    lum.setflags(write=False)
    return lum


@dataclass(frozen=True)
class Source:
    """One detected source: its id (detection order), centre and cutout box side (px of the
    photograph), its measured morphology, and its class (None: between the classes, dropped)."""

    id: int
    y: int
    x: int
    box: int
    area: int
    major_axis: float
    axis_ratio: float
    solidity: float
    label: str | None


def classify(major_axis: float, axis_ratio: float, solidity: float) -> str | None:
    """The morphological class of a source, or None for an ambiguous one (the margin between)."""
    if major_axis <= COMPACT_MAX_AXIS and axis_ratio >= COMPACT_MIN_AXIS_RATIO:
        return "compact"
    if major_axis >= EXTENDED_MIN_AXIS and solidity >= EXTENDED_MIN_SOLIDITY:
        return "extended"
    return None


@lru_cache(maxsize=1)
def find_sources() -> tuple[Source, ...]:
    """Every source of the field whose cutout box lies inside the photograph, labelled or not
    (computed once per process: the field never changes)."""
    from skimage import filters, measure

    lum = load_field()
    smooth = filters.gaussian(lum, SMOOTH_SIGMA)
    sky = float(np.median(smooth))
    noise = 1.4826 * float(np.median(np.abs(smooth - sky)))
    regions = measure.regionprops(measure.label(smooth > sky + DETECT_SIGMAS * noise),
                                  intensity_image=np.clip(smooth - sky, 0, None))
    height, width = lum.shape
    out = []
    for region in regions:
        if region.area < MIN_AREA:
            continue
        r0, c0, r1, c1 = region.bbox
        box = max(MIN_BOX, math.ceil(BOX_SCALE * max(r1 - r0, c1 - c0)))
        cy, cx = (int(round(v)) for v in region.centroid_weighted)
        if cy - box // 2 < 0 or cx - box // 2 < 0 or cy - box // 2 + box > height or cx - box // 2 + box > width:
            continue  # the cutout would leave the photograph
        major = float(region.axis_major_length)
        # Rounded before classifying, so the stored measurements give back the stored class.
        ratio = round(float(region.axis_minor_length) / major if major > 0 else 1.0, 4)
        major, solidity = round(major, 4), round(float(region.solidity), 4)
        out.append(Source(len(out), cy, cx, box, int(region.area), major, ratio, solidity,
                          classify(major, ratio, solidity)))
    return tuple(out)


@dataclass
class GalaxiesSpec(BuildSpec):
    """What the galaxies benchmark contains.

    Classes are ``compact`` and ``extended``, bias values the bands ``red`` and ``blue`` (class i's
    majority band is band i). Each class keeps as many sources as the rarer one has (at most
    ``per_class``, for quick runs), chosen with ``seed``; ``split_fractions`` divides them into
    train/val/test. ``variants`` of the 8 rotations/flips of each source (a seeded subset per
    source; default all) are each rendered in every band, as ``image_size`` px RGB images.
    """

    image_size: int = 32
    seed: int = 0
    split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
    variants: int = N_TRANSFORMS
    per_class: int | None = None

    def __post_init__(self) -> None:
        self.split_fractions = tuple(float(f) for f in self.split_fractions)
        require("split_fractions", tuple(self.split_fractions))
        if not 1 <= self.variants <= N_TRANSFORMS:
            raise ValueError(f"variants must be 1 to {N_TRANSFORMS} (the rotations/flips of a cutout), "
                             f"got {self.variants}")
        require("per_split", self.per_class, "per_class")
        require("image_size", self.image_size)
        require("seed", self.seed)

    def card(self) -> DatasetCard:
        """The dataset card; its description says where the images come from and how labels were made."""
        return DatasetCard(
            name="galaxies",
            classes=list(CLASSES),
            bias_values=list(BANDS),
            bias_name="band",
            description=(
                "Galaxies: cutouts of the sources detected in the Hubble eXtreme Deep Field photograph "
                "(hubble_deep_field.jpg shipped with scikit-image), each rendered in a red and a blue "
                "false-colour band. Labels come from measured morphology (a proxy, not a catalogue): "
                f"compact = major axis <= {COMPACT_MAX_AXIS:g} px and axis ratio >= {COMPACT_MIN_AXIS_RATIO:g}; "
                f"extended = major axis >= {EXTENDED_MIN_AXIS:g} px and solidity >= {EXTENDED_MIN_SOLIDITY:g}; "
                "sources in between are dropped. Split by source, overlapping cutouts in the same split."),
        )


def _overlap_groups(sources: list[Source]) -> list[list[Source]]:
    """The sources in groups whose cutout boxes overlap (chained: connected components), each by id."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    lo = np.array([(s.y - s.box // 2, s.x - s.box // 2) for s in sources]).reshape(-1, 2)
    hi = lo + np.array([s.box for s in sources]).reshape(-1, 1)
    overlap = np.all(np.maximum(lo[:, None], lo[None]) < np.minimum(hi[:, None], hi[None]), axis=-1)
    _, component = connected_components(csr_matrix(overlap), directed=False)
    groups: dict[int, list[Source]] = {}
    for s, c in zip(sources, component):
        groups.setdefault(int(c), []).append(s)
    return sorted(groups.values(), key=lambda g: g[0].id)


def _balanced_sources(sources: tuple[Source, ...], per_class: int | None,
                      rng: np.random.Generator) -> list[Source]:
    """As many sources of each class as the rarer class has (at most ``per_class``), chosen with ``rng``; by id."""
    by_class = [[s for s in sources if s.label == c] for c in CLASSES]
    n = min(len(v) for v in by_class)
    if per_class is not None:
        n = min(n, per_class)
    return sorted((members[i] for members in by_class for i in rng.permutation(len(members))[:n]),
                  key=lambda s: s.id)


def _deal(groups: list[list[Source]], target: dict[str, int],
          rng: np.random.Generator) -> dict[str, dict[str, list[Source]]]:
    """Each group of sources, largest first (ties in seeded order), to the split whose classes are
    furthest below their ``target`` count (relatively): split → class → sources."""
    taken: dict[str, dict[str, list[Source]]] = {split: {c: [] for c in CLASSES} for split in SPLITS}
    for i in sorted(rng.permutation(len(groups)), key=lambda i: -len(groups[i])):
        shortfall = {split: sum((target[split] - len(taken[split][s.label])) / max(target[split], 1)
                                for s in groups[i]) for split in SPLITS}
        split = max(SPLITS, key=shortfall.get)
        for s in groups[i]:
            taken[split][s.label].append(s)
    return taken


def _split_sources(sources: tuple[Source, ...], spec: GalaxiesSpec,
                   rng: np.random.Generator) -> dict[str, dict[str, list[Source]]]:
    """split → class → its sources (by id), stratified by class, every class of a split the same size.

    Sources whose cutouts overlap are dealt together (:func:`_deal`), so no pixel of the photograph
    is in two splits; then each split's larger class is cut to the size of the smaller one.
    """
    kept = _balanced_sources(sources, spec.per_class, rng)
    n = len(kept) // len(CLASSES)
    # At least one source of each class per split; train takes what rounding leaves.
    n_val, n_test = (max(1, int(round(f * n))) for f in spec.split_fractions[1:])
    taken = _deal(_overlap_groups(kept), dict(zip(SPLITS, (n - n_val - n_test, n_val, n_test))), rng)
    out: dict[str, dict[str, list[Source]]] = {}
    for split, classes in taken.items():
        size = min(len(v) for v in classes.values())
        if size == 0:
            raise ValueError(f"too few sources for split {split!r}: raise per_class (got {spec.per_class}) "
                             f"or change split_fractions {spec.split_fractions}")
        out[split] = {c: sorted((v[j] for j in rng.permutation(len(v))[:size]), key=lambda s: s.id)
                      for c, v in classes.items()}
    return out


def cutout(source: Source, transform: int, size: int) -> np.ndarray:
    """The luminance cutout of ``source`` under dihedral ``transform``, resized: float32 (size, size)."""
    from PIL import Image

    half = source.box // 2
    patch = load_field()[source.y - half:source.y - half + source.box, source.x - half:source.x - half + source.box]
    patch = np.rot90(patch, transform % 4)
    if transform >= 4:
        patch = patch[:, ::-1]
    resized = Image.fromarray(np.ascontiguousarray(patch, dtype=np.float32)).resize((size, size), Image.LANCZOS)
    return np.clip(np.asarray(resized, dtype=np.float32), 0, 1)


def _sources_table(rows: list[dict]) -> bytes:
    """CSV text of the per-image provenance rows."""
    import io

    import pandas as pd

    buf = io.StringIO()
    pd.DataFrame(rows).to_csv(buf, index=False)
    return buf.getvalue().encode()


def make_galaxies(out_dir: str | os.PathLike, spec: GalaxiesSpec | None = None) -> Manifest:
    """Build the galaxies benchmark under ``out_dir`` and return its manifest.

    Writes ``images/<split>/<group>/<n>.png``, ``sources.csv`` (each image's source, orientation
    and the source's measurements), ``manifest.csv`` + ``card.json`` and, last,
    ``galaxies_spec.json``; a directory that already holds a complete build of the same spec is
    reused as is, another spec's build is replaced. The output depends only on the spec: the same
    seed gives byte-identical files. Every (source, orientation) is rendered in every band, so all
    groups of a split have the same size.
    """
    from PIL import Image

    spec = spec or GalaxiesSpec()
    out_dir, wanted, built = open_build(out_dir, SPEC_FILE, _FORMAT, spec)
    if built is not None:
        return built

    card = spec.card()
    rng = np.random.default_rng(spec.seed)
    splits = _split_sources(find_sources(), spec, rng)
    rows, provenance = [], []
    for split in SPLITS:
        counters = {g: 0 for g in card.groups}
        for label in CLASSES:
            for source in splits[split][label]:
                for t in np.sort(rng.permutation(N_TRANSFORMS)[:spec.variants]):
                    lum = cutout(source, int(t), spec.image_size)
                    for band in card.bias_values:
                        pixels = band_colour(lum, band, rng)
                        n = counters[(label, band)]
                        counters[(label, band)] += 1
                        rel = f"images/{split}/{group_key(label, band)}/{n:05d}.png"
                        write_atomic(out_dir / rel, lambda f: Image.fromarray(pixels).save(f, format="PNG"))
                        rows.append({"path": rel, "label": label, "bias": band, "split": split, "source": "real"})
                        provenance.append({"path": rel, "source_id": source.id, "orientation": int(t),
                                           **{k: v for k, v in asdict(source).items() if k != "id"}})
    write_atomic(out_dir / SOURCES_FILE, lambda f: f.write(_sources_table(provenance)))
    manifest = Manifest.from_records(rows, card, out_dir)
    manifest.save(out_dir)
    mark_complete(out_dir, SPEC_FILE, wanted)
    return manifest
