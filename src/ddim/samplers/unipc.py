"""UniPC (Zhao et al. 2023, "UniPC: A Unified Predictor-Corrector Framework for Fast Sampling of
Diffusion Models"), sec. 3: the B(h) = e^h - 1 variant ("bh2") in data prediction, as in the
authors' uni_pc.py (`multistep_uni_pc_bh_update`) and diffusers' UniPCMultistepScheduler.

Notation as in dpm_solver.py: lambda = log(alpha / sigma), h = lambda_t - lambda_s, phi1 = 1 - e^-h;
m0 = the x0 prediction at s, m_k at the k-th grid point before s, r_k = (lambda_{s_k} - lambda_s)/h.
    UniP-p:  x_t = DDIM(x_s -> t) + alpha_t phi1 sum_k rho_k D_k,  D_k = (m_k - m0)/r_k,
             over the p - 1 earlier points;
    UniC-p:  the same from x_s to t with one more term, r = 1 and D = m_t - m0, where m_t is the
             model's x0 at the predicted x_t; that one evaluation also feeds the next UniP, so
             the corrector costs no model call.
rho solves sum_k rho_k r_k^(i-1) = i! h phi_(i+1)(h) / B(h), i = 1..K (the order conditions);
for a single term (K = 1) the authors' simplified rho = 1/2 is used, which makes UniP-2 exactly
DPM-Solver++(2M).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from ddim.errors import BadValue
from ddim.noise import Generators
from ddim.prediction import Predict, eps_from_x0
from ddim.samplers._common import Callback, ddim_move, grid_steps, half_log_snr, multistep_order
from ddim.schedule import NoiseSchedule


def unipc_rhos(rks: Sequence[float], h: float) -> list[float]:
    """rho_1..rho_K for the ratios r_1..r_K (B(h) = e^h - 1; the authors' recursion for
    i! phi_(i+1), computed in the data-prediction sign hh = -h)."""
    if len(rks) == 1:
        return [0.5]
    hh = -h
    b_h = math.expm1(hh)
    h_phi_k, factorial = math.expm1(hh) / hh - 1, 1
    b = []
    for i in range(1, len(rks) + 1):
        b.append(h_phi_k * factorial / b_h)
        factorial *= i + 1
        h_phi_k = h_phi_k / hh - 1 / factorial
    r = torch.tensor(rks, dtype=torch.float64)
    R = torch.stack([r**k for k in range(len(rks))])  # the paper's matrix
    return torch.linalg.solve(R, torch.tensor(b, dtype=torch.float64)).tolist()


def unipc_correction(
    ms: Sequence[Tensor], lams: Sequence[float], lam_t: float, m_t: Tensor | None = None
) -> Tensor | float:
    """(x_t - DDIM(x_s -> t)) / alpha_t for UniP of order len(ms), or, given the new x0 prediction
    m_t, for UniC; `ms` and `lams` hold the history at the last grid points, the newest (s) last."""
    h = lam_t - lams[-1]
    rks, ds = [], []
    for m_k, lam_k in zip(ms[-2::-1], lams[-2::-1]):
        if lam_k > -math.inf:  # a point at a = 0 tells nothing of x0's slope in lambda
            rks.append((lam_k - lams[-1]) / h)
            ds.append((m_k - ms[-1]) / rks[-1])
    if m_t is not None:
        rks, ds = [*rks, 1.0], [*ds, m_t - ms[-1]]
    if not ds:
        return 0.0
    phi1 = -math.expm1(-h)
    return phi1 * sum(rho * d for rho, d in zip(unipc_rhos(rks, h), ds))


def unipc(
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
    """UniPC-p (p = `order`: UniP-p with UniC, of order p + 1 by Zhao et al.; measured 2 and 3 for
    p = 1 and 2, and about 3.2 to 3.8 for p = 3) from x = x_T down the grid; returns the final x0
    estimate.

    One model call per step. Warm-up and the final steps lower the order as `multistep_order`
    says; the step to a = 1 returns the x0 prediction, so the corrector, whose result that step
    would ignore, runs at every grid point but the first and the last. Deterministic:
    `generator` is accepted for the common signature and not used. All history is local."""
    if order not in (1, 2, 3):
        raise BadValue(f"UniPC is implemented for order 1, 2 or 3, got {order}")
    steps = grid_steps(schedule, timesteps)
    ms: list[Tensor] = []  # x0 predictions at the last `order` grid points, newest last
    lams: list[float] = []
    x0, eps, p = None, None, 1
    for i, (t, a_t, a_next) in enumerate(steps):
        eps_t, x0 = predict(x, t, x0)
        lam_t = half_log_snr(a_t)
        if 0 < i < len(steps) - 1:
            # UniC from the previous point, with the order its UniP used; the model's x0 at the
            # uncorrected point is then read at the corrected one (as the authors' code does)
            x = ddim_move(ms[-1], eps, a_t) + a_t**0.5 * unipc_correction(ms[-p:], lams[-p:], lam_t, x0)
            eps_t = eps_from_x0(x, x0, a_t)
        eps = eps_t
        ms, lams = [*ms, x0][-order:], [*lams, lam_t][-order:]
        p = multistep_order(i, len(steps), order, lower_order_final)
        x = ddim_move(x0, eps, a_next)  # UniP: the DDIM step (eq. 12) ...
        if p > 1:  # ... plus the higher-order terms
            x = x + a_next**0.5 * unipc_correction(ms[-p:], lams[-p:], half_log_snr(a_next))
        if callback is not None:
            callback(i, t, x, x0)
    return x
