"""The synthesis-backend interface, per-image seeds, and the resumable, shardable generation loop.

Every synthetic image's seed (and prompt) derives from (base seed, group, index) alone — and, when a
filter rejected earlier attempts, the attempt number — so the same request always yields the same
image, whatever order, batch or shard produced it. Each accepted PNG carries its own record (seed,
attempt, prompt, generator, settings, filters and the rejected attempts before it) in a text chunk:
a rerun verifies finished files against it and renders only what is missing.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import deque
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol, Sequence

from ffr.data.manifest import DatasetCard, Manifest, group_key
from ffr.config import MAX_ATTEMPTS, SYNTHESIS_BATCH_SIZE
from ffr.plugins import Registry
from ffr.rules import check, refuse, require

SYNTHESIS_BACKENDS: Registry = Registry("synthesis backend")
# Images one run (one shard) plans and renders at most: its plan is held in memory before the first
# image is written, and a run this long (days with Stable Diffusion) should be sharded anyway.
MAX_IMAGES_PER_RUN = 500_000
META_KEY = "ffr"            # PNG text chunk holding an image's record
REJECT_INFO = "ffr_reject"  # a backend may set ``image.info[REJECT_INFO] = reason`` (e.g. NSFW-blanked)


class SynthesisError(ValueError):
    """Generation cannot go on: the attempt cap was hit, the output folder holds another run's
    images, or an import source is too small. (A ValueError, so the CLI reports it in one line.)"""


@dataclass(frozen=True)
class ImageRequest:
    """One image to render: its group, its index within the group, the attempt (0 unless a filter
    rejected earlier ones), its derived seed, and its prompt."""

    label: str
    bias: str
    index: int
    seed: int
    prompt: str | None = None
    attempt: int = 0

    @property
    def group(self) -> str:
        return group_key(self.label, self.bias)


class SynthesisBackend(Protocol):
    """What a backend provides. ``generator`` names it in manifest rows (e.g. ``procedural-v1`` or a
    model id with revision). Optional: ``settings`` (dict of everything else that shapes the pixels,
    checked when a run resumes), ``batch_invariant`` (True when an image cannot depend on the batch
    it is rendered in; see :func:`run_synthesis`), ``reserve(counts)`` (told the full per-group
    counts before a run), ``row_for(request)`` (manifest fields overriding prompt/seed/generator,
    e.g. for imported images)."""

    generator: str

    def prompt_for(self, request: ImageRequest) -> str | None:  # pragma: no cover - protocol
        ...

    def generate(self, requests: list[ImageRequest]):  # -> list[PIL.Image.Image]
        ...


def create_backend(name: str, card: DatasetCard, **options) -> SynthesisBackend:
    """Instantiate the backend registered as ``name`` for the groups of ``card``."""
    cls = SYNTHESIS_BACKENDS.get(name)
    try:
        return cls(card=card, **options)
    except TypeError as e:
        raise ValueError(f"synthesis backend {name!r}: {e} (options given: {sorted(options)})") from None


def image_seed(base_seed: int, label: str, bias: str, index: int, attempt: int = 0) -> int:
    """The seed of attempt ``attempt`` at image ``index`` of group (label, bias): a 63-bit hash of
    the values. Attempt 0 hashes the first four alone, so seeds predating retries are unchanged."""
    key = f"{int(base_seed)}|{label}|{bias}|{int(index)}"
    if attempt:
        key += f"|{int(attempt)}"
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "little") & ((1 << 63) - 1)


def image_relpath(label: str, bias: str, index: int) -> str:
    """Where image ``index`` of a group lives, relative to the synthetic dataset root."""
    return f"{group_key(label, bias)}/{index:06d}.png"


def make_request(backend: SynthesisBackend, base_seed: int, label: str, bias: str, index: int,
                 attempt: int = 0) -> ImageRequest:
    """The request for one attempt at one image, with its seed and the backend's prompt for it."""
    req = ImageRequest(label, bias, int(index), image_seed(base_seed, label, bias, index, attempt),
                       attempt=int(attempt))
    return replace(req, prompt=backend.prompt_for(req))


def check_shard(shard: int, num_shards: int, names: tuple[str, str] = ("shard", "num_shards")) -> None:
    """Refuse a shard index outside ``[0, num_shards)`` or fewer than one shard; ``names`` are the
    option names the message uses (the CLI's ``--shard``, ``--num-shards``)."""
    require("count", num_shards, names[1])
    if not 0 <= shard < num_shards:
        raise ValueError(f"{names[0]} {shard}: must be in [0, {num_shards}) ({names[1]} {num_shards})")


def plan_requests(backend: SynthesisBackend, counts: dict[tuple[str, str], int], base_seed: int = 0,
                  shard: int = 0, num_shards: int = 1, block: int = 1) -> list[ImageRequest]:
    """The first-attempt requests of shard ``shard`` of ``num_shards``: image ``index`` of a group
    belongs to shard ``(index // block) % num_shards`` (``index % num_shards`` for ``block`` 1).
    Seeds and prompts depend on (base seed, group, index) only, so the union of all shards is the
    same set of images whatever ``num_shards`` is."""
    check_shard(shard, num_shards)
    return [make_request(backend, base_seed, label, bias, i)
            for (label, bias), n in counts.items() for i in range(int(n)) if (i // block) % num_shards == shard]


# ---------------------------------------------------------------------------------- the run
@dataclass
class SynthesisRun:
    """What a run produced: the manifest of this shard's images, every rejected attempt
    (group, index, attempt, seed, reason), and a summary (``info``) to store beside them."""

    manifest: Manifest
    rejections: list[dict] = field(default_factory=list)
    info: dict = field(default_factory=dict)

    def rejected_per_group(self) -> dict[str, int]:
        """Rejected attempts per group (``label_bias``), sorted by group: what the filters pruned."""
        out: dict[str, int] = {}
        for r in self.rejections:
            out[r["group"]] = out.get(r["group"], 0) + 1
        return dict(sorted(out.items()))


def run_synthesis(backend: SynthesisBackend, card: DatasetCard, counts: dict[tuple[str, str], int],
                  out_dir: str | os.PathLike, base_seed: int = 0, batch_size: int = SYNTHESIS_BATCH_SIZE,
                  split: str = "train", progress: bool = False, shard: int = 0, num_shards: int = 1,
                  filters: Sequence = (), max_attempts: int = MAX_ATTEMPTS) -> SynthesisRun:
    """Render ``counts[(label, bias)]`` accepted images per group (this shard's part of them) into
    ``out_dir/<label>_<bias>/<index>.png``.

    ``filters`` (objects or specs such as ``"grayscale"``, see :mod:`ffr.synthesis.filters`) may
    reject an image; it is then replaced by attempt 1, 2, … of the same index (seed from
    :func:`image_seed`), at most ``max_attempts`` attempts per image, after which a
    :class:`SynthesisError` names the group. Finished images are verified (the PNG decodes and its
    record matches this run) and kept; leftovers of a killed write (``*.png.tmp``) are removed.
    Files are written atomically (temp + rename).

    Batches are *slot-stable* unless the backend declares ``batch_invariant = True``: float kernels
    (a UNet's matrix products on CPU or GPU) may round differently by batch size and by position in
    the batch, so every attempt at image ``index`` is rendered in slot ``index % batch_size`` of a
    batch of exactly ``batch_size`` (empty slots are padded with a repeated request whose output is
    discarded), and shards own whole blocks of ``batch_size`` indices. Given the same batch size,
    hardware and library versions, the files are then byte-identical whatever the number of shards,
    the interruptions or the rejections.
    """
    from ffr.synthesis.filters import make_filter

    unknown = [g for g in counts if g not in set(card.groups)]
    if unknown:
        raise ValueError(f"counts name group(s) not in card {card.name!r}: {[group_key(*g) for g in unknown]}")
    require("count", max_attempts, "max_attempts")
    require("count", int(batch_size), "batch_size")
    refuse([p for g, n in counts.items() for p in check("image_count", int(n), f"count of {group_key(*g)}")],
           "image counts")
    if sum(int(n) for n in counts.values()) == 0:
        raise ValueError("nothing to render: every group's count is 0")
    share = -(-sum(int(n) for n in counts.values()) // max(1, int(num_shards)))
    if share > MAX_IMAGES_PER_RUN:
        raise ValueError(f"{sum(int(n) for n in counts.values()):,} images in {num_shards} shard(s) is about {share:,} "
                         f"per run, over the limit of {MAX_IMAGES_PER_RUN:,}: split the work over more shards "
                         "(--num-shards / the pipeline's num_shards)")
    from ffr.paths import inside

    for label, bias in counts:  # class and bias names become folder names: never outside out_dir
        inside(out_dir, group_key(label, bias))
    filters = [make_filter(f) for f in filters]
    if hasattr(backend, "reserve"):
        backend.reserve(dict(counts))
    out_dir = Path(out_dir)
    signature = {"generator": backend.generator, "settings": dict(getattr(backend, "settings", {}) or {}),
                 "filters": [f.spec for f in filters]}
    invariant = bool(getattr(backend, "batch_invariant", False))
    n_slots = 1 if invariant else int(batch_size)
    requests = plan_requests(backend, counts, base_seed, shard, num_shards, block=n_slots)

    records: dict[tuple[str, str, int], dict] = {}
    todo, foreign = [], []
    for r in requests:
        dest = out_dir / image_relpath(r.label, r.bias, r.index)
        dest.with_name(dest.name + ".tmp").unlink(missing_ok=True)
        record = _read_record(dest)
        if record is None:  # missing, or a killed/corrupted write that does not decode: render it (again)
            dest.unlink(missing_ok=True)
            todo.append(r)
            continue
        problem = "it decodes but carries no ffr record" if record is _NO_RECORD else \
            _mismatch(record, r, signature, backend, base_seed)
        if problem:
            foreign.append(f"{dest}: {problem}")
        records[(r.label, r.bias, r.index)] = record
    if foreign:
        raise SynthesisError(
            f"{out_dir} holds {len(foreign)} image(s) of another run; use another output folder or "
            "delete them:\n  " + "\n  ".join(foreign[:10]) + ("\n  ..." if len(foreign) > 10 else ""))
    resumed = len(records)

    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(requests), initial=resumed, desc=f"synthesize ({backend.generator})", unit="img")
    # One queue per batch slot (a single queue for batch-invariant backends); items are
    # (request, rejected attempts before it).
    slots = [deque() for _ in range(n_slots)]
    for r in todo:
        slots[r.index % n_slots].append((r, []))
    generated = padding = 0
    try:
        while any(slots):
            if invariant:
                q = slots[0]
                batch = [(0, q.popleft()) for _ in range(min(batch_size, len(q)))]
                reqs = [item[0] for _, item in batch]
            else:
                batch = [(j, q.popleft()) for j, q in enumerate(slots) if q]
                filler = batch[0][1][0]
                by_slot = {j: item[0] for j, item in batch}
                reqs = [by_slot.get(j, filler) for j in range(n_slots)]
                padding += n_slots - len(batch)
            images = backend.generate(reqs)
            if not invariant:
                images = [images[j] for j, _ in batch]
                reqs = [item[0] for _, item in batch]
            generated += len(batch)
            reasons = _apply_filters(filters, images, reqs)
            for (slot, (req, rejected)), img, reason in zip(batch, images, reasons):
                if reason is not None:
                    rejected = rejected + [{"attempt": req.attempt, "seed": req.seed, "reason": reason}]
                    if req.attempt + 1 >= max_attempts:
                        raise SynthesisError(
                            f"group {req.group}: image {req.index} was rejected {len(rejected)} times "
                            f"(max_attempts={max_attempts}); last reason: {reason}. Loosen the filters, "
                            "change the group's prompts, or allow more attempts.")
                    retry = make_request(backend, base_seed, req.label, req.bias, req.index, req.attempt + 1)
                    slots[slot].appendleft((retry, rejected))  # an image finishes before new ones start
                    continue
                record = {"label": req.label, "bias": req.bias, "index": req.index, "attempt": req.attempt,
                          "seed": req.seed, "prompt": req.prompt, **signature, "rejected": rejected}
                if hasattr(backend, "row_for"):
                    record["row"] = backend.row_for(req)
                _write_png(img, out_dir / image_relpath(req.label, req.bias, req.index), record)
                records[(req.label, req.bias, req.index)] = record
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()

    ordered = [records[(r.label, r.bias, r.index)] for r in requests]
    rejections = [{"group": group_key(rec["label"], rec["bias"]), "label": rec["label"], "bias": rec["bias"],
                   "index": rec["index"], **rj} for rec in ordered for rj in rec["rejected"]]
    manifest = Manifest.from_records([_row(rec, split) for rec in ordered], card, out_dir)
    info = {"generator": backend.generator, "settings": signature["settings"], "filters": signature["filters"],
            "base_seed": int(base_seed), "split": split, "shard": shard, "num_shards": num_shards,
            "max_attempts": max_attempts, "block": n_slots,
            "counts": {group_key(*g): int(n) for g, n in counts.items()}, "images": len(ordered),
            "resumed": resumed, "generated": generated, "padding": padding, "rejected": len(rejections)}
    return SynthesisRun(manifest, rejections, info)


def _apply_filters(filters, images, requests) -> list[str | None]:
    """The first rejection reason of each image (None = accepted); each filter sees only the
    images every earlier filter accepted."""
    reasons = [img.info.get(REJECT_INFO) for img in images]
    for f in filters:
        keep = [i for i, r in enumerate(reasons) if r is None]
        if not keep:
            break
        for i, reason in zip(keep, f([images[i] for i in keep], [requests[i] for i in keep])):
            reasons[i] = reason
    return reasons


def _write_png(img, dest: Path, record: dict) -> None:
    from PIL.PngImagePlugin import PngInfo

    dest.parent.mkdir(parents=True, exist_ok=True)
    info = PngInfo()
    info.add_text(META_KEY, json.dumps(record, sort_keys=True, separators=(",", ":")))
    tmp = dest.with_name(dest.name + ".tmp")
    try:
        img.convert("RGB").save(tmp, format="PNG", pnginfo=info)
        os.replace(tmp, dest)
    finally:  # a failed write (a full disk) leaves no half-written file: the rerun renders it again
        tmp.unlink(missing_ok=True)


_NO_RECORD: dict = {}  # sentinel: the image decodes but carries no (valid) record


def read_record(path: str | os.PathLike) -> dict | None:
    """The record an ffr-written PNG carries, or None when the file is missing, does not decode in
    full, or carries no record."""
    record = _read_record(Path(path))
    return None if record is _NO_RECORD else record


def _read_record(path: Path) -> dict | None:
    from PIL import Image

    if not path.is_file():
        return None
    try:
        with Image.open(path) as im:
            im.load()  # decode every pixel: a truncated or corrupted file fails here
            text = im.info.get(META_KEY)
    except (OSError, ValueError, SyntaxError):
        return None
    try:
        record = json.loads(text) if text else None
    except ValueError:
        record = None
    return record if isinstance(record, dict) else _NO_RECORD


def _mismatch(record: dict, req: ImageRequest, signature: dict, backend, base_seed: int) -> str | None:
    """Why a finished image's record does not belong to this run (None when it does)."""
    for key in ("generator", "settings", "filters"):
        if record.get(key) != signature[key]:
            return f"{key} {record.get(key)!r} here, {signature[key]!r} requested"
    try:
        attempt = int(record.get("attempt", -1))
    except (TypeError, ValueError):
        attempt = -1
    if attempt < 0 or (record.get("label"), record.get("bias"), record.get("index")) != (req.label, req.bias, req.index):
        return "its record names another image"
    expected = make_request(backend, base_seed, req.label, req.bias, req.index, attempt)
    if record.get("seed") != expected.seed:
        return f"seed {record.get('seed')} here, {expected.seed} expected for base seed {base_seed}"
    if record.get("prompt") != expected.prompt:
        return f"prompt {record.get('prompt')!r} here, {expected.prompt!r} expected"
    return None


def _row(record: dict, split: str) -> dict:
    row = {"path": image_relpath(record["label"], record["bias"], record["index"]), "label": record["label"],
           "bias": record["bias"], "split": split, "source": "synthetic", "prompt": record["prompt"],
           "seed": record["seed"], "generator": record["generator"]}
    row.update(record.get("row") or {})
    return row

