"""Synthesis cost: UNet evaluations per accepted image, and images/s of a tiny pipeline by batch size.

UNet evaluations are counted by wrapping the UNet's forward (one evaluation = one latent through the
UNet; classifier-free guidance puts two through per image and step). They are compared with the
paper's recipe: 50 PNDM steps × 2 for guidance = 100 per image. The count includes everything the
run pays for: rejected attempts (grayscale filter) and the padding of slot-stable batches (a group
whose count is not a multiple of the batch size pads its last batch: the third row shows it).

Images/s are measured on the tiny random Stable Diffusion pipeline (``ffr.synthesis.tiny``) on this
machine's CPU: they show how batching scales the generation loop, not the speed of a real model.

    python benchmarks/bench_synthesis.py [--model DIR] [--steps 25] [--images 16] [--threads 1]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


class UNetCounter:
    """Wraps ``pipe.unet.forward`` and counts the latents it evaluates."""

    def __init__(self, unet):
        self.evaluations = 0
        self._forward = unet.forward

        def counted(sample, *args, **kwargs):
            self.evaluations += int(sample.shape[0])
            return self._forward(sample, *args, **kwargs)

        unet.forward = counted


def evaluations_per_image(backend, card, counts, out: Path, batch_size: int, filters) -> tuple[float, dict]:
    """UNet evaluations per accepted image of one full run (and the run's info)."""
    from ffr.synthesis import run_synthesis

    counter = UNetCounter(backend.pipe.unet)
    run = run_synthesis(backend, card, counts, out, base_seed=0, batch_size=batch_size, filters=filters)
    backend.pipe.unet.forward = counter._forward
    return counter.evaluations / max(1, len(run.manifest)), run.info


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="diffusers model directory (default: a tiny random pipeline built here)")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--size", type=int, default=32, help="image height and width")
    parser.add_argument("--images", type=int, default=16, help="images per throughput measurement")
    parser.add_argument("--batch-sizes", default="1,2,4,8")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)

    import torch

    from ffr.data.manifest import DatasetCard
    from ffr.synthesis import create_backend
    from ffr.synthesis.generation import make_request
    from ffr.synthesis.tiny import build_tiny_pipeline

    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix="bench_synthesis_"))
    model = args.model or str(build_tiny_pipeline(tmp / "tiny-sd"))
    card = DatasetCard(name="waterbirds", classes=["landbird", "waterbird"], bias_values=["land", "water"])
    size = {"height": args.size, "width": args.size}

    print(f"model {model}, {args.size}x{args.size} px, torch threads {torch.get_num_threads()}")
    print("\nUNet evaluations per accepted image (4 groups, grayscale filter, batch 4):")
    rows = []
    for label, scheduler, steps, per_group in (("ffr default: DPM-Solver++", "dpm++", args.steps, 8),
                                               ("paper recipe: PNDM (PLMS)", "pndm", 50, 8),
                                               ("ffr default, 6 per group", "dpm++", args.steps, 6)):
        backend = create_backend("diffusers", card, model=model, prompts="waterbirds", scheduler=scheduler,
                                 steps=steps, guidance_scale=7.5, **size)
        per_image, info = evaluations_per_image(backend, card, {g: per_group for g in card.groups},
                                                tmp / f"run-{scheduler}-{steps}-{per_group}", 4, ["grayscale"])
        rows.append((label, per_image))
        print(f"  {label:<27} {steps:>3} steps, {per_group} per group: {per_image:6.1f} per image "
              f"({info['rejected']} rejected attempts, {info['padding']} padded batch slots) = "
              f"{per_image / 100:.2f}x the paper's 100")

    print(f"\nimages/s of the tiny pipeline ({args.steps} DPM-Solver++ steps, guidance 7.5), by batch size:")
    backend = create_backend("diffusers", card, model=model, prompts="waterbirds", steps=args.steps, **size)
    reqs = [make_request(backend, 0, "landbird", "water", i) for i in range(args.images)]
    backend.generate(reqs[:1])  # warm-up
    rates = {}
    for bs in (int(b) for b in args.batch_sizes.split(",")):
        t = time.perf_counter()
        for s in range(0, len(reqs), bs):
            backend.generate(reqs[s:s + bs])
        rates[bs] = len(reqs) / (time.perf_counter() - t)
        print(f"  batch {bs:>2}: {rates[bs]:7.2f} images/s  ({rates[bs] / rates[min(rates)]:.2f}x batch {min(rates)})")

    best = max(rates, key=rates.get)
    print(f"\nsummary: {rows[0][1]:.1f} UNet evaluations per accepted image with {args.steps} DPM-Solver++ steps "
          f"vs {rows[1][1]:.1f} measured for the paper's 50 PNDM steps ({rows[1][1] / rows[0][1]:.2f}x fewer); "
          f"tiny pipeline {rates[best]:.2f} images/s at batch {best} = {rates[best] / rates[min(rates)]:.2f}x "
          f"batch {min(rates)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
