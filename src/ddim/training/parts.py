"""A micro-batch's backward pass in parts, one thread each: how a CPU's cores share a step.

On a CPU, torch splits every op across its threads, so the cores meet at a barrier after each
op and one waits for the other at every step of the UNet (17% of a 2-core training step's CPU
time is spent in OpenMP's waits, by `perf`). `backward_in_parts` instead gives each of the
parts a thread of its own to run forward and backward on its share of the micro-batch from start
to end, its ops using the threads left over (`torch.get_num_threads() // parts`), and the
threads meet once, to add the gradients (`benchmarks/train_throughput.py`; figures in
docs/performance.md, section 6).

The result is the whole micro-batch's, to float rounding, and the same bits whatever the
number of threads:
- each part draws its timesteps and noise as its share of a larger batch (`diffusion_loss`'s
  `rank_world`) from a copy of the step's generator, so every example gets what it would get in
  one piece;
- the parts' gradients are added in the order of the parts, whichever thread ends first;
- a CPU always splits an even micro-batch in two (`parts_for`), and with one thread the parts
  run one after the other, so a load that changes the thread count mid-run
  (`ddim.device.adjust_threads`) changes only the speed.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import Tensor


def parts_for(device: torch.device, micro_batch: int, whole: bool) -> int:
    """How many parts a micro-batch is split into: 2 on a CPU for an even micro-batch, unless it
    must stay `whole`: under DistributedDataParallel (its all-reduce hooks want one backward
    call), torch.compile (graphs compiled concurrently) or dropout (its masks come from torch's
    global generator, in whatever order the threads ask). 2 and not more: only 2 cores were
    measured, and there two parts at once already run up to 1.3x slower each than one alone
    (shared caches and memory, not the GIL: two processes slow down as much; docs/performance.md,
    section 6). Not the thread count, which the load changes: the parts are what the result
    depends on."""
    return 2 if device.type == "cpu" and micro_batch % 2 == 0 and not whole else 1


def backward_in_parts(
    loss_of: Callable[[int, torch.Generator], Tensor],
    parts: int,
    generator: torch.Generator,
    params: list[Tensor],
) -> Tensor:
    """Backward of the sum of loss_of(j, gen) over the parts j; returns that sum, detached.

    One part: loss_of(0, generator).backward() here, hooks and all. More: part j gets a copy of
    `generator`, its gradients are taken by torch.autograd.grad and added to `params`' .grad in
    the order j = 0, 1, ...; the parts run at once, a thread each with threads // parts threads
    for their ops, when torch has a thread for each, else one after the other on this thread.
    `generator` then continues from where the copies ended, which must be one state (every part
    draws the randomness of the whole batch and keeps its share)."""
    if parts == 1:
        loss = loss_of(0, generator)
        loss.backward()
        return loss.detach()
    copies = [torch.Generator(generator.device) for _ in range(parts)]
    for copy in copies:
        copy.set_state(generator.get_state())

    def part(j: int) -> tuple[Tensor, tuple[Tensor | None, ...]]:
        loss = loss_of(j, copies[j])
        return loss.detach(), torch.autograd.grad(loss, params, allow_unused=True)

    threads = torch.get_num_threads()
    if threads < parts:
        results = [part(j) for j in range(parts)]
    else:
        torch.set_num_threads(threads // parts)
        try:
            results = list(_pool(parts).map(part, range(parts)))
        finally:
            torch.set_num_threads(threads)
    generator.set_state(copies[0].get_state())
    for _, grads in results:
        for p, g in zip(params, grads):
            if g is not None:
                p.grad = g if p.grad is None else p.grad + g
    return sum(loss for loss, _ in results)


@functools.cache
def _pool(workers: int) -> ThreadPoolExecutor:
    return ThreadPoolExecutor(workers, thread_name_prefix="ddim-part")
