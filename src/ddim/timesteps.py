"""Sampling grids: the decreasing subsequence tau of {0..T-1} that a sampler walks.

Every grid has exactly `steps` strictly decreasing integer timesteps in [0, T-1], for any
1 <= steps <= T, whether or not T is divisible by steps. The sampler's last step goes from
the smallest timestep in the grid to a = 1 (clean data) and returns the x0 estimate.

    trailing   round(T k / S) - 1, k = S..1: starts at T-1 (lucidrains; Lin et al. 2023, Table 2)
    leading    floor(T / S) * i, i = S-1..0 (diffusers' "leading")
    linspace   round(linspace(0, T-1, S)) reversed (diffusers' "linspace")
    uniform    floor(T i / S), i = S-1..0 (DDIM paper, sec. D.2: tau_i = floor(c i))
    quadratic  floor(c i^2) with c such that tau_{S-1} = 0.8 T (DDIM paper, sec. D.2, CIFAR-10),
               raised where needed to stay strictly increasing
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

SPACINGS = ("trailing", "leading", "linspace", "uniform", "quadratic")


def make_timesteps(T: int, steps: int, spacing: str | Sequence[int] = "trailing") -> Tensor:  # noqa: N803
    """The grid as an int64 tensor [steps], strictly decreasing, within [0, T-1].

    `spacing` is one of SPACINGS or an explicit sequence of timesteps (then `steps` must be
    its length, or None)."""
    if not isinstance(spacing, str):
        return validate_timesteps(T, spacing, steps)
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= T:
        raise ValueError(
            f"steps must be an integer from 1 to T = {T}, got {steps!r}; "
            "a sampler cannot take more steps than the schedule has timesteps"
        )
    S = steps  # noqa: N806
    if spacing == "trailing":
        grid = [math.floor(T * k / S + 0.5) - 1 for k in range(1, S + 1)]
    elif spacing == "leading":
        grid = [(T // S) * i for i in range(S)]
    elif spacing == "linspace":
        grid = [math.floor((T - 1) * i / (S - 1) + 0.5) if S > 1 else 0 for i in range(S)]
    elif spacing == "uniform":
        grid = [(T * i) // S for i in range(S)]
    elif spacing == "quadratic":
        c = 0.8 * T / max(S - 1, 1) ** 2
        grid = []
        for i in range(S):
            grid.append(max(math.floor(c * i * i), grid[-1] + 1 if grid else 0))
    else:
        raise ValueError(
            f"unknown spacing {spacing!r}; choose one of {', '.join(SPACINGS)} or pass a list of timesteps"
        )
    return torch.tensor(grid[::-1], dtype=torch.int64)


def validate_timesteps(T: int, timesteps: Sequence[int] | Tensor, steps: int | None = None) -> Tensor:  # noqa: N803
    """Check a custom grid and return it as an int64 tensor."""
    t = torch.as_tensor(timesteps)
    if t.ndim != 1 or len(t) == 0:
        raise ValueError(f"a custom grid must be a non-empty 1-D list of timesteps, got {timesteps!r}")
    if t.is_floating_point() and not bool((t == t.round()).all()):
        raise ValueError(f"a custom grid must hold integer timesteps, got {t.tolist()}")
    t = t.to(torch.int64)
    if steps is not None and steps != len(t):
        raise ValueError(
            f"steps = {steps} but the custom grid has {len(t)} timesteps; pass steps=None "
            "or a grid of that length"
        )
    if not bool(((t >= 0) & (t < T)).all()):
        raise ValueError(f"custom grid {t.tolist()} leaves [0, {T - 1}]: every timestep must lie in it")
    if len(t) > 1 and not bool((t[1:] < t[:-1]).all()):
        raise ValueError(
            f"custom grid {t.tolist()} is not strictly decreasing: list the timesteps from the "
            "noisiest (largest) to the cleanest, each once"
        )
    return t
