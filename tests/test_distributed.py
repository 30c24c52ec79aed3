"""Data-parallel training under torchrun: 2 CPU processes on gloo give the per-group metrics a
single-process evaluation of the same model gives; replicas stay identical; rank 0 alone writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ffr.data.manifest import Manifest
from ffr.train import distributed as dist
from ffr.train.loop import evaluate, load_checkpoint

COUNTS = {("train", "cat", "indoor"): 9, ("train", "cat", "outdoor"): 3, ("train", "dog", "outdoor"): 9,
          ("train", "dog", "indoor"): 4, ("val", "cat", "indoor"): 4, ("val", "cat", "outdoor"): 3,
          ("val", "dog", "outdoor"): 5, ("val", "dog", "indoor"): 3}


def test_single_process_helpers_are_identities():
    order = torch.tensor([4, 1, 3])
    assert dist.world_size() == 1 and dist.is_main()
    assert torch.equal(dist.shard(order), order) and dist.eval_rows(5) is None
    assert dist.per_rank_batch(128) == 128 and dist.mean(2.5) == 2.5


# Step-2 options that change which parameters train during the run: LP-FT switches the backbone's
# gradients off and on between epochs, freeze_stages keeps a stage out of training altogether.
STEP2 = {"epochs": 3, "lpft_epochs": 1, "freeze_stages": 1}
# GroupDRO keeps state (its group weights) that every rank must update from the global batch.
GROUPDRO = {"objective": "groupdro", "objective_options": {"eta": 0.5}}


@pytest.mark.slow  # two torch processes
@pytest.mark.parametrize("options", [{}, STEP2, GROUPDRO], ids=["plain", "lpft+frozen", "groupdro"])
def test_ddp_on_gloo_matches_single_process(make_dataset, tmp_path, options):
    root = make_dataset(COUNTS)
    out = tmp_path / "out"
    out.mkdir()
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "OMP_NUM_THREADS": "1"}
    worker = Path(__file__).with_name("ddp_worker.py")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(worker), str(root), str(out), json.dumps(options)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0, r1 = (json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1))
    # Gradients are all-reduced and buffers synced: both replicas end with the same weights.
    assert r0["weights"] == r1["weights"]
    assert r0["first_stage_unchanged"] == bool(options.get("freeze_stages"))
    # An objective's state is the same on every rank (GroupDRO: weights moved off uniform).
    assert r0["objective_state"] == r1["objective_state"]
    if options is GROUPDRO:
        assert len(set(r0["objective_state"].values())) > 1
    # Both ranks see the same exact (count-summed) metrics every epoch.
    assert [h["val/worst_group_acc"] for h in r0["history"]] == [h["val/worst_group_acc"] for h in r1["history"]]
    assert r0["test_metrics"] == r1["test_metrics"]
    # Only rank 0 writes checkpoints and logs.
    assert (out / "model_rank0.pt").is_file() and not (out / "model_rank1.pt").exists()
    assert (out / "log_rank0.jsonl").is_file() and not (out / "log_rank1.jsonl").exists()
    # A single process evaluating the saved model gets the same per-group counts and accuracies.
    model, _ = load_checkpoint(out / "model_rank0.pt")
    from ffr.data.cache import open_cache

    m = Manifest.load(root)
    val = open_cache(m, 8, out / "cache").tensors(m.select(split="val"))
    single = evaluate(model, val, torch.device("cpu"))
    assert single == r0["test_metrics"] == r0["best_val"]
    assert single["n"] == sum(n for (s, _, _), n in COUNTS.items() if s == "val")
