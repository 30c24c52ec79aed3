"""Images/s of ffr's training input path against the reference loop (per-sample PIL decode +
torchvision Resize/ToTensor/Normalize, DataLoader with 2 workers), at 32, 64 and 224 px.

Both deliver shuffled, normalised float batches of 128 on the training device. ffr reads them
from the decoded-image cache (built once; its build time is reported, and the speedup with the
build paid over ``--epochs`` epochs). Runs alternate reference / ffr, ``--repeats`` times; the
fastest epoch of each counts (other processes only ever add time).

    python benchmarks/bench_loader.py                 # ~1-2 min on 2 cores
    python benchmarks/bench_loader.py --sizes 32 64 224 --n 5000 --repeats 5
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time

from common import add_common_args, best, demo_images, ffr_batches, setup, reference_loader, timed, write_json

from ffr.data.cache import open_cache


def bench_size(size: int, n: int, args, device) -> dict:
    m = demo_images(args.workdir, size, n)
    n = len(m)
    tmp = tempfile.mkdtemp(prefix="ffr-bench-cache-", dir=args.workdir)
    try:
        t = time.perf_counter()
        data = open_cache(m, size, tmp).tensors(m).resident(device)
        build_s = time.perf_counter() - t

        def ffr_epoch():
            for x, y in ffr_batches(data, args.batch_size, device):
                pass
            if device.type == "cuda":
                import torch
                torch.cuda.synchronize()

        def ref_epoch():
            for batch in reference_loader(m, size, args.batch_size, workers=args.workers):
                x, y = batch["img"].to(device, non_blocking=True), batch["target"].to(device)

        ref, ffr = [], []
        for _ in range(args.repeats):
            ref += timed(ref_epoch)
            ffr += timed(ffr_epoch)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    ref_ips, ffr_ips = n / best(ref), n / best(ffr)
    amortized = (args.epochs * best(ref)) / (build_s + args.epochs * best(ffr))
    row = {"size": size, "n": n, "reference_img_s": ref_ips, "ffr_img_s": ffr_ips, "speedup": ffr_ips / ref_ips,
           "cache_build_s": build_s, f"speedup_incl_build_{args.epochs}_epochs": amortized,
           "reference_epochs_s": ref, "ffr_epochs_s": ffr}
    print(f"{size:>4}px  n={n:<6} reference {ref_ips:9.0f} img/s   ffr {ffr_ips:10.0f} img/s   "
          f"speedup {ffr_ips / ref_ips:6.1f}x   (cache build {build_s:.1f}s; "
          f"with it, over {args.epochs} epochs: {amortized:.1f}x)", flush=True)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 224])
    p.add_argument("--n", type=int, default=2000, help="images per epoch at 32 and 64 px")
    p.add_argument("--n-large", type=int, default=300, help="images per epoch at 224 px")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=2, help="reference DataLoader workers (the paper's 2)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--epochs", type=int, default=30, help="epochs the cache build is spread over")
    args = p.parse_args()
    device, info = setup(args)
    rows = [bench_size(s, args.n if s <= 64 else args.n_large, args, device) for s in args.sizes]
    write_json(args.json, {"machine": info, "rows": rows})
    print("loader speedup " + ", ".join(f"{r['size']}px: {r['speedup']:.1f}x" for r in rows))


if __name__ == "__main__":
    main()
