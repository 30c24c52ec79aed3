"""Run by ``torchrun --nproc_per_node 2`` from tests/test_distributed.py: trains and evaluates
a small model data-parallel on the gloo backend and writes what each rank saw."""

import json
import sys
from pathlib import Path

import torch

from ffr.data.cache import open_cache
from ffr.data.manifest import Manifest
from ffr.train import distributed as dist
from ffr.train.backbones import create_model
from ffr.train.loop import TrainConfig, evaluate, fit, save_checkpoint, seed_everything
from ffr.train.objectives import create_objective

dataset, out = Path(sys.argv[1]), Path(sys.argv[2])
assert dist.init_from_env() and dist.world_size() == 2
m = Manifest.load(dataset)
cache = open_cache(m, 8, out / "cache")  # both ranks at once: one builds, one waits
train, val = cache.tensors(m.select(split="train")), cache.tensors(m.select(split="val"))
seed_everything(0)
model = create_model("small_cnn", 2)
# argv[3], optional: JSON of more TrainConfig fields (the step-2 options, e.g. LP-FT) and the
# objective (``objective``: name, ``objective_options``)
options = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
objective = create_objective(options.pop("objective", "erm"), **options.pop("objective_options", {}))
cfg = TrainConfig(**{"epochs": 2, "min_steps": 0, "batch_size": 8, "amp": "off", "augment": True, **options})
first_stage = {k: v.clone() for k, v in model.stages()[0].state_dict().items()}


def log(record: dict) -> None:  # fit calls it on rank 0 only
    with (out / f"log_rank{dist.rank()}.jsonl").open("a") as f:
        f.write(json.dumps(record) + "\n")


result = fit(model, train, val, objective, cfg, torch.device("cpu"), seed=0, log=log)
save_checkpoint(out / f"model_rank{dist.rank()}.pt", result.model, {"backbone": "small_cnn", "classes": ["cat", "dog"]})
state = result.model.state_dict()
(out / f"rank{dist.rank()}.json").write_text(json.dumps({
    "best_val": result.best_val,
    "history": result.history,
    "test_metrics": evaluate(result.model, val, torch.device("cpu")),
    "weights": {k: v.double().sum().item() for k, v in state.items()},
    "objective_state": objective.state(),
    "first_stage_unchanged": all(torch.equal(v, result.model.stages()[0].state_dict()[k])
                                 for k, v in first_stage.items()),
}))
