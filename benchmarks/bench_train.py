"""Images/s of a training epoch (train pass + validation pass), ffr against the reference loop,
fp32 against autocast, on the same data and the same model.

- reference: the paper's loop: DataLoader(num_workers=2) with per-sample PIL decode + torchvision
  transforms, fp32, NCHW, a host sync per step (``loss.item()``), evaluation through a second
  DataLoader.
- ffr fp32: ``ffr.train.loop.fit`` for one epoch with ``amp="off"`` (cache-fed, channels-last).
- ffr autocast: the same with bf16 autocast (``amp="bf16"`` on the CPU, ``"auto"`` on a GPU).

Models: the demo's ``small_cnn`` and ResNet-18 (small-image stem) at 32 px, ResNet-50 at 224 px
(a few batches on a CPU). Runs alternate, ``--repeats`` rounds; the fastest counts (the first
round pays the warm-up: kernel selection, first allocations, imports).

    python benchmarks/bench_train.py                       # ~2-3 min on 2 cores
    python benchmarks/bench_train.py --models resnet50:224 --n-train 2048 --batch-size 128
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from common import add_common_args, best, demo_images, setup, reference_loader, timed, write_json

from ffr.data.cache import open_cache
from ffr.train.backbones import create_model
from ffr.train.loop import TrainConfig, fit
from ffr.train.objectives import create_objective

# model:size → (train images, val images, batch size, autocast run on a CPU) for the default run.
# Emulated bf16 is ~5x slower than fp32 on a CPU without native bf16: one model shows it.
DEFAULTS = {"small_cnn:32": (1024, 256, 128, True), "resnet18_small:32": (96, 32, 32, False),
            "resnet50:224": (16, 8, 8, False)}


def reference_epoch(model, train_m, val_m, size, batch_size, device, workers) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-5)
    model.train()
    for batch in reference_loader(train_m, size, batch_size, workers=workers):
        x, y = batch["img"].to(device), batch["target"].to(device)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss.item()  # the reference logs every step's loss
    model.eval()
    with torch.no_grad():
        for batch in reference_loader(val_m, size, batch_size, shuffle=False, workers=workers):
            model(batch["img"].to(device)).argmax(1).cpu()


def ffr_epoch(model, train, val, batch_size, device, amp, threads) -> None:
    cfg = TrainConfig(epochs=1, min_steps=0, batch_size=batch_size, eval_batch_size=batch_size, amp=amp, num_threads=threads)
    fit(model, train, val, create_objective("erm"), cfg, device)


def bench_model(spec: str, args, device) -> dict:
    name, size = spec.split(":")
    size = int(size)
    n_train, n_val, bs, cpu_amp = DEFAULTS.get(spec, (512, 128, 64, True))
    n_train, n_val, bs = args.n_train or n_train, args.n_val or n_val, args.batch_size or bs
    m = demo_images(args.workdir, size, n_train + n_val)
    train_m = type(m)(m.frame.iloc[:n_train], m.card, m.root)
    val_m = type(m)(m.frame.iloc[n_train:], m.card, m.root)
    cache = open_cache(m, size, args.workdir / "cache")
    train, val = cache.tensors(train_m), cache.tensors(val_m)
    amp = "auto" if device.type == "cuda" else "bf16"
    models = {}
    for k in ("reference", "fp32", "amp"):  # one model each: fit leaves its model channels-last
        torch.manual_seed(0)
        models[k] = create_model(name, len(m.card.classes)).to(device)
    runs = {
        "reference_fp32": lambda: reference_epoch(models["reference"], train_m, val_m, size, bs, device, args.workers),
        "ffr_fp32": lambda: ffr_epoch(models["fp32"], train, val, bs, device, "off", args.threads),
        f"ffr_{amp}": lambda: ffr_epoch(models["amp"], train, val, bs, device, amp, args.threads),
    }
    if args.no_amp or (device.type == "cpu" and not cpu_amp and not args.amp):
        runs.pop(f"ffr_{amp}")
    times = {k: [] for k in runs}
    for _ in range(args.repeats):  # the first round pays warm-up costs; the fastest round counts
        for k, run in runs.items():
            times[k] += timed(lambda: (run(), device.type == "cuda" and torch.cuda.synchronize()))
    n = n_train + n_val
    ips = {k: n / best(v) for k, v in times.items()}
    row = {"model": name, "size": size, "n_train": n_train, "n_val": n_val, "batch_size": bs,
           "img_s": ips, "epoch_s": times,
           "speedup_ffr_fp32": ips["ffr_fp32"] / ips["reference_fp32"]}
    line = (f"{name:>15} {size:>3}px  reference {ips['reference_fp32']:7.1f} img/s   "
            f"ffr fp32 {ips['ffr_fp32']:7.1f} img/s ({row['speedup_ffr_fp32']:.2f}x)")
    if f"ffr_{amp}" in ips:
        row["speedup_ffr_amp"] = ips[f"ffr_{amp}"] / ips["reference_fp32"]
        row["amp_vs_fp32"] = ips[f"ffr_{amp}"] / ips["ffr_fp32"]
        line += f"   ffr {amp} {ips[f'ffr_{amp}']:7.1f} img/s ({row['speedup_ffr_amp']:.2f}x; vs fp32 {row['amp_vs_fp32']:.2f}x)"
    print(line, flush=True)
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(p)
    p.add_argument("--models", nargs="+", default=list(DEFAULTS), help="name:size, e.g. resnet18_small:32")
    p.add_argument("--n-train", type=int)
    p.add_argument("--n-val", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2, help="rounds; the fastest counts (>= 2: the first warms up)")
    p.add_argument("--no-amp", action="store_true", help="skip every autocast run")
    p.add_argument("--amp", action="store_true", help="autocast runs for every model, also on a CPU")
    args = p.parse_args()
    device, info = setup(args)
    rows = [bench_model(s, args, device) for s in args.models]
    write_json(args.json, {"machine": info, "rows": rows})
    print("train speedup " + ", ".join(f"{r['model']} {r['size']}px: {r['speedup_ffr_fp32']:.1f}x" for r in rows))


if __name__ == "__main__":
    main()
