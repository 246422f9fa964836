"""Exponential moving average of the weights, as pure functions on tensors.

e <- d e + (1 - d) p        (Polyak averaging; the EMA of Ho et al. 2020, sec. 4, d = 0.9999)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ddim.errors import BadValue


def ema_decay_at(step: int, max_decay: float, warmup: bool = True) -> float:
    """The decay for update number `step` (0-based). With warm-up the average forgets its
    starting point quickly at first: min(max_decay, (1 + step) / (10 + step)), as TensorFlow's
    `ExponentialMovingAverage(num_updates=...)`."""
    if not warmup:
        return max_decay
    return min(max_decay, (1 + step) / (10 + step))


@torch.no_grad()
def ema_update(ema_params: Sequence[Tensor], params: Sequence[Tensor], decay: float) -> None:
    """In place: each e <- decay * e + (1 - decay) * p. Floating tensors only are averaged;
    others (integer buffers) are copied."""
    if len(ema_params) != len(params):
        raise BadValue(f"{len(ema_params)} EMA tensors but {len(params)} model tensors")
    floats = [(e, p) for e, p in zip(ema_params, params) if e.is_floating_point()]
    if floats:
        e, p = zip(*floats)
        torch._foreach_lerp_(list(e), [t.detach() for t in p], 1.0 - decay)  # e + (1-d)(p - e)
    for e, p in zip(ema_params, params):
        if not e.is_floating_point():
            e.copy_(p)
