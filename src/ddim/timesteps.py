"""Sampling grids: the decreasing subsequence tau of {0..T-1} that a sampler walks.

Every grid has exactly `steps` strictly decreasing integer timesteps in [0, T-1], for any
1 <= steps <= T, whether or not T is divisible by steps. The sampler's last step goes from
the smallest timestep in the grid to a = 1 (clean data) and returns the x0 estimate.

    trailing   round(T k / S) - 1, k = S..1: starts at T-1 (Lin et al. 2023, Table 2; equals
               lucidrains' grid when S divides T, where it truncates instead of rounding)
    leading    floor(T / S) * i, i = S-1..0 (diffusers' "leading")
    linspace   round(linspace(0, T-1, S)) reversed (diffusers' "linspace")
(round is half-up here; numpy's half-to-even makes diffusers differ by one at exact halves.)
    uniform    floor(T i / S), i = S-1..0 (DDIM paper, sec. D.2: tau_i = floor(c i))
    quadratic  floor(c i^2) with c such that tau_{S-1} = 0.8 T (DDIM paper, sec. D.2, CIFAR-10),
               raised where needed to stay strictly increasing
    logsnr     log-SNR uniform from the schedule's noisy end (t = T-1) to its clean end (t = 0)
               (Lu et al. 2022, DPM-Solver's skip_type "logSNR")
    karras     sigma_i = (s_max^(1/rho) + i/(S-1) (s_min^(1/rho) - s_max^(1/rho)))^rho, rho = 7
               (Karras et al. 2022, eq. 5), sigma = sqrt((1 - a)/a) at the schedule's ends

The last two need the schedule: their points are continuous log-SNR values, each mapped to the
integer timestep of nearest log-SNR, then raised (and capped at T-1) where rounding repeats one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ddim.errors import BadValue
from ddim.schedule import A_FLOOR, NoiseSchedule, log_snr

SPACINGS = ("trailing", "leading", "linspace", "uniform", "quadratic", "logsnr", "karras")
SCHEDULE_SPACINGS = ("logsnr", "karras")  # the grids that need the schedule
KARRAS_RHO = 7.0  # Karras et al. 2022, eq. 5 and Table 1


def make_timesteps(
    T: int,
    steps: int,
    spacing: str | Sequence[int] = "trailing",
    schedule: NoiseSchedule | None = None,
) -> Tensor:
    """The grid as an int64 tensor [steps], strictly decreasing, within [0, T-1].

    `spacing` is one of SPACINGS or an explicit sequence of timesteps (then `steps` must be
    its length, or None). The grids in SCHEDULE_SPACINGS need `schedule` (of T steps)."""
    if not isinstance(spacing, str):
        return validate_timesteps(T, spacing, steps)
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= T:
        raise BadValue(
            f"steps must be an integer from 1 to T = {T}, got {steps!r}; "
            "a sampler cannot take more steps than the schedule has timesteps"
        )
    S = steps
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
    elif spacing in SCHEDULE_SPACINGS:
        grid = _log_snr_grid(T, S, spacing, schedule)
    else:
        raise BadValue(
            f"unknown spacing {spacing!r}; choose one of {', '.join(SPACINGS)} or pass a list of timesteps"
        )
    return torch.tensor(grid[::-1], dtype=torch.int64)


def _log_snr_grid(T: int, S: int, spacing: str, schedule: NoiseSchedule | None) -> list[int]:
    """The increasing timesteps of a "logsnr" or "karras" grid of S points."""
    if schedule is None:
        raise BadValue(f"the {spacing!r} grid is placed by log-SNR: pass schedule= (the NoiseSchedule)")
    if schedule.T != T:
        raise BadValue(f"the schedule has T = {schedule.T} timesteps but the grid was asked for T = {T}")
    # log-SNR, decreasing in t; a below A_FLOOR read as A_FLOOR, so that the noisy end of a
    # zero-terminal-SNR schedule (log-SNR -inf) is finite, as in diffusers
    lam = log_snr(schedule.alphas_cumprod.clamp_min(A_FLOOR))
    lam_min, lam_max = lam[-1].item(), lam[0].item()
    if spacing == "logsnr":
        targets = torch.linspace(lam_min, lam_max, S, dtype=torch.float64)
    else:
        # Karras eq. 5 in sigma = exp(-log_snr / 2), from sigma_max (i = 0) down to sigma_min
        hi, lo = math.exp(-lam_min / 2) ** (1 / KARRAS_RHO), math.exp(-lam_max / 2) ** (1 / KARRAS_RHO)
        sigmas = (hi + torch.linspace(0, 1, S, dtype=torch.float64) * (lo - hi)) ** KARRAS_RHO
        targets = -2 * sigmas.log()
    # the integer timestep of nearest log-SNR (lam.flip(0) increases with j, where t = T-1-j)
    inc = lam.flip(0).contiguous()
    j = torch.searchsorted(inc, targets).clamp(max=T - 1)
    below = (j - 1).clamp(min=0)
    nearest = torch.where((targets - inc[below]).abs() <= (inc[j] - targets).abs(), below, j)
    grid = sorted(T - 1 - int(k) for k in nearest)
    for i in range(1, S):  # raise repeats (as "quadratic" does) ...
        grid[i] = max(grid[i], grid[i - 1] + 1)
    for i in range(S - 1, -1, -1):  # ... and keep the top within T-1
        grid[i] = min(grid[i], T - 1 if i == S - 1 else grid[i + 1] - 1)
    return grid


def validate_timesteps(T: int, timesteps: Sequence[int] | Tensor, steps: int | None = None) -> Tensor:
    """Check a custom grid and return it as an int64 tensor."""
    t = torch.as_tensor(timesteps)
    if t.ndim != 1 or len(t) == 0:
        raise BadValue(f"a custom grid must be a non-empty 1-D list of timesteps, got {timesteps!r}")
    if t.is_floating_point() and not bool((t == t.round()).all()):
        raise BadValue(f"a custom grid must hold integer timesteps, got {t.tolist()}")
    t = t.to(torch.int64)
    if steps is not None and steps != len(t):
        raise BadValue(
            f"steps = {steps} but the custom grid has {len(t)} timesteps; pass steps=None "
            "or a grid of that length"
        )
    if not bool(((t >= 0) & (t < T)).all()):
        raise BadValue(f"custom grid {t.tolist()} leaves [0, {T - 1}]: every timestep must lie in it")
    if len(t) > 1 and not bool((t[1:] < t[:-1]).all()):
        raise BadValue(
            f"custom grid {t.tolist()} is not strictly decreasing: list the timesteps from the "
            "noisiest (largest) to the cleanest, each once"
        )
    return t
