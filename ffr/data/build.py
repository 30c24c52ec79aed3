"""What every built-in benchmark's builder shares: finding the data files shipped in installed
packages, writing files atomically, and the spec file that marks a build complete (so a folder
holding a complete build of the same spec is reused, and one of another spec is rebuilt).

A builder reads::

    out_dir, wanted, built = open_build(out_dir, SPEC_FILE, _FORMAT, spec)
    if built is not None:
        return built
    ...  # write the images and the manifest
    mark_complete(out_dir, SPEC_FILE, wanted)
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict
from pathlib import Path

from ffr.data.manifest import Manifest


class BuildSpec:
    """Mixin of the benchmarks' spec dataclasses: :meth:`to_dict` is what the spec file records."""

    def to_dict(self) -> dict:
        """The spec's fields as JSON values (tuples become lists, at any depth)."""
        return _lists(asdict(self))


def _lists(value):
    if isinstance(value, dict):
        return {k: _lists(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_lists(v) for v in value]
    return value


def package_file(package: str, *parts: str) -> Path:
    """A data file inside an installed package, found by path (never fetched)."""
    import importlib

    mod = importlib.import_module(package)
    path = Path(mod.__file__).parent.joinpath(*parts)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the benchmark needs the data files shipped with {package}")
    return path


def write_atomic(dest: Path, write) -> None:
    """``write(file)`` into a temp file, then rename: concurrent builders of the same benchmark (a
    parallel sweep) only ever see complete files, and they write identical bytes."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        write(f)
    os.replace(tmp, dest)


def _same_spec(path: Path, wanted: dict) -> bool:
    try:
        return json.loads(path.read_text()) == wanted
    except (OSError, json.JSONDecodeError):
        return False


def reuse_build(out_dir: Path, spec_file: str, wanted: dict) -> Manifest | None:
    """The manifest of a complete build of spec ``wanted`` under ``out_dir`` (its spec file, written
    last, says so), or None; a build of another spec is dropped first, so no stale image or stale
    marker stays."""
    spec_path = out_dir / spec_file
    if spec_path.is_file():
        if _same_spec(spec_path, wanted) and (out_dir / "manifest.csv").is_file():
            return Manifest.load(out_dir, check_files=False)
        spec_path.unlink()
        shutil.rmtree(out_dir / "images", ignore_errors=True)
    return None


def open_build(out_dir: str | os.PathLike, spec_file: str, fmt: str,
               spec: BuildSpec) -> tuple[Path, dict, Manifest | None]:
    """Start a build of ``spec`` (builder format ``fmt``) under ``out_dir``: returns the folder, the
    record its spec file will hold, and the manifest of a complete build of it already there (None:
    build it, then :func:`mark_complete`)."""
    out_dir = Path(out_dir)
    wanted = {"format": fmt, **spec.to_dict()}
    ours = _a_build(out_dir)
    built = reuse_build(out_dir, spec_file, wanted)
    if built is not None:
        return out_dir, wanted, built
    foreign = [name for name in ("manifest.csv", "card.json") if (out_dir / name).exists()]
    if foreign and not ours:
        raise ValueError(f"{out_dir}: holds a dataset ({', '.join(foreign)}) that no benchmark build made; building "
                         "the benchmark there would overwrite it — choose another folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{spec_file}{BUILDING}").touch()  # until mark_complete: an interrupted build is ours to finish
    return out_dir, wanted, None


BUILDING = ".building"


def _a_build(out_dir: Path) -> bool:
    """Whether ``out_dir`` holds a benchmark build, complete or interrupted: a spec file (a JSON
    record with a ``format``) or a build's marker."""
    if not out_dir.is_dir():
        return False
    if any(out_dir.glob(f"*_spec.json{BUILDING}")):
        return True
    for path in out_dir.glob("*_spec.json"):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and "format" in record:
            return True
    return False


def mark_complete(out_dir: Path, spec_file: str, wanted: dict) -> None:
    """Write the spec file, last of a build's files: it marks the build complete (and drops the
    marker :func:`open_build` left)."""
    write_atomic(out_dir / spec_file, lambda f: f.write((json.dumps(wanted, indent=2) + "\n").encode()))
    (out_dir / f"{spec_file}{BUILDING}").unlink(missing_ok=True)
