"""Adapters for the public benchmarks, each reading the files exactly as they are distributed.

- ``waterbirds``: ``metadata.csv`` (``img_filename, y, split, place``; split 0/1/2 = train/val/test).
- ``celeba``: ``list_attr_celeba.txt`` (a count line, a header line of attribute names, then
  ``<image> ±1 ...``) + ``list_eval_partition.txt`` (``<image> 0|1|2``); any two attributes as
  label and bias.
- ``celeba_hq``: CelebAMask-HQ's ``CelebAMask-HQ-attribute-anno.txt`` (same format) and
  ``CelebA-HQ-img/``; split through ``CelebA-HQ-to-CelebA-mapping.txt`` + CelebA's partition
  file when given, else a seeded stratified split.
- ``utkface``: ``<age>_<gender>_<race>_<date>.jpg[.chip.jpg]`` file names; Y = gender, B = age
  (the paper's young 0-5 vs old 20-50; other ages left out); a seeded stratified split.
- ``spuco_animals``: ``spuco_birds/<split>/{landbirds,waterbirds}/{land,water}/`` and
  ``spuco_dogs/<split>/{small_dogs,big_dogs}/{indoor,outdoor}/``.

A file that is missing or malformed is reported with its path and line. Datasets without an
official split get :func:`stratified_split`: per (label, bias) group, rows sorted by path, shuffled
with ``split_seed``, cut by ``split_fractions`` (train, val, test) — the same split on every
machine, whatever order the file system lists the files in.
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from pathlib import Path

import numpy as np

from ffr.data.adapters import ADAPTERS
from ffr.data.manifest import IMAGE_SUFFIXES, SPLITS, DatasetCard, Manifest, ManifestError, validate

SPLIT_CODES = {"0": "train", "1": "val", "2": "test"}   # Waterbirds and CelebA partition codes
BIAS_NAMES = {"Male": ("female", "male"), "Young": ("old", "young")}


def _require(path: Path, what: str = "file") -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}")
    return path


def _finish(rows: list[dict], card: DatasetCard, root: Path, check_files: bool, source: str) -> Manifest:
    if not rows:
        raise ManifestError(source, ["no images found"])
    manifest = Manifest.from_records(rows, card, root)
    validate(manifest, check_files=check_files, source=source)
    return manifest


def auto_majority(rows: list[dict], classes: list[str], biases: list[str]) -> dict[str, str]:
    """Each class's majority bias value, read from the data. With two classes and two bias
    values the classes get opposite majorities, as in the paper's code: class 1's majority is
    its most frequent bias value, class 0's the other one."""
    counts = Counter((r["label"], r["bias"]) for r in rows)
    top = {c: max(biases, key=lambda b: (counts[(c, b)], -biases.index(b))) for c in classes}
    if len(classes) == 2 and len(biases) == 2:
        top[classes[0]] = next(b for b in biases if b != top[classes[1]])
    return top


def stratified_split(rows: list[dict], fractions=(0.8, 0.1, 0.1), seed: int = 0) -> None:
    """Set ``split`` on every row: per (label, bias) group, rows sorted by path, permuted with
    ``seed`` and cut at the cumulative ``fractions`` (train, val, test)."""
    fractions = np.asarray(fractions, dtype=float)
    if len(fractions) != 3 or (fractions < 0).any() or fractions.sum() <= 0:
        raise ValueError(f"split_fractions must be three non-negative numbers, got {list(fractions)}")
    fractions = fractions / fractions.sum()
    rng = np.random.default_rng(seed)
    by_group: dict[tuple, list[dict]] = {}
    for r in sorted(rows, key=lambda r: r["path"]):
        by_group.setdefault((r["label"], r["bias"]), []).append(r)
    for key in sorted(by_group):
        group = by_group[key]
        order = rng.permutation(len(group))
        cuts = np.round(np.cumsum(fractions) * len(group)).astype(int)
        for rank, i in enumerate(order):
            group[i]["split"] = SPLITS[int(np.searchsorted(cuts, rank, side="right"))]


def _binary_names(attr: str, names) -> tuple[str, str]:
    """Names of an attribute's (-1, +1) values."""
    if names is not None:
        if len(names) != 2:
            raise ValueError(f"names for attribute {attr!r} must be two (for -1 and +1), got {names}")
        return str(names[0]), str(names[1])
    return BIAS_NAMES.get(attr, (f"not_{attr.lower()}", attr.lower()))


# ---------------------------------------------------------------------------------- Waterbirds
@ADAPTERS.register("waterbirds")
def waterbirds(source, check_files: bool = True) -> Manifest:
    """Waterbirds (Sagawa et al.) as distributed: ``metadata.csv`` beside the image folders.
    Classes landbird/waterbird (``y``), bias land/water (``place``), splits 0/1/2."""
    root = Path(source)
    path = _require(root / "metadata.csv")
    problems, rows = [], []
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in ("img_filename", "y", "split", "place") if c not in (reader.fieldnames or [])]
        if missing:
            raise ManifestError(str(path), [f"line 1: missing column(s) {missing} (header: {reader.fieldnames})"])
        for n, rec in enumerate(reader, start=2):
            bad = [f"field {k!r} is {rec[k]!r}, expected one of {sorted(ok)}" for k, ok in
                   (("y", {"0", "1"}), ("place", {"0", "1"}), ("split", set(SPLIT_CODES)))
                   if (rec[k] or "").strip() not in ok]
            if not (rec["img_filename"] or "").strip():
                bad.append("field 'img_filename' is empty")
            if bad:
                problems += [f"line {n}: {b}" for b in bad]
                continue
            rows.append({"path": rec["img_filename"].strip(), "label": ("landbird", "waterbird")[int(rec["y"])],
                         "bias": ("land", "water")[int(rec["place"])], "split": SPLIT_CODES[rec["split"].strip()],
                         "source": "real"})
    if problems:
        raise ManifestError(str(path), problems)
    card = DatasetCard("waterbirds", ["landbird", "waterbird"], ["land", "water"],
                       {"landbird": "land", "waterbird": "water"}, bias_name="place",
                       description="Waterbirds: CUB birds pasted on Places backgrounds")
    return _finish(rows, card, root, check_files, str(path))


# ---------------------------------------------------------------------------------- CelebA
def read_attribute_file(path: Path) -> tuple[list[str], dict[str, list[int]]]:
    """A CelebA-format attribute file: line 1 the image count, line 2 the attribute names, then
    one ``<image> v1 ... vK`` line per image with values -1 or 1. Returns (names, image → values)."""
    _require(path)
    lines = path.read_text().splitlines()
    problems = []
    if len(lines) < 2:
        raise ManifestError(str(path), ["expected a count line and a header line"])
    try:
        count = int(lines[0].strip())
    except ValueError:
        raise ManifestError(str(path), [f"line 1: expected the number of images, got {lines[0]!r}"]) from None
    names = lines[1].split()
    values: dict[str, list[int]] = {}
    for n, line in enumerate(lines[2:], start=3):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != len(names) + 1:
            problems.append(f"line {n}: expected an image name and {len(names)} values, got {len(parts)} fields")
            continue
        if any(v not in ("1", "-1") for v in parts[1:]):
            problems.append(f"line {n}: values must be -1 or 1, got {[v for v in parts[1:] if v not in ('1', '-1')][:3]}")
            continue
        if parts[0] in values:
            problems.append(f"line {n}: image {parts[0]!r} is listed twice")
            continue
        values[parts[0]] = [int(v) for v in parts[1:]]
    if not problems and len(values) != count:
        problems.append(f"line 1: says {count} images, the file lists {len(values)}")
    if problems:
        raise ManifestError(str(path), problems)
    return names, values


def read_partition_file(path: Path) -> dict[str, str]:
    """CelebA's ``list_eval_partition.txt``: ``<image> 0|1|2`` per line → image → split."""
    _require(path)
    out, problems = {}, []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2 or parts[1] not in SPLIT_CODES:
            problems.append(f"line {n}: expected '<image> 0|1|2', got {line!r}")
            continue
        out[parts[0]] = SPLIT_CODES[parts[1]]
    if problems:
        raise ManifestError(str(path), problems)
    return out


def _attribute_rows(attr_path: Path, image_dir: str, label: str, bias: str, label_names, bias_names):
    """One row per image of the attribute file (``_name``: the file's image name)."""
    names, values = read_attribute_file(attr_path)
    for attr in (label, bias):
        if attr not in names:
            raise ManifestError(str(attr_path), [f"line 2: no attribute {attr!r}; attributes: {names}"])
    if label == bias:
        raise ValueError(f"label and bias must be different attributes, both are {label!r}")
    li, bi = names.index(label), names.index(bias)
    lnames, bnames = _binary_names(label, label_names), _binary_names(bias, bias_names)
    rows = [{"path": f"{image_dir}/{name}", "label": lnames[(v[li] + 1) // 2], "bias": bnames[(v[bi] + 1) // 2],
             "source": "real", "_name": name} for name, v in values.items()]
    return rows, list(lnames), list(bnames)


def _celeba_card(name, rows, classes, biases, label, bias, majority_bias, description) -> DatasetCard:
    return DatasetCard(name, classes, biases, majority_bias or auto_majority(rows, classes, biases),
                       bias_name=bias, description=f"{description}; label attribute {label}, bias attribute {bias}")


@ADAPTERS.register("celeba")
def celeba(source, label: str = "Smiling", bias: str = "Male", image_dir: str = "img_align_celeba",
           attr_file: str = "list_attr_celeba.txt", partition_file: str = "list_eval_partition.txt",
           label_names=None, bias_names=None, majority_bias: dict | None = None,
           check_files: bool = True) -> Manifest:
    """CelebA with attribute ``label`` as the class and attribute ``bias`` as the bias (any two
    of the 40). Classes are named ``(not_<label>, <label>)`` unless ``label_names`` are given
    (Male: female/male). The majority bias of each class is read from the data unless given."""
    root = Path(source)
    partition = read_partition_file(root / partition_file)
    rows, classes, biases = _attribute_rows(root / attr_file, image_dir, label, bias, label_names, bias_names)
    missing = [r["_name"] for r in rows if r["_name"] not in partition]
    if missing:
        raise ManifestError(str(root / partition_file), [f"image {n!r} of {attr_file} has no split" for n in missing])
    for r in rows:
        r["split"] = partition[r.pop("_name")]
    card = _celeba_card("celeba", rows, classes, biases, label, bias, majority_bias, "CelebA")
    return _finish(rows, card, root, check_files, str(root / attr_file))


@ADAPTERS.register("celeba_hq")
def celeba_hq(source, label: str = "Smiling", bias: str = "Male", image_dir: str = "CelebA-HQ-img",
              attr_file: str = "CelebAMask-HQ-attribute-anno.txt",
              mapping_file: str = "CelebA-HQ-to-CelebA-mapping.txt", partition_file: str | None = None,
              split_seed: int = 0, split_fractions=(0.8, 0.1, 0.1), label_names=None, bias_names=None,
              majority_bias: dict | None = None, check_files: bool = True) -> Manifest:
    """CelebA-HQ as distributed in CelebAMask-HQ (the paper's dataset; default label Smiling,
    bias Male). CelebA-HQ has no split of its own: with ``partition_file`` (CelebA's
    ``list_eval_partition.txt``) each image takes its CelebA original's split through
    ``mapping_file``; otherwise a seeded stratified split (80/10/10 like the paper's code)."""
    root = Path(source)
    attr_path = root / attr_file
    rows, classes, biases = _attribute_rows(attr_path, image_dir, label, bias, label_names, bias_names)
    if partition_file:
        partition = read_partition_file(Path(partition_file) if Path(partition_file).is_absolute()
                                        else root / partition_file)
        to_orig = read_hq_mapping(root / mapping_file)
        problems = []
        for r in rows:
            idx = r["_name"].rsplit(".", 1)[0]
            orig = to_orig.get(idx)
            if orig is None or orig not in partition:
                problems.append(f"image {r['_name']!r}: " + ("not in the mapping file" if orig is None
                                                              else f"original {orig!r} has no split"))
            else:
                r["split"] = partition[orig]
        if problems:
            raise ManifestError(str(root / mapping_file), problems)
    else:
        stratified_split(rows, split_fractions, split_seed)
    for r in rows:
        r.pop("_name")
    card = _celeba_card("celeba_hq", rows, classes, biases, label, bias, majority_bias, "CelebA-HQ")
    return _finish(rows, card, root, check_files, str(attr_path))


def read_hq_mapping(path: Path) -> dict[str, str]:
    """``CelebA-HQ-to-CelebA-mapping.txt``: a header ``idx orig_idx orig_file``, then one line per
    HQ image → HQ index (as a string) → original CelebA file name."""
    _require(path)
    lines = path.read_text().splitlines()
    if not lines or lines[0].split() != ["idx", "orig_idx", "orig_file"]:
        raise ManifestError(str(path), [f"line 1: expected the header 'idx orig_idx orig_file', got {lines[:1]}"])
    out, problems = {}, []
    for n, line in enumerate(lines[1:], start=2):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 3 or not parts[0].isdigit():
            problems.append(f"line {n}: expected '<idx> <orig_idx> <orig_file>', got {line!r}")
            continue
        out[parts[0]] = parts[2]
    if problems:
        raise ManifestError(str(path), problems)
    return out


# ---------------------------------------------------------------------------------- UTKFace
UTK_NAME = re.compile(r"^(\d+)_(\d+)_(?:(\d+)_)?(\d+)\.jpg(?:\.chip\.jpg)?$", re.IGNORECASE)


@ADAPTERS.register("utkface")
def utkface(source, young=(0, 5), old=(20, 50), split_seed: int = 0, split_fractions=(0.8, 0.1, 0.1),
            majority_bias: dict | None = None, skip_malformed: bool = False, check_files: bool = True) -> Manifest:
    """UTKFace: every ``<age>_<gender>_<race>_<date>.jpg`` (or ``.jpg.chip.jpg``, the aligned and
    cropped faces) directly in ``source``. Y = gender (0 male, 1 female), B = age group: ``young``
    and ``old`` are inclusive age ranges (the paper: 0-5 and 20-50); other ages are left out.
    The three files of the distribution without a race field are read (race is not used). A name
    that does not parse is an error naming the file, unless ``skip_malformed``."""
    root = Path(source)
    _require(root, "UTKFace folder")
    problems, rows = [], []
    for f in sorted(p for p in root.iterdir() if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES)):
        m = UTK_NAME.match(f.name)
        if not m or m.group(2) not in ("0", "1"):
            if not skip_malformed:
                problems.append(f"file {f.name!r}: not '<age>_<gender 0|1>_<race>_<date>.jpg'")
            continue
        age = int(m.group(1))
        group = "young" if young[0] <= age <= young[1] else "old" if old[0] <= age <= old[1] else None
        if group is not None:
            rows.append({"path": f.name, "label": ("male", "female")[int(m.group(2))], "bias": group,
                         "source": "real"})
    if problems:
        raise ManifestError(str(root), problems)
    stratified_split(rows, split_fractions, split_seed)
    classes, biases = ["male", "female"], ["young", "old"]
    card = DatasetCard("utkface", classes, biases, majority_bias or auto_majority(rows, classes, biases),
                       bias_name="age", description=f"UTKFace; gender by age group young {list(young)} vs old {list(old)}")
    return _finish(rows, card, root, check_files, str(root))


# ---------------------------------------------------------------------------------- SpuCo Animals
SPUCO_LAYOUT = {  # folder → (class folder → class name, bias folder → bias value)
    "spuco_birds": ({"landbirds": "landbird", "waterbirds": "waterbird"}, {"land": "land-indoor", "water": "water-outdoor"}),
    "spuco_dogs": ({"small_dogs": "small_dog", "big_dogs": "big_dog"}, {"indoor": "land-indoor", "outdoor": "water-outdoor"}),
}


@ADAPTERS.register("spuco_animals")
def spuco_animals(source, check_files: bool = True) -> Manifest:
    """SpuCo Animals (the SpuCo package's layout): 4 classes, 8 groups. The bias is the
    background, coded so each class has two values: ``land-indoor`` is land for birds and indoors
    for dogs, ``water-outdoor`` water for birds and outdoors for dogs. Majorities: landbirds on
    land, waterbirds on water, small dogs indoors, big dogs outdoors."""
    root = Path(source)
    problems, rows = [], []
    for top, (class_dirs, bias_dirs) in SPUCO_LAYOUT.items():
        for split in SPLITS:
            for cdir, cname in class_dirs.items():
                for bdir, bvalue in bias_dirs.items():
                    folder = root / top / split / cdir / bdir
                    if not folder.is_dir():
                        problems.append(f"folder not found: {folder}")
                        continue
                    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
                    if not files:
                        problems.append(f"folder {folder}: no images")
                    rows += [{"path": p.relative_to(root).as_posix(), "label": cname, "bias": bvalue,
                              "split": split, "source": "real"} for p in files]
    if problems:
        raise ManifestError(str(root), problems)
    card = DatasetCard("spuco_animals", ["landbird", "waterbird", "small_dog", "big_dog"],
                       ["land-indoor", "water-outdoor"],
                       {"landbird": "land-indoor", "waterbird": "water-outdoor",
                        "small_dog": "land-indoor", "big_dog": "water-outdoor"}, bias_name="background",
                       description="SpuCo Animals: birds on land/water, dogs indoors/outdoors")
    return _finish(rows, card, root, check_files, str(root))
