"""The decoded tensor cache: exact pixels, keyed rebuilds, interrupted builds, concurrent builds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image

import ffr.data.cache as cache_mod
from ffr.data.cache import cache_key, open_cache
from ffr.data.loading import ImageDecodeError, TensorData
from ffr.data.manifest import Manifest

COUNTS = {("train", "cat", "indoor"): 6, ("train", "dog", "outdoor"): 5, ("val", "cat", "outdoor"): 3,
          ("test", "dog", "indoor"): 4}


def direct(path, size: int) -> np.ndarray:
    """What a plain PIL decode + bilinear resize gives, as (3, H, W)."""
    with Image.open(path) as im:
        im = im.convert("RGB")
        if im.size != (size, size):
            im = im.resize((size, size), Image.BILINEAR)
        return np.asarray(im).transpose(2, 0, 1)


def count_builds(monkeypatch) -> list:
    calls = []
    real_build = cache_mod.build

    def counting(*args, **kwargs):
        calls.append(args[2])
        return real_build(*args, **kwargs)

    monkeypatch.setattr(cache_mod, "build", counting)
    return calls


@pytest.mark.parametrize("size", [8, 13])  # stored size, and a resize
def test_cache_returns_exact_pixels(make_dataset, tmp_path, size):
    root = make_dataset(COUNTS)
    # Images that need converting: a grayscale and an RGBA PNG.
    m = Manifest.load(root)
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(m.abs_paths()[0])
    Image.fromarray(np.full((8, 8, 4), 77, dtype=np.uint8)).save(m.abs_paths()[1])
    cache = open_cache(m, size, tmp_path / "cache")
    data = cache.tensors(m)
    want = np.stack([direct(p, size) for p in m.abs_paths()])
    assert data.images.shape == (len(m), 3, size, size)
    assert np.array_equal(data.images[torch.arange(len(m))].numpy(), want)      # index tensor
    assert np.array_equal(data.images[2:7].numpy(), want[2:7])                   # slice
    assert np.array_equal(data.images[4].numpy(), want[4])                       # one row
    order = torch.tensor([9, 0, 3, 3])
    assert np.array_equal(data.images[order].numpy(), want[order.numpy()])       # any order, repeats
    # A sub-manifest (one split) maps onto the same rows; labels follow its row order.
    val = m.select(split="val")
    vdata = cache.tensors(val)
    assert np.array_equal(vdata.images[0:len(val)].numpy(), np.stack([direct(p, size) for p in val.abs_paths()]))
    assert vdata.labels.tolist() == val.labels().tolist()
    # The in-memory path and subsets agree with the cache.
    mem = TensorData.from_manifest(m, size)
    assert np.array_equal(mem.images.numpy(), want)
    sub = data.subset(torch.tensor([5, 1]))
    assert np.array_equal(sub.images[0:2].numpy(), want[[5, 1]]) and sub.labels.tolist() == mem.labels[[5, 1]].tolist()
    assert np.array_equal(data.images.to("cpu").numpy(), want)


def test_reads_stay_exact_after_pages_are_released(make_dataset, tmp_path, monkeypatch):
    monkeypatch.setattr(cache_mod, "RELEASE_BYTES", 200)  # release after every couple of images
    m = Manifest.load(make_dataset(COUNTS))
    data = open_cache(m, 8, tmp_path / "c").tensors(m)
    want = np.stack([direct(p, 8) for p in m.abs_paths()])
    for _ in range(3):
        for i in range(len(m)):
            assert np.array_equal(data.images[torch.tensor([i])].numpy()[0], want[i])


def test_reused_while_unchanged_rebuilt_when_manifest_or_size_changes(make_dataset, tmp_path, monkeypatch):
    builds = count_builds(monkeypatch)
    root = make_dataset(COUNTS)
    m = Manifest.load(root)
    c1 = open_cache(m, 8, tmp_path / "c")
    shuffled = Manifest(m.frame.sample(frac=1.0, random_state=0), m.card, m.root)
    c2 = open_cache(shuffled, 8, tmp_path / "c")               # same content, other row order
    assert len(builds) == 1 and c2.path == c1.path
    assert np.array_equal(c2.tensors(shuffled).images[0:3].numpy(),
                          np.stack([direct(p, 8) for p in shuffled.abs_paths()[:3]]))
    # A changed manifest (one image replaced by another file): a new cache with the new pixels.
    frame = m.frame.copy()
    Image.fromarray(np.full((8, 8, 3), 200, dtype=np.uint8)).save(root / "extra.png")
    frame.loc[0, "path"] = "extra.png"
    changed = Manifest(frame, m.card, m.root)
    c3 = open_cache(changed, 8, tmp_path / "c")
    assert len(builds) == 2 and c3.path != c1.path
    assert (c3.tensors(changed).images[0].numpy() == 200).all()
    # A label change alone changes the digest too, and so does the resolution.
    frame2 = m.frame.copy()
    frame2.loc[0, "label"] = "dog" if frame2.loc[0, "label"] == "cat" else "cat"
    assert cache_key(Manifest(frame2, m.card, m.root), 8) != cache_key(m, 8)
    c4 = open_cache(m, 10, tmp_path / "c")
    assert len(builds) == 3 and c4.path != c1.path and c4.image_size == 10
    with pytest.raises(KeyError, match="extra.png"):
        c1.rows(changed)


KILLED_BUILDER = textwrap.dedent("""
    import sys, time
    import ffr.data.loading as loading
    from ffr.data.cache import open_cache
    from ffr.data.manifest import Manifest
    import ffr.data.cache as cache_mod
    cache_mod.RELEASE_BYTES = 3 * 8 * 8 * 2   # write the file two images at a time
    real, done = loading.decode_image, []
    def slow(path, size):
        done.append(path)
        if len(done) == 5:
            open(sys.argv[3], "w").close()  # tell the test: the build is half way
            time.sleep(600)                 # ... and wait to be killed
        return real(path, size)
    loading.decode_image = slow
    open_cache(Manifest.load(sys.argv[1]), 8, sys.argv[2], workers=1)
""")


@pytest.mark.slow  # a subprocess that imports torch, killed half way
def test_half_written_cache_is_detected_and_rebuilt(make_dataset, tmp_path):
    root = make_dataset(COUNTS)
    cdir, marker = tmp_path / "c", tmp_path / "halfway"
    proc = subprocess.Popen([sys.executable, "-c", KILLED_BUILDER, str(root), str(cdir), str(marker)],
                            env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        deadline = time.time() + 120
        while not marker.exists():
            assert proc.poll() is None, "the builder exited before it was killed"
            assert time.time() < deadline, "the builder never reached the middle of the build"
            time.sleep(0.05)
        proc.kill()  # SIGKILL: no cleanup runs
    finally:
        proc.wait()
    m = Manifest.load(root)
    key = cache_key(m, 8)
    leftovers = list(cdir.glob(f"{key}.u8.*.tmp"))
    assert leftovers and leftovers[0].stat().st_size > 0        # a partial file was on disk
    assert not (cdir / f"{key}.json").exists() and not (cdir / f"{key}.u8").exists()
    cache = open_cache(m, 8, cdir)
    assert np.array_equal(cache.tensors(m).images[0:len(m)].numpy(), np.stack([direct(p, 8) for p in m.abs_paths()]))
    assert not list(cdir.glob("*.tmp"))                           # the leftover was cleaned up


def test_incomplete_or_corrupt_cache_files_are_rebuilt(make_dataset, tmp_path, monkeypatch):
    builds = count_builds(monkeypatch)
    m = Manifest.load(make_dataset(COUNTS))
    want = np.stack([direct(p, 8) for p in m.abs_paths()])
    cache = open_cache(m, 8, tmp_path / "c")
    data_path, meta_path = cache.path, cache.path.with_suffix(".json")
    # Killed after the data file was renamed but before the sidecar was written.
    meta_path.unlink()
    open_cache(m, 8, tmp_path / "c")
    assert len(builds) == 2
    # A truncated data file: its size disagrees with the sidecar.
    with open(data_path, "r+b") as f:
        f.truncate(100)
    assert np.array_equal(open_cache(m, 8, tmp_path / "c").tensors(m).images[0:len(m)].numpy(), want)
    assert len(builds) == 3
    # Flipped bytes of the right size: only the checksum sees them (verify=True).
    blob = bytearray(data_path.read_bytes())
    blob[10] ^= 0xFF
    os.replace(_write(tmp_path / "bad", bytes(blob)), data_path)
    assert open_cache(m, 8, tmp_path / "c").meta == json.loads(meta_path.read_text())
    assert len(builds) == 3
    fixed = open_cache(m, 8, tmp_path / "c", verify=True)
    assert len(builds) == 4 and fixed.verify()
    assert np.array_equal(fixed.tensors(m).images[0:len(m)].numpy(), want)


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def test_concurrent_opens_build_once(make_dataset, tmp_path, monkeypatch):
    builds = count_builds(monkeypatch)
    m = Manifest.load(make_dataset(COUNTS))
    results, errors = [], []

    def open_it():
        try:
            results.append(open_cache(m, 8, tmp_path / "c"))
        except Exception as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=open_it) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 3 and len(builds) == 1
    assert all(np.array_equal(r.read(np.arange(len(r))).numpy(), results[0].read(np.arange(len(r))).numpy())
               for r in results)


def test_bad_image_names_the_file_and_leaves_no_cache(make_dataset, tmp_path):
    root = make_dataset(COUNTS)
    m = Manifest.load(root)
    bad = m.abs_paths()[3]
    bad.write_bytes(b"not a png")
    with pytest.raises(ImageDecodeError, match=bad.name):
        open_cache(m, 8, tmp_path / "c")
    assert not list((tmp_path / "c").glob("*.json")) and not list((tmp_path / "c").glob("*.tmp"))


def test_empty_manifest(make_dataset, tmp_path):
    m = Manifest.load(make_dataset(COUNTS)).select(split="nope")
    cache = open_cache(m, 8, tmp_path / "c")
    assert len(cache) == 0 and cache.tensors(m).images.shape == (0, 3, 8, 8)
