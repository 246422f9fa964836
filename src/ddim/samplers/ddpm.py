"""DDPM ancestral sampling (Ho et al. 2020, Alg. 2) on any grid of timesteps.

Between grid points t > s the effective step has beta = 1 - a_t/a_s (DDIM sec. 4.2), and the
posterior q(x_s | x_t, x0) is Ho et al. eq. 7 with that beta. a_next = a_s, the a of the next
grid point (1 after the last); `posterior_variance` keeps the paper's a_prev = alpha-bar_{t-1}.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from ddim.errors import BadValue
from ddim.noise import Generators
from ddim.prediction import Predict
from ddim.samplers._common import Callback, grid_steps, step_noise
from ddim.schedule import NoiseSchedule

VARIANCES = ("posterior", "beta")


def posterior_variance(a_t: float, a_prev: float) -> float:
    """Ho et al. 2020, eq. 7: beta-tilde = (1 - a_prev)/(1 - a_t) beta, beta = 1 - a_t/a_prev."""
    return (1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)


def ddpm(
    predict: Predict,
    x: Tensor,
    schedule: NoiseSchedule,
    timesteps: Sequence[int] | Tensor,
    *,
    variance: str = "posterior",
    generator: Generators = None,
    noise: Tensor | None = None,
    callback: Callback | None = None,
) -> Tensor:
    """Ancestral sampling with the posterior variance beta-tilde ("posterior") or the larger
    beta ("beta": Ho et al. sec. 3.2; the DDIM paper's sigma-hat, Table 1). The last step to
    clean data adds no noise and returns the x0 estimate."""
    if variance not in VARIANCES:
        raise BadValue(f"unknown variance {variance!r}; choose one of {', '.join(VARIANCES)}")
    steps = grid_steps(schedule, timesteps)
    z_at = step_noise(noise, generator, x, len(steps))
    x0 = None
    for i, (t, a_t, a_next) in enumerate(steps):
        eps, x0 = predict(x, t, x0)
        beta = 1 - a_t / a_next
        # Ho et al. 2020, eq. 7: the posterior mean from x0 and x_t
        x = (a_next**0.5 * beta / (1 - a_t)) * x0 + ((1 - beta) ** 0.5 * (1 - a_next) / (1 - a_t)) * x
        if a_next < 1.0:
            var = posterior_variance(a_t, a_next) if variance == "posterior" else beta
            x = x + var**0.5 * z_at(i)
        if callback is not None:
            callback(i, t, x, x0)
    return x
