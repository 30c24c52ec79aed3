"""Data-parallel training with ``torch.distributed`` when launched by ``torchrun``.

Every rank walks the same epoch order (the objective's ``epoch_indices`` drawn from the same
seeded generator) and takes its own shard of it; DDP all-reduces the gradients; evaluation splits
the rows over ranks and sums the :class:`ffr.metrics.GroupTally` counts, so per-group accuracy is
exact; only rank 0 writes files. Without ``torchrun`` (no ``WORLD_SIZE`` > 1) every function
here is the single-process identity.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

import torch
import torch.distributed as dist

from ffr.metrics import GroupTally


def init_from_env() -> bool:
    """Join the process group ``torchrun`` describes (its environment variables), once; NCCL on
    CUDA, gloo on the CPU. Returns whether training is distributed."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and dist.is_available() and not dist.is_initialized():
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if cuda else "gloo")
    return world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """Whether this process writes files (rank 0, or the only process)."""
    return rank() == 0


def shard(order: torch.Tensor) -> torch.Tensor:
    """This rank's part of an epoch order: padded by wrapping around to a multiple of the world
    size (every rank takes the same number of steps, as DDP requires), then every
    ``world``-th element."""
    world = world_size()
    if world == 1:
        return order
    padded = len(order) + (-len(order)) % world
    return order[torch.arange(padded) % len(order)][rank()::world]


def per_rank_batch(batch_size: int) -> int:
    """Per-rank batch so the global batch stays ``batch_size`` (the recipe's, e.g. 128)."""
    return max(1, -(-batch_size // world_size()))


def wrap(model: torch.nn.Module, device: torch.device, find_unused_parameters: bool = False) -> torch.nn.Module:
    """``model`` in a DistributedDataParallel wrapper when distributed (gradients all-reduced).
    Parameters that do not require a gradient at this point are left out of the all-reduce;
    ``find_unused_parameters`` when some of the others will get no gradient in some steps
    (LP-FT's head-only epochs)."""
    if world_size() == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused_parameters)


def sync_buffers(model: torch.nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics, which each rank updates from its own
    batches) to every rank, so all ranks evaluate the same model."""
    if world_size() > 1:
        for b in model.buffers():
            dist.broadcast(b, 0)


def eval_rows(n: int) -> torch.Tensor | None:
    """This rank's rows of an ``n``-row evaluation set (no padding: counts stay exact); None
    when not distributed."""
    return None if world_size() == 1 else torch.arange(rank(), n, world_size())


def reduce_tally(tally: GroupTally) -> GroupTally:
    """The tally summed over ranks (exact integer counts; the confidence sums in float64)."""
    if world_size() == 1:
        return tally
    correct, total, count, hits = (sum_over_ranks(torch.from_numpy(a.astype("int64"))).numpy()
                                   for a in (tally.correct, tally.total, tally.bin_count, tally.bin_correct))
    confidence, loss_sum = (sum_over_ranks(torch.from_numpy(a.astype("float64"))).numpy()
                            for a in (tally.bin_confidence, tally.loss_sum))
    loss_count = sum_over_ranks(torch.from_numpy(tally.loss_count.astype("int64"))).numpy()
    return GroupTally(tally.n_groups, correct, total, count, hits, confidence, loss_sum, loss_count)


def sum_over_ranks(t: torch.Tensor) -> torch.Tensor:
    """``t`` summed over ranks (a new tensor on ``t``'s device; ``t`` itself when not distributed)."""
    if world_size() == 1:
        return t
    out = t.detach().to(_comm_device(), copy=True)
    dist.all_reduce(out)
    return out.to(t.device)


def mean(value: float) -> float:
    """The mean of a scalar over ranks."""
    if world_size() == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=_comm_device())
    dist.all_reduce(t)
    return float(t.item()) / world_size()


def from_main(value):
    """Rank 0's ``value`` on every rank (a decision all ranks must share, e.g. whether a file
    rank 0 writes already exists)."""
    if world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _comm_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def barrier() -> None:
    """Wait for every rank (e.g. until rank 0 has written the files the others read next)."""
    if world_size() > 1:
        dist.barrier()


@contextmanager
def main_first():
    """Rank 0 runs the block first (e.g. writes a dataset), the others after it has finished
    (and then find its output)."""
    if world_size() > 1 and not is_main():
        dist.barrier()
    try:
        yield
    finally:
        if world_size() > 1 and is_main():
            dist.barrier()
