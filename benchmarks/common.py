"""What the benchmarks share: the demo images (scaled up by repetition), the reference input
pipeline built the way the paper's code does it, ffr's input path, timing and memory helpers.

The reference pipeline: a ``Dataset`` whose ``__getitem__`` opens the image file with PIL,
converts it to RGB and applies torchvision ``Resize`` + ``ToTensor`` + ``Normalize``, returning a
dict per sample; a ``DataLoader(batch_size, shuffle=True, num_workers=2)``; fp32, NCHW.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python benchmarks/x.py` from anywhere
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from ffr.data.demo import DemoSpec, make_demo  # noqa: E402
from ffr.data.loading import NORMALIZATION, BatchTransform, TensorData  # noqa: E402
from ffr.data.manifest import Manifest  # noqa: E402

DEFAULT_WORKDIR = Path(os.environ.get("FFR_BENCH_DIR", "/tmp/ffr-bench"))


def demo_images(workdir: Path, image_size: int, n: int | None = None, split: str | None = None) -> Manifest:
    """The real demo images rendered at ``image_size`` px (a demo rendered at the training size:
    the reference's resize is then as cheap as it gets, the least favourable case for ffr),
    repeated under new names (hard links) until there are ``n`` rows."""
    base = make_demo(workdir / f"demo{image_size}", DemoSpec(image_size=image_size,
                                                             per_digit=None if image_size <= 64 else 60))
    m = base.select(split=split) if split else base
    if n is None or n <= len(m):
        return m if n is None else Manifest(m.frame.iloc[:n], m.card, m.root)
    frames = [m.frame]
    for rep in range(1, -(-n // len(m))):
        f = m.frame.copy()
        f["path"] = [_linked(m.root, p, rep) for p in f["path"]]
        frames.append(f)
    import pandas as pd

    return Manifest(pd.concat(frames, ignore_index=True).iloc[:n], m.card, m.root)


def _linked(root: Path, rel: str, rep: int) -> str:
    new = f"rep{rep}/{rel}"
    dest = root / new
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(root / rel, dest)
        except OSError:
            dest.write_bytes((root / rel).read_bytes())
    return new


class PaperStyleDataset(torch.utils.data.Dataset):
    """Per-sample decode + torchvision transforms, returning a dict per sample."""

    def __init__(self, manifest: Manifest, image_size: int, normalize: str = "imagenet"):
        from torchvision import transforms

        self.paths = [str(p) for p in manifest.abs_paths()]
        self.labels = manifest.labels()
        self.biases = manifest.biases()
        mean, std = NORMALIZATION[normalize]
        self.transform = transforms.Compose([transforms.Resize((image_size, image_size)), transforms.ToTensor(),
                                             transforms.Normalize(mean, std)])

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict:
        from PIL import Image

        img = Image.open(self.paths[i]).convert("RGB")
        return {"idx": i, "img": self.transform(img), "target": int(self.labels[i]),
                "bias": int(self.biases[i]), "filenames": self.paths[i]}


def reference_loader(manifest: Manifest, image_size: int, batch_size: int = 128, shuffle: bool = True,
                     workers: int = 2) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(PaperStyleDataset(manifest, image_size), batch_size=batch_size,
                                       shuffle=shuffle, num_workers=workers)


def ffr_batches(data: TensorData, batch_size: int, device: torch.device, seed: int = 0, shuffle: bool = True,
                channels_last: bool = True, augment: bool = False):
    """ffr's training input path as :func:`ffr.train.loop.fit` runs it: an index order, a batch
    gathered from the cache (or memory), moved to the device, normalised there as one tensor."""
    gen = torch.Generator().manual_seed(seed)
    tf = BatchTransform("imagenet", augment)
    order = torch.randperm(len(data), generator=gen) if shuffle else torch.arange(len(data))
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        x = tf(data.images[idx].to(device, non_blocking=True), gen, train=True).contiguous(memory_format=fmt)
        yield x, data.labels[idx].to(device)


def timed(fn, repeats: int = 1) -> list[float]:
    """Wall seconds of ``repeats`` calls of ``fn``."""
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def best(values: list[float]) -> float:
    """The fastest of repeated timings: other processes only ever add time on a shared machine."""
    return min(values)


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (MiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def machine() -> dict:
    """Where the figures come from."""
    import platform

    from ffr.train.runtime import cpu_budget

    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cpus_usable": cpu_budget(), "torch": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "loadavg_at_start": os.getloadavg()[0]}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def write_json(path: str | None, data: dict) -> None:
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(data, indent=2) + "\n")


def add_common_args(parser) -> None:
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help="demo images and caches")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads for both sides (0: ffr's choice, ffr.train.runtime.auto_threads)")
    parser.add_argument("--json", help="also write the figures to this JSON file")


def setup(args) -> tuple[torch.device, dict]:
    """Work directory, device and one thread count for everything measured; prints the machine."""
    from ffr.train.runtime import resolve_device
    from ffr.train.runtime import auto_threads

    args.workdir.mkdir(parents=True, exist_ok=True)
    args.threads = args.threads or auto_threads()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    info = {**machine(), "threads": args.threads, "device": str(device)}
    print(f"machine: {info['cpu']} ({info['cpus_usable']} CPUs usable, load {info['loadavg_at_start']:.1f}, "
          f"torch threads {args.threads}), device {device}", flush=True)
    return device, info


