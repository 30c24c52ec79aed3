"""The ``folder`` synthesis backend: import images generated elsewhere.

``source`` is either a folder with one sub-folder per group, named ``<label>_<bias>`` (the names
``ffr`` itself writes), or a dataset directory / ``manifest.csv`` whose rows give each image's group
(and, when present, its prompt, seed and generator, which are carried over). Within a group the
images are taken in path order: image ``index`` is the group's file number ``index``, and a
replacement for a filtered-out image (attempt ``a``) is file number ``index + a × count`` — so the
selection is as deterministic and shardable as rendering.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from ffr.data.manifest import IMAGE_SUFFIXES, MANIFEST_FILE, DatasetCard, Manifest, group_key
from ffr.synthesis.generation import SYNTHESIS_BACKENDS, ImageRequest, SynthesisError


@SYNTHESIS_BACKENDS.register("folder")
class FolderBackend:
    """Images of each group from a folder per group or from a manifest (see the module docstring).
    ``generator`` names the source in manifest rows that do not carry their own."""

    batch_invariant = True  # files are read, not computed: no batch-dependent rounding

    def __init__(self, card: DatasetCard, source: str, generator: str | None = None, **opts):
        if opts:
            raise TypeError(f"unknown option(s) for the folder backend: {sorted(opts)}")
        from ffr.paths import local_path

        src = local_path(source)  # an s3:// prefix is fetched into the local cache
        self.card = card
        self.files: dict[tuple[str, str], list[Path]] = {g: [] for g in card.groups}
        self.rows: dict[Path, dict] = {}
        if src.is_file() or (src / MANIFEST_FILE).is_file():
            m = Manifest.load(src)
            for path, row in zip(m.abs_paths(), m.frame.to_dict("records")):
                if (row["label"], row["bias"]) in self.files:
                    self.files[(row["label"], row["bias"])].append(path)
                    self.rows[path] = {k: row[k] for k in ("prompt", "seed", "generator")
                                       if row.get(k) is not None and str(row[k]) not in ("", "<NA>")}
            for files in self.files.values():
                files.sort()
        elif src.is_dir():
            for (label, bias) in card.groups:
                d = src / group_key(label, bias)
                if d.is_dir():
                    self.files[(label, bias)] = sorted(p for p in d.iterdir()
                                                       if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        else:
            raise FileNotFoundError(f"folder backend: source not found: {src}")
        self.source = src
        self.generator = generator or f"folder:{src.resolve().name}"
        self.counts: dict[tuple[str, str], int] = {}

    def reserve(self, counts: dict[tuple[str, str], int]) -> None:
        """Learn how many images each group needs (the stride between replacement attempts) and
        fail early, naming the group, when a source holds too few."""
        self.counts = {g: int(n) for g, n in counts.items()}
        short = [f"group {group_key(*g)}: {n} requested, {len(self.files.get(g, []))} found"
                 for g, n in self.counts.items() if n > len(self.files.get(g, []))]
        if short:
            raise SynthesisError(f"folder backend: {self.source} has too few images: " + "; ".join(short))

    def _file(self, request: ImageRequest) -> Path:
        files = self.files.get((request.label, request.bias), [])
        k = request.index + request.attempt * self.counts.get((request.label, request.bias), len(files))
        if k >= len(files):
            raise SynthesisError(f"folder backend: group {request.group} has {len(files)} images in {self.source}; "
                                 f"image {request.index} attempt {request.attempt} needs file number {k}")
        return files[k]

    def prompt_for(self, request: ImageRequest) -> str | None:
        """The prompt the source manifest gives for the file, if any."""
        return self.rows.get(self._file(request), {}).get("prompt")

    def row_for(self, request: ImageRequest) -> dict:
        """Manifest fields carried over from the source: its seed and generator when it has them
        (a folder of files has no seed: the column is left empty)."""
        row = self.rows.get(self._file(request), {})
        return {"seed": int(row["seed"]) if "seed" in row else None, "generator": row.get("generator", self.generator)}

    def generate(self, requests: list[ImageRequest]) -> list[Image.Image]:
        """The files of the requests, decoded as RGB."""
        from ffr.data.loading import to_rgb

        out = []
        for r in requests:
            with Image.open(self._file(r)) as im:
                out.append(to_rgb(im))
        return out
