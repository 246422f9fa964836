"""Euler and Heun (Karras et al. 2022, "Elucidating the Design Space...", Alg. 1 and 2,
deterministic) on the discrete schedule.

The variance-preserving x_t = sqrt(a) x0 + sqrt(1 - a) eps is read in the variance-exploding
form of Karras et al. (their eq. 1 with s(t) = sqrt(a)):
    sigma(t) = sqrt((1 - a_t) / a_t),   x~ = x / sqrt(a_t) = x0 + sigma eps,
    D(x~; sigma) = the x0 prediction at x = sqrt(a_t) x~,   dx~/dsigma = (x~ - D) / sigma = eps  (eq. 3)
and the step to the grid's end goes to sigma = 0 (a = 1). Any grid works; the "karras" spacing
(rho = 7) is the one of the paper. The Euler step x~ + (sigma' - sigma) d equals D + sigma' d, which
is how it is computed (x / sqrt(a) is never formed: no cancellation at large sigma, nothing
infinite at a = 0); times sqrt(a') it is exactly DDIM's step with eta = 0. Heun's correction
weighs by sigma' - sigma, so a below A_FLOOR (zero terminal SNR: sigma = inf) is read there as
A_FLOOR, as the predictor reads it (diffusers does the same).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from ddim.noise import Generators
from ddim.prediction import A_FLOOR, Predict
from ddim.samplers._common import Callback, grid_steps
from ddim.schedule import NoiseSchedule


def karras_sigma(a: float) -> float:
    """sigma = sqrt((1 - a) / a), the noise level of the VE form; 0 at a = 1."""
    return ((1 - a) / a) ** 0.5


def euler(
    predict: Predict,
    x: Tensor,
    schedule: NoiseSchedule,
    timesteps: Sequence[int] | Tensor,
    *,
    generator: Generators = None,
    callback: Callback | None = None,
) -> Tensor:
    """Karras et al. 2022, Alg. 1 with the deterministic Euler step (Alg. 2 without its
    correction): one model call per step; the same result as `ddim` with eta = 0. Deterministic:
    `generator` is accepted for the common signature and not used."""
    return _karras(predict, x, schedule, timesteps, heun=False, callback=callback)


def heun(
    predict: Predict,
    x: Tensor,
    schedule: NoiseSchedule,
    timesteps: Sequence[int] | Tensor,
    *,
    generator: Generators = None,
    callback: Callback | None = None,
) -> Tensor:
    """Karras et al. 2022, Alg. 2 (deterministic, S_churn = 0): Heun's second-order step, with the
    second evaluation at the next grid timestep; the last step, to sigma = 0, is an Euler step
    (Alg. 2, line 9), so `steps` grid points cost 2 steps - 1 model calls. Deterministic:
    `generator` is accepted for the common signature and not used."""
    return _karras(predict, x, schedule, timesteps, heun=True, callback=callback)


def _karras(
    predict: Predict,
    x: Tensor,
    schedule: NoiseSchedule,
    timesteps: Sequence[int] | Tensor,
    heun: bool,
    callback: Callback | None,
) -> Tensor:
    steps = grid_steps(schedule, timesteps)
    x0 = None
    for i, (t, a_t, a_next) in enumerate(steps):
        eps, x0 = predict(x, t, x0)
        sigma, sigma_next = karras_sigma(max(a_t, A_FLOOR)), karras_sigma(a_next)
        # Alg. 2, lines 4-5: d = (x~ - D)/sigma, which is the predictor's eps, and the Euler step
        # x~' = x~ + (sigma' - sigma) d, written as D + sigma' d (x~ = D + sigma d): no x / sqrt(a)
        x_tilde = x0 + sigma_next * eps
        if heun and i + 1 < len(steps):  # line 6: sigma' > 0
            eps_next, _ = predict(a_next**0.5 * x_tilde, steps[i + 1].t, x0)  # line 7: d' = eps'
            x_tilde = x_tilde + (sigma_next - sigma) * (eps_next - eps) / 2  # line 8: (d + d')/2 for d
        x = a_next**0.5 * x_tilde
        if callback is not None:
            callback(i, t, x, x0)
    return x
