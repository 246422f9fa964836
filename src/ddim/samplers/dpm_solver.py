"""DPM-Solver++ multistep samplers in data-prediction form (Lu et al. 2022, "DPM-Solver++"):
2M (their Alg. 2) and 3M (the third-order multistep update of dpm-solver's code and diffusers'
DPMSolverMultistepScheduler, with its second difference corrected: see `dpmpp_correction`), on
any grid and for any prediction target.

Notation (Lu et al.): alpha = sqrt(a), sigma = sqrt(1 - a), lambda = log(alpha / sigma);
a step goes from s = t_i to t = the next grid point, h = lambda_t - lambda_s; m0, m1, m2 are the
x0 predictions at t_i, t_{i-1}, t_{i-2}, and r0 = h_{i-1} / h, r1 = h_{i-2} / h the ratios of the
earlier step sizes to this one; phi1 = 1 - e^-h.

Every update is the DDIM step plus a correction of the data prediction:
    x_t = sigma_t / sigma_s x_s + alpha_t phi1 m0       (= DDIM eq. 12 with eta = 0: DPM-Solver++(1))
        + alpha_t C,  C from the x0 history (below).
The last step goes to a = 1 (lambda = +inf), where only the first-order step is defined: it
returns the data prediction m0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor

from ddim.errors import BadValue
from ddim.noise import Generators
from ddim.prediction import Predict
from ddim.samplers._common import Callback, ddim_move, grid_steps, half_log_snr, multistep_order
from ddim.schedule import NoiseSchedule


def dpmpp_correction(ms: Sequence[Tensor], lams: Sequence[float], lam_t: float) -> Tensor | float:
    """C for the multistep update of order len(ms) (1, 2 or 3) to lambda_t; `ms` and `lams` hold
    the x0 predictions and lambdas at the last grid points, the newest last."""
    p = len(ms)
    if p == 1:
        return 0.0
    h = lam_t - lams[-1]
    phi1 = -math.expm1(-h)
    r0 = (lams[-1] - lams[-2]) / h
    d1_0 = (ms[-1] - ms[-2]) / r0
    if p == 2:
        # Lu et al. 2022, Alg. 2: D = (1 + 1/(2r)) m0 - 1/(2r) m1, i.e. C = phi1 (m0 - m1) / (2r)
        return (phi1 / 2) * d1_0
    # third order (the multistep update of diffusers' multistep_dpm_solver_third_order_update,
    # "dpmsolver++"): with D1 ~ h x0' and D2 ~ h^2 x0'' (Taylor in lambda around s),
    # D1 = D1_0 + r0/(r0 + r1) (D1_0 - D1_1),  D2 = 2 (D1_0 - D1_1)/(r0 + r1),
    # C = (1 - phi1/h) D1 - ((h - phi1)/h^2 - 1/2) D2.
    # diffusers (and dpm-solver's multistep order 3) take D2 without the factor 2, which is half
    # h^2 x0'' and leaves the method second order (tests/test_higher_order.py shows both).
    r1 = (lams[-2] - lams[-3]) / h
    d1_1 = (ms[-2] - ms[-3]) / r1
    d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
    d2 = (2 / (r0 + r1)) * (d1_0 - d1_1)
    return (1 - phi1 / h) * d1 - ((h - phi1) / h**2 - 0.5) * d2


def dpm_solver_pp(
    predict: Predict,
    x: Tensor,
    schedule: NoiseSchedule,
    timesteps: Sequence[int] | Tensor,
    *,
    order: int = 2,
    lower_order_final: bool = True,
    generator: Generators = None,
    callback: Callback | None = None,
) -> Tensor:
    """DPM-Solver++(order M) from x = x_T down the grid; returns the final x0 estimate.

    One model call per step. The order is 1 on the first step and grows as the history of x0
    predictions fills (warm-up); the step to a = 1 is first order (it returns the x0 prediction);
    `lower_order_final` also caps the order at the steps before it (see `multistep_order`; no
    effect at order 2).
    Deterministic: `generator` is accepted for the common signature and not used. All history
    is local to the call."""
    if order not in (1, 2, 3):
        raise BadValue(f"DPM-Solver++ is implemented for order 1, 2 or 3, got {order}")
    steps = grid_steps(schedule, timesteps)
    ms: list[Tensor] = []  # x0 predictions at the last `order` grid points, newest last
    lams: list[float] = []
    x0 = None
    for i, (t, a_t, a_next) in enumerate(steps):
        eps, x0 = predict(x, t, x0)
        ms, lams = [*ms, x0][-order:], [*lams, half_log_snr(a_t)][-order:]
        p = multistep_order(i, len(steps), order, lower_order_final)
        x = ddim_move(x0, eps, a_next)  # DDIM eq. 12 = DPM-Solver++(1)
        if p > 1:
            x = x + a_next**0.5 * dpmpp_correction(ms[-p:], lams[-p:], half_log_snr(a_next))
        if callback is not None:
            callback(i, t, x, x0)
    return x
