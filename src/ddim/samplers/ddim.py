"""DDIM sampling (Song, Meng, Ermon 2020) for any eta >= 0, and the deterministic DDIM encoder.

Notation: a_t = alphas_cumprod[t], a_next = a at the next grid point of the decreasing walk
(1 after the last one). The formulas of the paper (`ddim_sigma`, `max_eta`) keep its symbol
a_prev = alpha_{t-1} (alpha_{tau_{i-1}} on a sub-grid, sec. 4.2), which is the walk's a_next.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor

from ddim.errors import BadValue
from ddim.noise import Generators
from ddim.prediction import Predict, x0_from_eps
from ddim.samplers._common import Callback, Step, ddim_move, grid_steps, step_noise
from ddim.schedule import NoiseSchedule


def ddim_sigma(a_t: float, a_prev: float, eta: float) -> float:
    """DDIM eq. 16: sigma = eta sqrt((1 - a_prev)/(1 - a_t)) sqrt(1 - a_t/a_prev).
    At eta = 1 this is the DDPM posterior standard deviation sqrt(beta-tilde) (Ho et al. eq. 7)."""
    return eta * ((1 - a_prev) / (1 - a_t)) ** 0.5 * (1 - a_t / a_prev) ** 0.5


def max_eta(steps: Sequence[Step]) -> float:
    """The largest eta for which DDIM eq. 12 is defined on these steps: 1 - a_prev - sigma^2 >= 0
    with sigma from eq. 16 holds iff eta^2 <= a_prev (1 - a_t) / (a_prev - a_t) (always >= 1)."""
    bounds = [(p * (1 - a) / (p - a)) ** 0.5 for _, a, p in steps if p < 1 and p > a]
    return min(bounds, default=math.inf)


def ddim(
    predict: Predict,
    x: Tensor,
    schedule: NoiseSchedule,
    timesteps: Sequence[int] | Tensor,
    *,
    eta: float = 0.0,
    generator: Generators = None,
    noise: Tensor | None = None,
    callback: Callback | None = None,
) -> Tensor:
    """Walk x = x_T down the grid with DDIM eq. 12; return the final x0 estimate.

    eta = 0 is deterministic (the probability-flow ODE's DDIM discretisation); eta = 1 is DDPM's
    ancestral sampler on this grid. Noise comes from `generator` (one stream per example) or
    `noise` [steps, *x.shape]."""
    if not eta >= 0:
        raise BadValue(f"eta must be >= 0 (0: deterministic DDIM, 1: DDPM), got {eta}")
    steps = grid_steps(schedule, timesteps)
    if eta > 1 and eta > (largest := max_eta(steps)):
        raise BadValue(
            f"eta = {eta} leaves DDIM eq. 12 undefined on this grid (1 - a_next - sigma^2 < 0): "
            f"use eta <= {largest:.6g}"
        )
    # eta = 0 draws nothing, so it takes nothing from `generator`
    z_at = step_noise(noise, generator, x, len(steps)) if eta > 0 or noise is not None else None
    x0 = None
    for i, (t, a_t, a_next) in enumerate(steps):
        eps, x0 = predict(x, t, x0)
        sigma = ddim_sigma(a_t, a_next, eta)
        x_prev = ddim_move(x0, eps, a_next, sigma)  # DDIM eq. 12
        if sigma > 0:
            x_prev = x_prev + sigma * z_at(i)
        x = x_prev
        if callback is not None:
            callback(i, t, x, x0)
    return x


def ddim_invert(
    predict: Predict,
    x0: Tensor,
    schedule: NoiseSchedule,
    timesteps: Sequence[int] | Tensor,
    *,
    refine: int = 0,
    callback: Callback | None = None,
) -> Tensor:
    """The DDIM encoder x0 -> x_T (DDIM sec. 4.3 / 5.4): eq. 12 with eta = 0 run upwards along
    the same (decreasing) grid, so that `ddim(predict, x_T, ...)` decodes it back.

    Each move a_cur -> a_t uses eps = model(x_cur, t), evaluated at the timestep it moves to,
    since that is where the decoder will evaluate it. `refine` > 0 repeats the move with eps
    re-evaluated at the new point (a fixed-point iteration), which makes the move the exact
    inverse of the decoder's step at convergence."""
    if refine < 0:
        raise BadValue(f"refine must be >= 0, got {refine}")
    steps = grid_steps(schedule, timesteps)[::-1]
    x, a_cur, x0_est = x0, 1.0, None
    for i, (t, a_t, _) in enumerate(steps):
        eps, x0_est = predict(x, t, x0_est)
        x_next = ddim_move(x0_from_eps(x, eps, a_cur), eps, a_t)
        for _ in range(refine):
            eps, x0_est = predict(x_next, t, x0_est)
            x_next = ddim_move(x0_from_eps(x, eps, a_cur), eps, a_t)
        x, a_cur = x_next, a_t
        if callback is not None:
            callback(i, t, x, x0_est)
    return x
