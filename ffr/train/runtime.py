"""Speed switches of the training loop: mixed precision, memory format, cuDNN autotuning and the
CPU thread count. The fast setting is the default; every choice is one field of ``TrainConfig``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

AMP_MODES = ("auto", "bf16", "fp16", "off")
_thread_cap: int | None = None  # set by cap_threads in a worker process that shares the CPUs


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto`` → CUDA when present (this process's GPU under ``torchrun``), else CPU."""
    if device is None or str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        return torch.device("cpu")
    return torch.device(device)


ADAPTIVE = -1  # TrainConfig.num_threads: follow the load (fast on a shared machine, not reproducible)


def cap_threads(n: int) -> None:
    """Limit an *adaptive* (``num_threads=-1``) process to ``n`` CPU threads, e.g. one of several
    worker processes sharing the machine. The default thread count ignores it: a cell computes
    the same numbers whether it runs alone or beside others."""
    global _thread_cap
    _thread_cap = max(1, int(n))


def machine_cpus() -> int:
    """CPUs this process may really use: its affinity mask, capped by a cgroup CPU quota (a
    container limited to 2 CPUs on a 64-core host must not start 64 threads). Fixed for a given
    machine and container: neither the load nor other processes change it."""
    n = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            n = min(n, max(1, int(int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


def cpu_budget() -> int:
    """:func:`machine_cpus`, capped by :func:`cap_threads` (an adaptive worker's share)."""
    n = machine_cpus()
    return max(1, min(n, _thread_cap or n))


def auto_threads(deterministic: bool = False) -> int:
    """The adaptive thread count: every usable CPU of this worker's share, minus those other
    processes keep busy (the 1-minute load average, ourselves excluded). On an oversubscribed
    machine OpenMP threads wait on each other: 2 threads ran a small CNN 2.5x slower than 1 under
    a load of 18 on 2 CPUs. ``deterministic`` skips the load term."""
    n = cpu_budget()
    if deterministic or not hasattr(os, "getloadavg"):
        return n
    busy = max(0.0, os.getloadavg()[0] - 1.0)
    return max(1, min(n, round(n - busy)))


def threads_for(num_threads: int = 0) -> int:
    """torch's CPU thread count for ``TrainConfig.num_threads``: N > 0 as given; 0 (the default)
    the machine's usable CPUs (:func:`machine_cpus`), the same in every process whatever the load
    or the number of workers — the thread count changes float rounding (weights trained with 1
    and 2 threads differ from the first epoch), so a rerun gives bit-identical metrics only with
    a fixed count; -1 (:data:`ADAPTIVE`) the opt-in for speed on a shared machine,
    :func:`auto_threads` (load and worker share), at the cost of exact reruns."""
    if num_threads == ADAPTIVE:
        return auto_threads()
    if num_threads < 0:
        raise ValueError(f"num_threads {num_threads}: 0 (the machine's CPUs), N > 0, or -1 (adaptive)")
    return num_threads or machine_cpus()


def cpu_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AMX or AVX-512 BF16). Without it oneDNN
    emulates bf16 and autocast is several times *slower* than fp32 (measured by
    ``benchmarks/bench_train.py``: 5x slower on an AVX2-only CPU)."""
    try:
        cap = torch.backends.cpu.get_cpu_capability()
    except AttributeError:
        return False
    return "AMX" in cap or "BF16" in cap


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``amp`` on ``device`` (None: full fp32).

    ``auto``: bf16 on CUDA when the GPU supports it, else fp16 (with a gradient scaler); on the
    CPU bf16 only where it is native, else off. ``bf16``/``fp16`` force a dtype (fp16 needs CUDA).
    """
    if amp not in AMP_MODES:
        raise ValueError(f"unknown amp mode {amp!r}; known: {', '.join(AMP_MODES)}")
    device = torch.device(device)
    if amp == "off" or device.type not in ("cuda", "cpu"):
        return None
    if amp == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.bfloat16 if cpu_native_bf16() else None
    if amp == "fp16" and device.type != "cuda":
        raise ValueError("amp='fp16' needs a CUDA device; use 'bf16' or 'off' on the CPU")
    return torch.bfloat16 if amp == "bf16" else torch.float16


def configure(device: torch.device, num_threads: int = 0, deterministic: bool = False) -> None:
    """Process-wide settings for training on ``device``: the CPU thread count
    (:func:`threads_for`), cuDNN autotuning (off, with deterministic algorithms, when
    ``deterministic``)."""
    if torch.device(device).type == "cpu":
        n = threads_for(num_threads)
        if torch.get_num_threads() != n:
            torch.set_num_threads(n)
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic
    if torch.are_deterministic_algorithms_enabled() != deterministic:  # the call imports inductor: seconds
        torch.use_deterministic_algorithms(deterministic, warn_only=True)
