"""Mixed precision, memory format, determinism and thread switches of the training loop (on CPU)."""

from __future__ import annotations

import math

import pytest
import torch

import ffr.train.runtime as runtime
from ffr.data.cache import open_cache
from ffr.data.loading import BatchTransform, TensorData
from ffr.data.manifest import Manifest
from ffr.train.backbones import create_model
from ffr.train.loop import TrainConfig, evaluate, fit, seed_everything
from ffr.train.objectives import create_objective

COUNTS = {("train", "cat", "indoor"): 10, ("train", "cat", "outdoor"): 4, ("train", "dog", "outdoor"): 10,
          ("train", "dog", "indoor"): 4, ("val", "cat", "indoor"): 3, ("val", "cat", "outdoor"): 3,
          ("val", "dog", "outdoor"): 3, ("val", "dog", "indoor"): 3}


def test_autocast_dtype_choices(monkeypatch):
    cpu = torch.device("cpu")
    assert runtime.autocast_dtype("off", cpu) is None
    assert runtime.autocast_dtype("bf16", cpu) is torch.bfloat16
    monkeypatch.setattr(runtime, "cpu_native_bf16", lambda: False)
    assert runtime.autocast_dtype("auto", cpu) is None          # emulated bf16 is slower than fp32
    monkeypatch.setattr(runtime, "cpu_native_bf16", lambda: True)
    assert runtime.autocast_dtype("auto", cpu) is torch.bfloat16
    with pytest.raises(ValueError, match="fp16"):
        runtime.autocast_dtype("fp16", cpu)
    with pytest.raises(ValueError, match="unknown amp mode 'fp8'"):
        runtime.autocast_dtype("fp8", cpu)


def test_configure_sets_threads_and_determinism():
    before = torch.get_num_threads()
    try:
        runtime.configure(torch.device("cpu"), num_threads=1, deterministic=True)
        assert torch.get_num_threads() == 1
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert torch.are_deterministic_algorithms_enabled()
        runtime.configure(torch.device("cpu"), num_threads=0, deterministic=True)
        assert torch.get_num_threads() == runtime.machine_cpus() >= 1
        runtime.configure(torch.device("cpu"), num_threads=0, deterministic=False)
        assert torch.get_num_threads() == runtime.machine_cpus()  # the default never follows the load
        assert torch.backends.cudnn.benchmark and not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.set_num_threads(before)
        runtime.configure(torch.device("cpu"), before, False)


def test_default_threads_ignore_load_and_worker_share_adaptive_follows_them(monkeypatch):
    monkeypatch.setattr(runtime, "machine_cpus", lambda: 8)
    monkeypatch.setattr(runtime, "_thread_cap", None)
    monkeypatch.setattr(runtime.os, "getloadavg", lambda: (30.0, 0, 0))   # oversubscribed
    runtime.cap_threads(2)                                               # a worker's share
    assert runtime.threads_for(0) == 8 and runtime.threads_for(3) == 3
    assert runtime.threads_for(runtime.ADAPTIVE) == 1
    monkeypatch.setattr(runtime.os, "getloadavg", lambda: (1.0, 0, 0))
    assert runtime.threads_for(runtime.ADAPTIVE) == 2
    with pytest.raises(ValueError):
        runtime.threads_for(-2)


def test_auto_threads_leave_busy_cpus_alone(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_budget", lambda: 8)
    monkeypatch.setattr(runtime.os, "getloadavg", lambda: (1.0, 0, 0))   # only us
    assert runtime.auto_threads() == 8
    monkeypatch.setattr(runtime.os, "getloadavg", lambda: (4.2, 0, 0))   # ~3 other busy threads
    assert runtime.auto_threads() == 5
    monkeypatch.setattr(runtime.os, "getloadavg", lambda: (30.0, 0, 0))  # oversubscribed
    assert runtime.auto_threads() == 1 and runtime.auto_threads(deterministic=True) == 8


def test_batch_transform_matches_the_textbook_formula():
    x = torch.randint(0, 256, (4, 3, 6, 6), dtype=torch.uint8)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    out = BatchTransform("imagenet")(x)
    assert torch.allclose(out, (x.float() / 255 - mean) / std, atol=1e-5)
    assert x.dtype == torch.uint8  # the input is not modified
    cl = x.contiguous(memory_format=torch.channels_last)
    assert BatchTransform("imagenet")(cl).is_contiguous(memory_format=torch.channels_last)


@pytest.fixture
def tiny(make_dataset, tmp_path):
    m = Manifest.load(make_dataset(COUNTS))
    cache = open_cache(m, 8, tmp_path / "cache")
    return cache.tensors(m.select(split="train")), cache.tensors(m.select(split="val"))


@pytest.mark.parametrize("amp,channels_last", [("off", False), ("bf16", True), ("auto", True)])
def test_fit_runs_with_each_precision_and_memory_format(tiny, amp, channels_last):
    train, val = tiny
    seed_everything(0)
    model = create_model("small_cnn", 2)
    cfg = TrainConfig(epochs=2, min_steps=0, batch_size=8, amp=amp, channels_last=channels_last, augment=True)
    result = fit(model, train, val, create_objective("erm"), cfg, torch.device("cpu"), seed=0)
    assert len(result.history) == 2 and all(math.isfinite(r["train/loss"]) for r in result.history)
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) == channels_last
    # the checkpoint selected by validation WGA is the one evaluate() scores
    again = evaluate(result.model, val, torch.device("cpu"), amp=amp)
    assert again["groups"] == result.best_val["groups"]


def test_bf16_training_tracks_fp32(tiny):
    """bf16 autocast changes rounding, not the computation: one step from the same weights moves
    the loss the same way."""
    train, _ = tiny
    x = BatchTransform()(train.images[0:16])
    y = train.labels[:16]
    losses = {}
    for amp in ("off", "bf16"):
        seed_everything(0)
        model = create_model("small_cnn", 2).train()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp == "bf16"):
            logits = model(x)
        losses[amp] = torch.nn.functional.cross_entropy(logits.float(), y).item()
    assert losses["off"] == pytest.approx(losses["bf16"], rel=0.05)


def test_in_memory_and_cached_sets_train_identically(tiny, make_dataset):
    train, val = tiny
    mem_train = TensorData(train.images[0:len(train)], train.labels, train.biases, train.sources, train.card)
    runs = []
    for data in (train, mem_train):
        seed_everything(0)
        model = create_model("small_cnn", 2)
        cfg = TrainConfig(epochs=1, min_steps=0, batch_size=8, amp="off", deterministic=True)
        runs.append(fit(model, data, val, create_objective("erm"), cfg, torch.device("cpu"), seed=0))
    a, b = (r.model.state_dict() for r in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)
