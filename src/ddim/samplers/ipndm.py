"""iPNDM (Zhang and Chen 2023, "Fast Sampling of Diffusion Models with Exponential Integrator",
sec. 4 and App. B: the improved pseudo numerical method of Liu et al. 2022, "PNDM"): the linear
multistep (Adams-Bashforth) method of PNDM on the probability-flow ODE in the form
    dx~/dsigma = eps(x, t),   x~ = x / sqrt(a),   sigma = sqrt((1 - a) / a)
(Karras et al. 2022, eq. 3; see karras.py), with PNDM's Runge-Kutta warm-up replaced by
lower-order multistep steps, so that every step costs one model call:
    x~' = x~ + (sigma' - sigma) e',   e' = the Adams-Bashforth combination of the last eps:
    e' = e0,  (3 e0 - e1)/2,  (23 e0 - 16 e1 + 5 e2)/12,  (55 e0 - 59 e1 + 37 e2 - 9 e3)/24
(orders 1-4, e0 the newest; Liu et al. 2022, eq. 12; the DEIS authors' and AMED's `ipndm` code).
Order 1 is DDIM eq. 12. These fixed coefficients assume equal steps in sigma; `variable=True`
takes the variable-step Adams-Bashforth coefficients instead (the integral over [sigma, sigma']
of the polynomial through the last eps at their own sigma: AMED's "iPNDM_v", Zhou et al. 2024).

The step is computed as sqrt(a') (x0 + sigma' e' + sigma (e0 - e')), which equals
sqrt(a') (x~ + (sigma' - sigma) e') with x~ = x0 + sigma e0, without forming x / sqrt(a); a below
A_FLOOR (zero terminal SNR) is read there as A_FLOOR, as in karras.py. The last step goes to
sigma = 0 (a = 1) and is first order: it returns the x0 prediction (as DPM-Solver++ does).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ddim.errors import BadValue
from ddim.noise import Generators
from ddim.prediction import A_FLOOR, Predict
from ddim.samplers._common import Callback, grid_steps
from ddim.samplers.karras import karras_sigma
from ddim.schedule import NoiseSchedule

# Adams-Bashforth coefficients for equal steps, newest first (Liu et al. 2022, eq. 12 for order 4)
AB_FIXED = ((1.0,), (1.5, -0.5), (23 / 12, -16 / 12, 5 / 12), (55 / 24, -59 / 24, 37 / 24, -9 / 24))


def ab_coefficients(sigmas: Sequence[float], sigma_next: float) -> list[float]:
    """Variable-step Adams-Bashforth weights w_j (newest first) such that
    sum_j w_j e(sigma_j) = 1/(sigma' - sigma_0) int_{sigma_0}^{sigma'} p(s) ds for the polynomial
    p through the points (sigma_j, e_j): the integrals of the Lagrange basis, found by
    solving the Vandermonde system sum_j w_j u_j^k = mean of u^k over the step (u = sigma - sigma_0)."""
    u = torch.tensor([s - sigmas[0] for s in sigmas], dtype=torch.float64)
    h = sigma_next - sigmas[0]
    k = torch.arange(len(sigmas), dtype=torch.float64)
    moments = h**k / (k + 1)  # (1/h) int_0^h u^k du
    return torch.linalg.solve(u[None, :] ** k[:, None], moments).tolist()


def ipndm(
    predict: Predict,
    x: Tensor,
    schedule: NoiseSchedule,
    timesteps: Sequence[int] | Tensor,
    *,
    order: int = 4,
    variable: bool = False,
    generator: Generators = None,
    callback: Callback | None = None,
) -> Tensor:
    """iPNDM of `order` (1-4; default 4, as in Zhang and Chen 2023) from x = x_T down the grid;
    returns the final x0 estimate. One model call per step; step i uses min(order, i + 1) eps
    (warm-up), and the last, to sigma = 0, is first order: it returns the x0 prediction, as every
    sampler here does.
    `variable` takes variable-step coefficients (see the module docstring). Deterministic:
    `generator` is accepted for the common signature and not used. All history is local."""
    if order not in (1, 2, 3, 4):
        raise BadValue(f"iPNDM is implemented for order 1, 2, 3 or 4, got {order}")
    steps = grid_steps(schedule, timesteps)
    history: list[Tensor] = []  # eps at the last `order` grid points, newest first
    sigmas: list[float] = []
    x0 = None
    for i, (t, a_t, a_next) in enumerate(steps):
        eps, x0 = predict(x, t, x0)
        sigma, sigma_next = karras_sigma(max(a_t, A_FLOOR)), karras_sigma(a_next)
        history, sigmas = [eps, *history][:order], [sigma, *sigmas][:order]
        p = 1 if i == len(steps) - 1 else len(history)
        weights = ab_coefficients(sigmas, sigma_next) if variable and p > 1 else AB_FIXED[p - 1]
        e = sum(w * h for w, h in zip(weights, history)) if p > 1 else eps
        # x~' = x~ + (sigma' - sigma) e' with x~ = x0 + sigma e0 (Karras et al. 2022, eq. 3)
        x_tilde = x0 + sigma_next * e
        if p > 1:
            x_tilde = x_tilde + sigma * (eps - e)
        x = a_next**0.5 * x_tilde
        if callback is not None:
            callback(i, t, x, x0)
    return x
