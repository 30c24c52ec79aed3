"""What a synthesis run leaves beside its images, and how shard runs are merged.

A run's record directory holds ``manifest.csv`` + ``card.json`` (the images), ``rejections.csv``
(every rejected attempt: group, index, attempt, seed, reason), ``synthesis.json`` (generator,
settings, filters, base seed, counts, shard) and ``contact_sheet.png`` (samples per group).
:func:`collect` merges the record directories of shard runs — e.g. the pods of a Kubeflow fan-out
over groups × shards — into one validated synthetic dataset.
"""

from __future__ import annotations

import csv
import filecmp
import json
import os
import shutil
from pathlib import Path
from typing import Sequence

from ffr.config import MAX_ATTEMPTS, SYNTHESIS_BATCH_SIZE
from ffr.paths import temp_beside
from ffr.data.manifest import CARD_FILE, MANIFEST_FILE, DatasetCard, Manifest, ManifestError, group_key
from ffr.synthesis.generation import SynthesisRun, image_relpath

REJECTIONS_FILE = "rejections.csv"
INFO_FILE = "synthesis.json"
CONTACT_SHEET_FILE = "contact_sheet.png"
REJECTION_FIELDS = ("group", "label", "bias", "index", "attempt", "seed", "reason")
_RUN_KEYS = ("generator", "settings", "filters", "base_seed", "split", "max_attempts", "block")


def shard_record_dir(out_dir: str | os.PathLike, shard: int, num_shards: int,
                     groups: Sequence[tuple[str, str]] | None = None) -> Path:
    """Where a shard run keeps its record inside ``out_dir``: ``shards/<groups|all>.<i>-of-<n>``,
    so shards (and group subsets) writing into one folder never overwrite each other's manifest."""
    tag = "+".join(group_key(*g) for g in groups) if groups else "all"
    return Path(out_dir) / "shards" / f"{tag}.{shard:03d}-of-{num_shards:03d}"


def default_record_dir(out_dir: str | os.PathLike, card: DatasetCard, counts: dict, shard: int = 0,
                       num_shards: int = 1) -> Path:
    """Where a run keeps its record: ``out_dir`` itself unsharded, else :func:`shard_record_dir`
    (named by the groups it renders when they are not all of the card's)."""
    if num_shards == 1:
        return Path(out_dir)
    subset = None if set(counts) == set(card.groups) else [g for g in card.groups if g in counts]
    return shard_record_dir(out_dir, shard, num_shards, subset)


def synthesize_dataset(backend: str, card: DatasetCard, counts: dict[tuple[str, str], int],
                       out_dir: str | os.PathLike, backend_options: dict | None = None, base_seed: int = 0,
                       shard: int = 0, num_shards: int = 1, batch_size: int = SYNTHESIS_BATCH_SIZE,
                       filters: Sequence = (), max_attempts: int = MAX_ATTEMPTS, split: str = "train", progress: bool = False,
                       record_dir: str | os.PathLike | None = None) -> tuple[SynthesisRun, Path]:
    """The one entry point behind ``ffr synthesize`` (and the pipeline's synthesis step): build the
    backend, render this shard's images into ``out_dir`` and save the run's record in ``record_dir``
    (default: ``out_dir`` itself for an unsharded run, else :func:`shard_record_dir`). Returns the
    run and the record directory."""
    from ffr.synthesis.generation import create_backend, run_synthesis

    impl = create_backend(backend, card, **(backend_options or {}))
    run = run_synthesis(impl, card, counts, out_dir, base_seed=base_seed, batch_size=batch_size, split=split,
                        progress=progress, shard=shard, num_shards=num_shards, filters=filters,
                        max_attempts=max_attempts)
    if record_dir is None:
        record_dir = default_record_dir(out_dir, card, counts, shard, num_shards)
    save_run(run, record_dir, {"backend": backend, "backend_options": dict(backend_options or {})})
    return run, Path(record_dir)


def save_run(run: SynthesisRun, directory: str | os.PathLike, extra_info: dict | None = None,
             contact_sheet_per_group: int = 8) -> Path:
    """Write a run's manifest, card, rejections, info and contact sheet into ``directory``."""
    directory = Path(directory)
    run.manifest.save(directory)
    write_rejections(run.rejections, directory / REJECTIONS_FILE)
    info = {**run.info, **(extra_info or {})}
    (directory / INFO_FILE).write_text(json.dumps(info, indent=2, sort_keys=True, default=str) + "\n")
    contact_sheet(run.manifest, directory / CONTACT_SHEET_FILE, per_group=contact_sheet_per_group)
    return directory


def write_rejections(rejections: list[dict], path: Path) -> None:
    """Rejected attempts as CSV (header only when there were none)."""
    tmp = temp_beside(path)
    with tmp.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=REJECTION_FIELDS, extrasaction="ignore")
        w.writeheader()
        w.writerows(rejections)
    os.replace(tmp, path)


def read_rejections(path: Path) -> list[dict]:
    """Rows of a rejections file (an empty list when the file is absent)."""
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        for k in ("index", "attempt", "seed"):
            r[k] = int(r[k])
    return rows


def contact_sheet(manifest: Manifest, path: str | os.PathLike, per_group: int = 8, thumb: int = 64) -> Path:
    """A PNG grid: one row per group of the card (its name and image count on the left), the group's
    first ``per_group`` images (in path order) as thumbnails."""
    from PIL import Image, ImageDraw, ImageFont, ImageOps

    from ffr.data.loading import to_rgb

    font = ImageFont.load_default()
    frame = manifest.frame
    groups = manifest.card.groups
    names = [f"{group_key(l, b)} ({int(((frame['label'] == l) & (frame['bias'] == b)).sum())})" for l, b in groups]
    label_w = 12 + max(int(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(n, font=font)) for n in names)
    sheet = Image.new("RGB", (label_w + per_group * (thumb + 4) + 4, len(groups) * (thumb + 4) + 4), "white")
    draw = ImageDraw.Draw(sheet)
    for row, ((label, bias), name) in enumerate(zip(groups, names)):
        y = 4 + row * (thumb + 4)
        draw.text((6, y + thumb // 2), name, fill="black", font=font, anchor="lm")
        paths = sorted(frame.loc[(frame["label"] == label) & (frame["bias"] == bias), "path"])[:per_group]
        for col, rel in enumerate(paths):
            with Image.open(manifest.root / rel) as im:
                im = ImageOps.contain(to_rgb(im), (thumb, thumb))  # small images are enlarged too
                sheet.paste(im, (label_w + col * (thumb + 4) + (thumb - im.width) // 2, y + (thumb - im.height) // 2))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path


def collect(record_dirs: Sequence[str | os.PathLike], out_dir: str | os.PathLike) -> Manifest:
    """Merge shard runs into one synthetic dataset in ``out_dir`` and return its manifest.

    Checks that the runs agree (generator, settings, filters, base seed, split, card) and that, for
    every group, the shards covering it are exactly ``0 … n-1`` of one ``num_shards`` with one count;
    images living elsewhere (another pod's output) are copied in. The merged manifest is validated
    in full (every image decodes), then written with its rejections, info and contact sheet.
    """
    if not record_dirs:
        raise ValueError("collect needs at least one shard record directory")
    out_dir = Path(out_dir)
    problems: list[str] = []
    runs = []
    for d in map(Path, record_dirs):
        info_path = d / INFO_FILE
        if not info_path.is_file():
            problems.append(f"{d}: no {INFO_FILE} (not the record directory of a synthesis run)")
            continue
        # Paths only here: the merged manifest is validated in full (every image decoded) below.
        runs.append((d, json.loads(info_path.read_text()), Manifest.load(d, check_files=False)))
    if problems:
        raise ManifestError("collect", problems)
    d0, info0, m0 = runs[0]
    for d, info, m in runs[1:]:
        for k in _RUN_KEYS:
            if info.get(k) != info0.get(k):
                problems.append(f"{d}: {k} {info.get(k)!r} differs from {info0.get(k)!r} in {d0}")
        if (m.card.classes, m.card.bias_values) != (m0.card.classes, m0.card.bias_values):
            problems.append(f"{d}: card {m.card.name!r} differs from card {m0.card.name!r} in {d0}")
    coverage: dict[str, dict] = {}
    for d, info, _ in runs:
        for g, n in info["counts"].items():
            c = coverage.setdefault(g, {"n": n, "num_shards": info["num_shards"], "shards": {}, "where": d})
            if (n, info["num_shards"]) != (c["n"], c["num_shards"]):
                problems.append(f"{d}: group {g} has count {n} of {info['num_shards']} shard(s), but {c['where']} "
                                f"has count {c['n']} of {c['num_shards']}")
            elif info["shard"] in c["shards"]:
                problems.append(f"{d}: group {g} shard {info['shard']} is also in {c['shards'][info['shard']]}")
            else:
                c["shards"][info["shard"]] = d
    for g, c in coverage.items():
        missing = sorted(set(range(c["num_shards"])) - set(c["shards"]))
        if missing:
            problems.append(f"group {g}: shard(s) {missing} of {c['num_shards']} missing")
    if problems:
        raise ManifestError("collect", problems)

    frames, rejections = [], []
    for d, info, m in runs:
        for rel, src in zip(m.frame["path"], m.abs_paths()):
            dest = out_dir / rel
            if dest.resolve() != src.resolve():
                if dest.is_file() and not filecmp.cmp(src, dest, shallow=False):
                    problems.append(f"{dest} exists with other content than {src}")
                    continue
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dest)
        frames.append(m.frame)
        rejections += read_rejections(d / REJECTIONS_FILE)
    if problems:
        raise ManifestError("collect", problems)
    import pandas as pd

    card = DatasetCard.from_dict({**m0.card.to_dict(), "root": "."})
    frame = pd.concat(frames, ignore_index=True)
    # The order of a single run: groups in card order, then index.
    order = [card.group_index(l, b) for l, b in zip(frame["label"], frame["bias"])]
    frame = frame.assign(_group=order).sort_values(["_group", "path"], kind="stable").drop(columns="_group")
    merged = Manifest(frame, card, out_dir)
    keys = {group_key(l, b): (l, b) for l, b in card.groups}
    expected = {image_relpath(*keys[g], i) for g, c in coverage.items() for i in range(int(c["n"]))}
    if set(frame["path"]) != expected:
        extra, lost = sorted(set(frame["path"]) - expected), sorted(expected - set(frame["path"]))
        raise ManifestError("collect", [f"image {p} missing from every shard manifest" for p in lost[:20]]
                            + [f"image {p} is not part of any group's count" for p in extra[:20]])
    merged.save(out_dir)
    merged = Manifest.load(out_dir / MANIFEST_FILE, card=out_dir / CARD_FILE)  # full validation
    rejections.sort(key=lambda r: (r["group"], r["index"], r["attempt"]))
    info = {k: info0.get(k) for k in _RUN_KEYS}
    info.update(counts={g: c["n"] for g, c in coverage.items()}, shards=[str(d) for d, _, _ in runs],
                images=len(merged), rejected=len(rejections))
    write_rejections(rejections, out_dir / REJECTIONS_FILE)
    (out_dir / INFO_FILE).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    contact_sheet(merged, out_dir / CONTACT_SHEET_FILE)
    return merged

