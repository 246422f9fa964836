"""The learning-rate schedule, a pure function of the step."""

from __future__ import annotations


def lr_at(step: int, base: float, warmup: int) -> float:
    """Linear warm-up to `base` over the first `warmup` steps (Goyal et al. 2017, sec. 2.2), then
    constant; `step` is 0-based, so step warmup - 1 is the first at the full rate."""
    if warmup <= 0:
        return base
    return base * min(1.0, (step + 1) / warmup)
