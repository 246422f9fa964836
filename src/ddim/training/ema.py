"""Exponential moving average of the weights, as pure functions on tensors.

e <- d e + (1 - d) p        (Polyak averaging; the EMA of Ho et al. 2020, sec. 4, d = 0.9999)

The decay d of update t (1-based) follows a warm-up profile, capped by the configured decay:
- "power": d = (1 - 1/t)^(gamma + 1), Karras et al. 2024 (EDM2), eq. 3. The average then always
  spans the same fraction of the run so far (relative width sigma_rel, EDM2 eq. 2), so one setting
  suits a run of 300 steps and one of 100,000 alike; the cap takes over after ~(gamma + 1) / (1 - d_max)
  updates.
- "tf": d = (1 + n) / (10 + n) with n = t - 1, TensorFlow's `ExponentialMovingAverage(num_updates=)`.
- "none": the configured decay from the first update.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ddim.config import EMA_WARMUPS
from ddim.errors import BadValue

POWER_SIGMA_REL = 0.10  # EDM2's relative EMA width; 0.05-0.15 were best in its sweeps (fig. 5)


def power_sigma_rel(gamma: float) -> float:
    """The relative standard deviation of the power-function EMA with exponent gamma (EDM2 eq. 2)."""
    return math.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)))


def power_gamma(sigma_rel: float) -> float:
    """The exponent whose profile has relative width sigma_rel: the inverse of `power_sigma_rel`
    (decreasing in gamma), by bisection."""
    lo, hi = 0.0, 1e6
    if not power_sigma_rel(hi) < sigma_rel < power_sigma_rel(lo):
        raise BadValue(
            f"sigma_rel must lie in ({power_sigma_rel(hi):.2g}, {power_sigma_rel(lo):.3f}), got {sigma_rel}"
        )
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if power_sigma_rel(mid) > sigma_rel else (lo, mid)
    return (lo + hi) / 2


POWER_GAMMA = power_gamma(POWER_SIGMA_REL)  # 6.94


def ema_decay_at(step: int, max_decay: float, warmup: str = "power") -> float:
    """The decay for update number `step` (0-based) under the warm-up profile `warmup` (one of
    EMA_WARMUPS; see the module docstring), never above `max_decay`."""
    if warmup == "power":
        t = step + 1
        return min(max_decay, (1 - 1 / t) ** (POWER_GAMMA + 1))
    if warmup == "tf":
        return min(max_decay, (1 + step) / (10 + step))
    if warmup == "none":
        return max_decay
    raise BadValue(f"EMA warm-up must be one of {EMA_WARMUPS}, got {warmup!r}")


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
