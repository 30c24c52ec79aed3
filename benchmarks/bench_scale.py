"""How cost grows with the dataset: training-epoch time and peak resident memory at N, 2N and 4N
images (demo images repeated under new names), training from the on-disk image cache.

Each size runs in a fresh process (peak RSS is per process); caches are built beforehand. The
epoch time is the fastest epoch after the first of ``--epochs`` epochs of ``fit`` (small_cnn,
batch 128, a fixed 64-image validation set), and the fastest over ``--rounds`` rounds that
alternate the sizes (other processes on a shared machine only ever add time). The defaults
(N = 2000, 5 epochs, 3 rounds) are the smallest that gave a repeatable ratio here: with N = 1000,
3 epochs and 2 rounds (epochs of about a second) two runs on an idle machine said +12.9% and +7.3%. ``--contrast`` also measures peak RSS with the images loaded into
memory instead of read from the cache file batch by batch, to show what that saves. ``--input-only`` drops the
model and times the input path alone, so datasets far larger than the model's working memory
are cheap to try.

    python benchmarks/bench_scale.py --threads 1                       # ~6 min on 2 cores
    python benchmarks/bench_scale.py --size 64 --n 5000 --contrast
    python benchmarks/bench_scale.py --input-only --size 64 --n 10000  # 40,000 images, 470 MiB
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch
from common import add_common_args, demo_images, ffr_batches, peak_rss_mib, setup, write_json

from ffr.data.cache import open_cache
from ffr.data.loading import TensorData
from ffr.train.backbones import create_model
from ffr.train.loop import TrainConfig, fit
from ffr.train.runtime import resolve_device
from ffr.train.objectives import create_objective


def child(args) -> None:
    """One size, in its own process: train and report epoch time and peak RSS as JSON."""
    torch.set_num_threads(args.threads)
    m = demo_images(args.workdir, args.size, args.rows)
    train = open_cache(m, args.size, args.workdir / "cache").tensors(m)
    val = train.subset(torch.arange(min(64, len(train))))
    if args.mode == "memory":  # the contrast: every image resident in this process
        train = TensorData(train.images.to("cpu"), train.labels, train.biases, train.sources, train.card)
    stamps = [time.perf_counter()]
    device = resolve_device(args.device)
    if args.input_only:
        for epoch in range(args.epochs):
            for x, y in ffr_batches(train, 128, device, seed=epoch):
                pass
            stamps.append(time.perf_counter())
    else:
        torch.manual_seed(0)
        cfg = TrainConfig(epochs=args.epochs, min_steps=0, patience=0, batch_size=128, amp="off", num_threads=args.threads)
        fit(create_model(args.model, len(m.card.classes)), train, val, create_objective("erm"), cfg, device,
            log=lambda rec: stamps.append(time.perf_counter()))
    epochs = [b - a for a, b in zip(stamps, stamps[1:])]
    print(json.dumps({"n": len(train), "mode": args.mode, "epoch_s": min(epochs[1:] or epochs),
                      "epochs_s": epochs, "peak_rss_mib": peak_rss_mib(),
                      "pixel_mib": len(train) * 3 * args.size ** 2 / 2 ** 20}))


def run_child(args, rows: int, mode: str, epochs: int) -> dict:
    cmd = [sys.executable, __file__, "--child", "--rows", str(rows), "--mode", mode, "--epochs", str(epochs),
           "--size", str(args.size), "--workdir", str(args.workdir), "--device", args.device,
           "--threads", str(args.threads), "--model", args.model] + (["--input-only"] if args.input_only else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"  {mode:>6}  n={res['n']:<6} epoch {res['epoch_s']:7.2f}s  ({res['n'] / res['epoch_s']:6.0f} img/s)  "
          f"peak RSS {res['peak_rss_mib']:7.1f} MiB  (pixels {res['pixel_mib']:.0f} MiB)", flush=True)
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.add_argument("--n", type=int, default=2000, help="N: the smallest size")
    p.add_argument("--factors", type=int, nargs="+", default=[1, 2, 4])
    p.add_argument("--size", type=int, default=32, help="image size (px)")
    p.add_argument("--model", default="small_cnn")
    p.add_argument("--input-only", action="store_true", help="time the input path alone (no model)")
    p.add_argument("--epochs", type=int, default=5, help="epochs per run; the fastest after the first counts")
    p.add_argument("--rounds", type=int, default=3, help="runs of every size, alternating")
    p.add_argument("--contrast", action=argparse.BooleanOptionalAction, default=False,
                   help="also measure peak RSS with the images in memory (one epoch per size)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--rows", type=int, help=argparse.SUPPRESS)
    p.add_argument("--mode", default="cache", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return child(args)
    device, info = setup(args)
    sizes = [args.n * f for f in args.factors]
    for n in sizes:  # build every cache first: the children only read
        m = demo_images(args.workdir, args.size, n)
        open_cache(m, args.size, args.workdir / "cache")
    rounds = [[run_child(args, n, "cache", args.epochs) for n in sizes] for _ in range(args.rounds)]
    cached = [min((r[i] for r in rounds), key=lambda res: res["epoch_s"]) for i in range(len(sizes))]
    for res, n in zip(cached, sizes):
        res["peak_rss_mib"] = max(r[sizes.index(n)]["peak_rss_mib"] for r in rounds)  # the worst peak counts
    memory = [run_child(args, n, "memory", 1) for n in sizes] if args.contrast else []  # RSS only
    lo, hi = cached[0], cached[-1]
    factor = hi["n"] / lo["n"]
    time_ratio = hi["epoch_s"] / lo["epoch_s"]
    rss_ratio = hi["peak_rss_mib"] / lo["peak_rss_mib"]
    summary = {"machine": info, "size": args.size, "cache": cached, "rounds": rounds, "memory": memory, "factor": factor,
               "epoch_time_ratio": time_ratio, "linearity": time_ratio / factor, "peak_rss_ratio": rss_ratio}
    line = (f"scale N->{factor:.0f}N: epoch time {time_ratio:.2f}x (linear: {factor:.0f}x, "
            f"{100 * (time_ratio / factor - 1):+.1f}%), peak RSS {rss_ratio:.2f}x from the cache "
            f"(+{hi['peak_rss_mib'] - lo['peak_rss_mib']:.0f} MiB for +{hi['pixel_mib'] - lo['pixel_mib']:.0f} MiB of pixels)")
    if memory:
        summary["peak_rss_ratio_memory"] = memory[-1]["peak_rss_mib"] / memory[0]["peak_rss_mib"]
        line += f"; in memory {summary['peak_rss_ratio_memory']:.2f}x (+{memory[-1]['peak_rss_mib'] - memory[0]['peak_rss_mib']:.0f} MiB)"
    write_json(args.json, summary)
    print(line)


if __name__ == "__main__":
    main()
