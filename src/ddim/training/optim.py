"""The optimizer and its learning-rate schedule."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

FUSED_DEVICES = ("cpu", "cuda")


def adamw(
    params: Iterable[nn.Parameter], lr: float, weight_decay: float, device: torch.device
) -> torch.optim.AdamW:
    """AdamW (Loshchilov & Hutter 2019), fused into one kernel over all parameters where torch has
    one (the CPU and CUDA): the same update as the per-tensor loop, a few percent of a small
    model's CPU step faster (docs/performance.md). A checkpoint keeps the choice it was made with,
    so a run resumes with the kernel it started with."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=device.type in FUSED_DEVICES)


def lr_at(step: int, base: float, warmup: int) -> float:
    """Linear warm-up to `base` over the first `warmup` steps (Goyal et al. 2017, sec. 2.2), then
    constant; `step` is 0-based, so step warmup - 1 is the first at the full rate."""
    if warmup <= 0:
        return base
    return base * min(1.0, (step + 1) / warmup)
