"""torch.distributed plumbing for runs launched by torchrun: joining the process group, this
process's rank and share of a global batch, and gathering results on rank 0.

Outside torchrun (no WORLD_SIZE in the environment, or WORLD_SIZE=1) everything reduces to the
single-process case: rank 0 of 1. NCCL is used for CUDA devices and gloo for the CPU; the group
has a timeout, so a rank that dies makes the others fail instead of waiting forever.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor

from ddim.errors import BadValue

DEFAULT_TIMEOUT_S = 1800  # long enough for rank 0 to sample a grid or save while the others wait


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    """Rank 0 of a torch.distributed job, or the only process: the one that logs, samples and saves."""
    return rank() == 0


def init_from_env(device: torch.device, timeout_s: float | None = None) -> torch.device:
    """Join torchrun's process group when launched by it and return this process's device (for
    CUDA, the GPU of its LOCAL_RANK). `timeout_s` defaults to $DDIM_DIST_TIMEOUT or 30 minutes."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if is_distributed():
        return device
    timeout = timeout_s or float(os.environ.get("DDIM_DIST_TIMEOUT", DEFAULT_TIMEOUT_S))
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout))
    return device


def shutdown() -> None:
    """Leave the process group, if joined: a process that exits while gloo's threads still run
    is aborted (SIGABRT) by the C++ runtime."""
    if is_distributed():
        dist.destroy_process_group()


def share_bounds(global_size: int, what: str = "batch") -> tuple[int, int]:
    """(start, stop) of this rank's contiguous share of `global_size` items, which must divide
    evenly among the ranks."""
    world = world_size()
    if global_size % world:
        raise BadValue(
            f"the {what} size {global_size} does not divide among {world} processes; "
            f"choose a multiple of {world}"
        )
    share = global_size // world
    return rank() * share, (rank() + 1) * share


def batches_by_round(n: int, batch_size: int) -> list[tuple[int, int]]:
    """(start, stop) of this rank's batch in each round. Batch j of the n items goes to rank
    j % world, so round r's batches, gathered in rank order, are the next world * batch_size
    items in order, and rank 0 can write them as they come. Every rank has the same number of
    rounds; a rank with no batch left in the last round gets an empty range."""
    world, r = world_size(), rank()
    rounds = -(-n // (batch_size * world))
    bounds = []
    for k in range(rounds):
        first = min((k * world + r) * batch_size, n)
        bounds.append((first, min(first + batch_size, n)))
    return bounds


def gather_on_main(part: Tensor) -> Tensor | None:
    """Concatenate every rank's `part` (any length along dim 0, same trailing shape) in rank order
    on rank 0; other ranks get None."""
    if not is_distributed():
        return part
    world = world_size()
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    local = part.to(device)
    sizes = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([len(local)], device=device))
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros((longest, *local.shape[1:]), dtype=local.dtype, device=device)
    padded[: len(local)] = local
    parts = [torch.empty_like(padded) for _ in range(world)] if rank() == 0 else None
    if dist.get_backend() == "nccl":  # NCCL has no gather: all_gather and keep what rank 0 needs
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded)
    else:
        dist.gather(padded, parts, dst=0)
    if rank() != 0:
        return None
    return torch.cat([p[: int(s.item())] for p, s in zip(parts, sizes)]).cpu()
