"""The one data type: the manifest — a table with one row per image — and its dataset card.

A dataset directory holds ``manifest.csv`` and ``card.json``. Row paths are relative to the
dataset root (the card's ``root``, itself relative to the card's folder; ``.`` by default). Every
adapter produces a manifest and every later step consumes one.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from ffr.paths import data_path_problem

REQUIRED_COLUMNS = ("path", "label", "bias", "split", "source")
SYNTHETIC_COLUMNS = ("prompt", "seed", "generator")
COLUMNS = REQUIRED_COLUMNS + SYNTHETIC_COLUMNS
SPLITS = ("train", "val", "test")
SOURCES = ("real", "synthetic")
MANIFEST_FILE = "manifest.csv"
CARD_FILE = "card.json"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


class ManifestError(ValueError):
    """A manifest (or its card) is invalid. ``problems`` lists every problem found, one per line."""

    def __init__(self, source: str, problems: Sequence[str]):
        self.source = source
        self.problems = list(problems)
        shown = self.problems[:50]
        more = len(self.problems) - len(shown)
        lines = [f"{source}: {len(self.problems)} problem(s):"] + [f"  - {p}" for p in shown]
        if more:
            lines.append(f"  ... and {more} more")
        super().__init__("\n".join(lines))


def group_key(label: str, bias: str) -> str:
    """The stable name of group (label, bias) used in metric names: ``<label>_<bias>``."""
    return f"{label}_{bias}"


@dataclass
class DatasetCard:
    """What a manifest's labels mean: the classes, the bias values, and which bias value is the
    majority (spurious) one in each class.

    Groups are every (class, bias value) pair, in class-major order.
    """

    name: str
    classes: list[str]
    bias_values: list[str]
    majority_bias: dict[str, str] = field(default_factory=dict)
    bias_name: str = "bias"
    description: str = ""
    root: str = "."

    def __post_init__(self) -> None:
        self.classes = [str(c) for c in self.classes]
        self.bias_values = [str(b) for b in self.bias_values]
        if not self.majority_bias:
            # Class i's majority is bias value i (mod the number of bias values): the usual
            # "diagonal" correlation (landbirds on land, waterbirds on water).
            self.majority_bias = {
                c: self.bias_values[i % len(self.bias_values)] for i, c in enumerate(self.classes)
            }
        self.majority_bias = {str(k): str(v) for k, v in self.majority_bias.items()}
        problems = self.problems()
        if problems:
            raise ManifestError(f"dataset card {self.name!r}", problems)

    def problems(self) -> list[str]:
        """Every inconsistency of the card itself."""
        out = []
        if len(self.classes) < 2:
            out.append(f"field 'classes' needs at least 2 classes, got {self.classes}")
        if len(self.bias_values) < 1:
            out.append("field 'bias_values' is empty")
        for name, values in (("classes", self.classes), ("bias_values", self.bias_values)):
            dup = sorted({v for v in values if values.count(v) > 1})
            if dup:
                out.append(f"field {name!r} repeats {dup}")
        for c, b in self.majority_bias.items():
            if c not in self.classes:
                out.append(f"field 'majority_bias' names class {c!r}, which is not in 'classes'")
            if b not in self.bias_values:
                out.append(f"field 'majority_bias' maps {c!r} to {b!r}, which is not in 'bias_values'")
        for c in self.classes:
            if c not in self.majority_bias:
                out.append(f"field 'majority_bias' has no entry for class {c!r}")
        for name, values in (("classes", self.classes), ("bias_values", self.bias_values)):
            out += [f"field {name!r}: {v!r} {why}" for v in values for why in [name_problem(v)] if why]
        if os.path.isabs(self.root) or str(self.root).startswith("~") or "\x00" in str(self.root):
            out.append(f"field 'root' must be a path relative to the card's folder, got {self.root!r}")
        return out

    @property
    def groups(self) -> list[tuple[str, str]]:
        """All (label, bias) groups, class-major."""
        return [(c, b) for c in self.classes for b in self.bias_values]

    @property
    def group_keys(self) -> list[str]:
        return [group_key(c, b) for c, b in self.groups]

    @property
    def n_groups(self) -> int:
        return len(self.classes) * len(self.bias_values)

    def group_index(self, label: str, bias: str) -> int:
        return self.classes.index(label) * len(self.bias_values) + self.bias_values.index(bias)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict, source: str = "dataset card") -> "DatasetCard":
        required = ("name", "classes", "bias_values")
        missing = [k for k in required if k not in data]
        if missing:
            raise ManifestError(source, [f"missing field {k!r}" for k in missing])
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ManifestError(source, [f"unknown field {k!r} (known: {sorted(known)})" for k in unknown])
        try:
            return cls(**data)
        except ManifestError as e:
            raise ManifestError(source, e.problems) from None

    def save(self, path: str | os.PathLike) -> None:
        from ffr.paths import write_atomic

        write_atomic(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "DatasetCard":
        """Read a card.json (a local path or an ``s3://`` URI)."""
        from ffr.paths import local_path

        path = local_path(path)
        if not path.is_file():
            raise FileNotFoundError(f"dataset card not found: {path}")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ManifestError(str(path), [f"not valid JSON: {e}"]) from None
        return cls.from_dict(data, source=str(path))


def _empty_frame() -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype="object") for c in COLUMNS})


class Manifest:
    """A table of images (``frame``), the card that gives its labels meaning, and the root
    directory its relative paths are resolved against."""

    def __init__(self, frame: pd.DataFrame, card: DatasetCard, root: str | os.PathLike):
        frame = frame.copy()
        for col in COLUMNS:
            if col not in frame.columns:
                frame[col] = pd.NA
        for col in ("path", "label", "bias", "split", "source", "prompt", "generator"):
            frame[col] = frame[col].astype("object").where(frame[col].notna(), None)
            frame[col] = frame[col].map(lambda v: v if v is None else str(v))
        frame["seed"] = pd.to_numeric(frame["seed"], errors="coerce").astype("Int64")
        self.frame = frame.reset_index(drop=True)
        self.card = card
        self.root = Path(root).resolve()

    # ------------------------------------------------------------------ construction / I/O
    @classmethod
    def from_records(cls, records: Iterable[dict], card: DatasetCard, root) -> "Manifest":
        """A manifest from row dicts (missing optional columns become empty)."""
        rows = list(records)
        frame = pd.DataFrame(rows) if rows else _empty_frame()
        return cls(frame, card, root)

    @classmethod
    def load(cls, path: str | os.PathLike, card: DatasetCard | str | None = None,
             validate: bool = True, check_files: bool | str = True) -> "Manifest":
        """Load ``manifest.csv`` (or a dataset directory holding one) and its card.

        The card is ``card.json`` beside the CSV unless given. With ``validate`` (the default)
        every problem is reported at once in a :class:`ManifestError` naming the file and rows.
        ``path`` (and ``card``) may be ``s3://`` URIs: the dataset is fetched into a local cache.
        """
        from ffr.paths import local_dataset

        path = local_dataset(path)
        if path.is_dir():
            path = path / MANIFEST_FILE
        if not path.is_file():
            raise FileNotFoundError(f"manifest not found: {path}")
        if card is None:
            card = DatasetCard.load(path.parent / CARD_FILE)
        elif not isinstance(card, DatasetCard):
            card = DatasetCard.load(card)
        raw = path.read_bytes()
        try:  # checked here, not by pandas: its error counts bytes from the start of a chunk, not the file
            raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ManifestError(str(path), [f"not UTF-8 text (line {_line_at(raw, e.start)}, byte "
                                            f"{e.start} of the file: {e.reason})"]) from None
        if b"\x00" in raw:
            at = raw.index(b"\x00")
            raise ManifestError(str(path), [f"line {_line_at(raw, at)}: a NUL byte (byte {at} of the "
                                            "file): no path or name may contain one"])
        try:
            frame = pd.read_csv(io.BytesIO(raw), dtype=str, keep_default_na=False, na_values=[""])
        except pd.errors.EmptyDataError:
            raise ManifestError(str(path), ["the file is empty (no header row)"]) from None
        except pd.errors.ParserError as e:
            raise ManifestError(str(path), [f"not a valid CSV: {e}"]) from None
        except UnicodeDecodeError as e:
            raise ManifestError(str(path), [f"not UTF-8 text (byte {e.start}: {e.reason})"]) from None
        missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
        if missing:
            raise ManifestError(str(path), [
                f"missing column {c!r} (columns present: {list(frame.columns)})" for c in missing])
        if validate:
            problems = validate_frame(frame, card, _root_for(path.parent, card), check_files, card_folder=path.parent)
            if problems:
                raise ManifestError(str(path), problems)
        return cls(frame, card, _root_for(path.parent, card))

    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``manifest.csv`` and ``card.json`` into ``directory``; the card's ``root`` is
        rewritten so the row paths still resolve. Returns the CSV path."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        card = DatasetCard.from_dict({**self.card.to_dict(), "root": os.path.relpath(self.root, directory.resolve())})
        csv_path = directory / MANIFEST_FILE
        from ffr.paths import temp_beside

        tmp = temp_beside(csv_path)
        try:
            self.frame[list(COLUMNS)].to_csv(tmp, index=False)
            os.replace(tmp, csv_path)
        finally:
            tmp.unlink(missing_ok=True)  # a failed write (a full disk) leaves no temporary file
        card.save(directory / CARD_FILE)
        return csv_path

    # ------------------------------------------------------------------ views
    def __len__(self) -> int:
        return len(self.frame)

    def __repr__(self) -> str:
        return f"Manifest({self.card.name!r}, {len(self)} rows, root={str(self.root)!r})"

    def _with(self, frame: pd.DataFrame) -> "Manifest":
        return Manifest(frame, self.card, self.root)

    def select(self, split: str | Sequence[str] | None = None,
               source: str | None = None) -> "Manifest":
        """Rows of the given split(s) and/or source."""
        mask = pd.Series(True, index=self.frame.index)
        if split is not None:
            splits = [split] if isinstance(split, str) else list(split)
            mask &= self.frame["split"].isin(splits)
        if source is not None:
            mask &= self.frame["source"] == source
        return self._with(self.frame[mask])

    def abs_paths(self) -> list[Path]:
        return [self.root / p for p in self.frame["path"]]

    def labels(self) -> np.ndarray:
        """Class indices (into ``card.classes``)."""
        idx = {c: i for i, c in enumerate(self.card.classes)}
        return self.frame["label"].map(idx).to_numpy(dtype=np.int64, copy=True)

    def biases(self) -> np.ndarray:
        """Bias-value indices (into ``card.bias_values``)."""
        idx = {b: i for i, b in enumerate(self.card.bias_values)}
        return self.frame["bias"].map(idx).to_numpy(dtype=np.int64, copy=True)

    def groups(self) -> np.ndarray:
        """Group indices: label * n_bias + bias."""
        return self.labels() * len(self.card.bias_values) + self.biases()

    def is_synthetic(self) -> np.ndarray:
        return (self.frame["source"] == "synthetic").to_numpy(copy=True)

    def group_counts(self) -> dict[tuple[str, str], int]:
        """Rows per (label, bias) group, every group of the card present (0 when empty)."""
        counts = self.frame.groupby(["label", "bias"]).size().to_dict()
        return {g: int(counts.get(g, 0)) for g in self.card.groups}

    def digest(self) -> str:
        """A content digest of the table and card (sha256 of their canonical form), stable
        across row order. Used to key caches and to record lineage."""
        frame = self.frame[list(COLUMNS)].sort_values("path", kind="stable")
        buf = io.StringIO()
        frame.to_csv(buf, index=False)
        h = hashlib.sha256(buf.getvalue().encode())
        card = {k: v for k, v in self.card.to_dict().items() if k != "root"}
        h.update(json.dumps(card, sort_keys=True).encode())
        return h.hexdigest()

    def files_fingerprint(self, content: bool = False, times: bool = True) -> str:
        """A digest of the image files themselves: each file's size and (``times``) modification
        time, and with ``content`` its bytes (slow: every file read). The decoded-image cache keys
        on it, so images replaced in place are never served from an old cache; a grid's cells key
        on the sizes (``times=False``: a regenerated, byte-identical dataset keeps its cells)."""
        h = hashlib.sha256()
        for rel, full in sorted(zip(self.frame["path"], self.abs_paths())):
            try:
                st = full.stat()
                h.update(f"{rel}|{st.st_size}|{st.st_mtime_ns if times else ''}|".encode())
                if content:
                    h.update(hashlib.sha256(full.read_bytes()).digest())
            except OSError:
                h.update(f"{rel}|missing|".encode())
        return h.hexdigest()

    def rebase(self, new_root: str | os.PathLike) -> "Manifest":
        """The same images with paths rewritten relative to ``new_root`` (which must contain them)."""
        new_root = Path(new_root).resolve()
        frame = self.frame.copy()
        frame["path"] = [os.path.relpath(self.root / p, new_root) for p in frame["path"]]
        return Manifest(frame, self.card, new_root)

    @staticmethod
    def concat(manifests: Sequence["Manifest"]) -> "Manifest":
        """Rows of several manifests with the same card, rebased onto their common root."""
        if not manifests:
            raise ValueError("concat needs at least one manifest")
        card = manifests[0].card
        for m in manifests[1:]:
            if (m.card.classes, m.card.bias_values) != (card.classes, card.bias_values):
                raise ValueError(f"cannot concatenate manifests of different cards: {card.name!r} and {m.card.name!r}")
        root = Path(os.path.commonpath([str(m.root) for m in manifests]))
        frames = [m.rebase(root).frame for m in manifests]
        return Manifest(pd.concat(frames, ignore_index=True), card, root)


def _line_at(raw: bytes, offset: int) -> int:
    """The 1-based line of byte ``offset`` of ``raw``."""
    return raw.count(b"\n", 0, offset) + 1


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot be a class or bias value, or None: the names become folder names of
    synthetic images, so no path separator, no NUL or control character, no leading dot (``..``)."""
    if not name or not name.strip():
        return "is empty"
    if "/" in name or "\\" in name:
        return "contains a path separator"
    if any(ord(ch) < 32 for ch in name):
        return "contains a NUL or control character"
    if name.startswith("."):
        return "starts with a dot"
    return None


def _root_for(folder: Path, card: DatasetCard) -> Path:
    """The card's root, or a refusal naming the card file (:func:`ffr.paths.data_path_problem`)."""
    root = (folder / card.root).resolve()
    why = data_path_problem(root, folder.resolve())
    if why:
        raise ManifestError(str(folder / CARD_FILE), [f"field 'root' {card.root!r} resolves to {root}, {why}"])
    return root


def _line(i: int) -> str:
    # CSV line number of frame row i: line 1 is the header.
    return f"line {i + 2}"


def validate_frame(frame: pd.DataFrame, card: DatasetCard, root: Path,
                   check_files: bool | str = True, card_folder: Path | None = None) -> list[str]:
    """Every problem of a manifest table, each naming the CSV line, the field and the value.

    Checks: required columns; labels and bias values known to the card; split and source
    values; synthetic rows carry a generator; paths stay inside the root; no duplicate path;
    and, with ``check_files``, that every image exists and decodes, and that no image (by
    content) appears in two splits. Given ``card_folder`` and a root outside it, no image may lie in
    a hidden folder outside it either (:func:`ffr.paths.data_path_problem`).

    ``check_files="decode"`` decodes every pixel too (slower; what ``ffr data validate`` does: a
    truncated JPEG passes the structural check). Training decodes every image anyway and names a
    file that fails (:class:`ffr.data.loading.ImageDecodeError`).
    """
    problems: list[str] = []
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        return [f"missing column {c!r} (columns present: {list(frame.columns)})" for c in missing]
    classes, biases = set(card.classes), set(card.bias_values)
    root = Path(root).resolve()
    outside = card_folder is not None and not (root == Path(card_folder).resolve() or Path(card_folder).resolve() in root.parents)
    seen_path: dict[str, tuple[int, str]] = {}
    for i, row in enumerate(frame.itertuples(index=False)):
        r = row._asdict()
        where = _line(i)
        path = r.get("path")
        for col in REQUIRED_COLUMNS:
            v = r.get(col)
            if v is None or (isinstance(v, float) and np.isnan(v)) or str(v).strip() == "":
                problems.append(f"{where}: field {col!r} is empty")
        if r.get("label") is not None and str(r["label"]) not in classes and str(r["label"]).strip():
            problems.append(f"{where}: label {r['label']!r} is not a class of card {card.name!r} (classes: {card.classes})")
        if r.get("bias") is not None and str(r["bias"]) not in biases and str(r["bias"]).strip():
            problems.append(f"{where}: bias {r['bias']!r} is not a bias value of card {card.name!r} (values: {card.bias_values})")
        if r.get("split") and str(r["split"]) not in SPLITS:
            problems.append(f"{where}: split {r['split']!r} is not one of {list(SPLITS)}")
        if r.get("source") and str(r["source"]) not in SOURCES:
            problems.append(f"{where}: source {r['source']!r} is not one of {list(SOURCES)}")
        seed = r.get("seed")
        if seed is not None and not (isinstance(seed, float) and np.isnan(seed)) and str(seed).strip() not in ("", "<NA>"):
            try:
                ok = 0 <= int(str(seed).strip()) < 2 ** 63
            except ValueError:
                ok = False
            if not ok:
                problems.append(f"{where}: field 'seed' {seed!r} is not an integer in [0, 2**63)")
        if r.get("source") == "synthetic":
            gen = r.get("generator")
            if gen is None or (isinstance(gen, float) and np.isnan(gen)) or not str(gen).strip():
                problems.append(f"{where}: synthetic row has no 'generator'")
        if not path or not isinstance(path, str):
            continue
        if os.path.isabs(path) or "://" in path:
            problems.append(f"{where}: path {path!r} must be relative to the dataset root {root}")
            continue
        full = (root / path).resolve()
        if full != root and root not in full.parents:
            problems.append(f"{where}: path {path!r} escapes the dataset root {root}")
            continue
        if outside and "/." in "/" + path.replace(os.sep, "/"):
            why = data_path_problem(full, Path(card_folder).resolve())
            if why:
                problems.append(f"{where}: path {path!r} resolves to {full}, {why}")
                continue
        split = str(r.get("split"))
        key = os.path.normpath(path).replace(os.sep, "/")  # ./x.png and x.png are one file
        if key in seen_path:
            j, other_split = seen_path[key]
            if other_split != split:
                problems.append(f"{where}: image {path!r} is in split {split!r} and in split {other_split!r} ({_line(j)})")
            else:
                problems.append(f"{where}: duplicate path {path!r} (first at {_line(j)})")
            continue
        seen_path[key] = (i, split)
    if check_files:
        problems.extend(_check_files(frame, root, seen_path, decode=check_files == "decode"))
    return problems


def _check_files(frame: pd.DataFrame, root: Path, paths: dict[str, tuple[int, str]],
                 decode: bool = False) -> list[str]:
    """Every missing or unreadable image, and images whose bytes appear in two splits."""
    from PIL import Image, UnidentifiedImageError

    problems = []
    by_hash: dict[str, tuple[int, str, str]] = {}
    for path, (i, split) in paths.items():
        full = root / path
        if not full.is_file():
            problems.append(f"{_line(i)}: image file not found: {full}")
            continue
        try:
            data = full.read_bytes()
            with Image.open(io.BytesIO(data)) as im:
                im.verify()  # the container's structure ...
            if decode:       # ... and every pixel (`ffr data validate`): a truncated JPEG passes verify()
                with Image.open(io.BytesIO(data)) as im:
                    im.load()
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            problems.append(f"{_line(i)}: image file is unreadable: {full} ({type(e).__name__}: {e})")
            continue
        digest = hashlib.md5(data).hexdigest()
        if digest in by_hash:
            j, other_path, other_split = by_hash[digest]
            if other_split != split:
                problems.append(
                    f"{_line(i)}: image {path!r} (split {split!r}) has the same content as "
                    f"{other_path!r} (split {other_split!r}, {_line(j)}): an image is in two splits")
        else:
            by_hash[digest] = (i, path, split)
    return problems


def validate(manifest: Manifest, check_files: bool = True, source: str | None = None) -> None:
    """Raise :class:`ManifestError` listing every problem of ``manifest``; return quietly if none."""
    problems = validate_frame(manifest.frame, manifest.card, manifest.root, check_files)
    if problems:
        raise ManifestError(source or repr(manifest), problems)
