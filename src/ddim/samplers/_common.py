"""Shared pieces of the samplers: the per-step schedule values, the per-step noise of the
stochastic ones, the deterministic DDIM move, and the log-SNR and order bookkeeping of the
multistep solvers."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

from torch import Tensor

from ddim.errors import BadValue
from ddim.noise import Generators, PerSampleNoise
from ddim.schedule import NoiseSchedule, log_snr

Callback = Callable[[int, int, Tensor, Tensor], None]  # (i, t, x, x0_estimate)


class Step(NamedTuple):
    t: int  # the timestep the model is evaluated at
    a_t: float  # alphas_cumprod[t]
    a_next: float  # alphas_cumprod of the next grid point; 1.0 after the last (clean data)


def grid_steps(schedule: NoiseSchedule, timesteps: Sequence[int] | Tensor) -> list[Step]:
    """The steps of a decreasing grid with their a values, as Python floats computed once in
    float64 on the CPU, so the sampling loop never reads a device tensor back to the host."""
    ts = [int(t) for t in timesteps]
    if any(b >= a for a, b in zip(ts, ts[1:])):
        raise BadValue(f"timesteps must be strictly decreasing, got {ts}")
    if ts and not 0 <= ts[-1] <= ts[0] < schedule.T:
        raise BadValue(f"timesteps must lie in [0, {schedule.T - 1}], got {ts}")
    a = schedule.alphas_cumprod.tolist()
    return [Step(t, a[t], a[ts[i + 1]] if i + 1 < len(ts) else 1.0) for i, t in enumerate(ts)]


def step_noise(noise: Tensor | None, generator: Generators, x: Tensor, steps: int) -> Callable[[int], Tensor]:
    """z_i [N, ...] for step i of a stochastic sampler: `noise[i]` when `noise` [steps, *x.shape]
    is given, else the next draw of each example's stream from `generator`."""
    if noise is not None:
        if noise.shape != (steps, *x.shape):
            raise BadValue(f"noise must have shape {(steps, *x.shape)}, got {tuple(noise.shape)}")
        return lambda i: noise[i].to(x)
    source = PerSampleNoise.from_generators(generator, len(x))
    return lambda i: source.randn(x.shape[1:], x.device, x.dtype)


def ddim_move(x0: Tensor, eps: Tensor, a_next: float, sigma: float = 0.0) -> Tensor:
    """DDIM eq. 12 without its noise term: sqrt(a_next) x0 + sqrt(1 - a_next - sigma^2) eps."""
    return (x0 * a_next**0.5).add_(eps, alpha=max(1.0 - a_next - sigma**2, 0.0) ** 0.5)


def half_log_snr(a: float) -> float:
    """DPM-Solver's lambda = log(alpha / sigma), half the log-SNR (Lu et al. 2022, sec. 2), for
    a < 1; -inf at a = 0 (zero terminal SNR), where the step-size ratio r = h_prev / h of the
    next multistep update becomes infinite and its correction (~ 1/r) vanishes."""
    return 0.5 * log_snr(a)  # log-SNR is computed in one place, schedule.log_snr


def multistep_order(i: int, n: int, order: int, lower_order_final: bool) -> int:
    """The order of step i of n for a multistep method of `order`: at most i + 1 while the
    history fills (warm-up, Lu et al. 2022, Alg. 2), 1 on the last step, which goes to a = 1
    (lambda = +inf) and returns the data prediction, and, with `lower_order_final`, at most
    n - i on the steps before it (diffusers' `lower_order_final`)."""
    if i == n - 1:
        return 1
    return min(order, i + 1, n - i) if lower_order_final else min(order, i + 1)
