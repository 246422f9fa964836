"""Exactly invertible samplers: two-state linear multistep updates, one model call per step, whose
encoder is the algebraic inverse of the decoder at any number of steps.

Notation: states y_k at a_k = alphas_cumprod[t_k] along the decreasing grid t_0 > ... > t_{S-1},
then y_S = x0 at a_S = 1. Each update reads two consecutive states and the model at the second:

    y_{k+1} = c1 y_{k-1} + c2 y_k + c3 eps(y_k, t_k) + c4 x0(y_k, t_k),   c1 != 0,

so y_{k-1} = (y_{k+1} - c2 y_k - c3 eps - c4 x0) / c1 runs it backwards with the same model calls.

- "belm": O-BELM (Wang et al., NeurIPS 2024, "BELM: Bidirectional Explicit Linear Multi-step
  Sampler for Exact Inversion", eq. 13 / Prop. 3.2): the variable-step 2-step method of least
  local truncation error in ybar = y / sqrt(a) against sbar = sqrt((1 - a) / a) (second order).
- "bdia": BDIA-DDIM (Zhang, Lewis, Kleijn 2023, "Exact Diffusion Inversion via Bi-directional
  Integration Approximation", eq. 23) with gamma = 0, the only gamma at which the encoder does
  not amplify rounding by (1 - gamma)^-S: y_{k+1} = D(y_k -> a_{k+1}) + (y_{k-1} - D(y_k -> a_{k-1})),
  D being the deterministic DDIM move (DDIM eq. 12, eta = 0).

The latent is the pair (y_0, y_1), held in ONE complex tensor y_0 + i y_1 shaped like the image
(complex64 for float32 images, complex128 for float64). A real tensor is a plain x_T: fresh
sampling takes one DDIM step to y_1 first. So `sample` tells them apart by dtype alone, for any
data shape. See docs/latent.md.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from ddim.errors import BadValue
from ddim.noise import Generators
from ddim.prediction import Predict
from ddim.samplers._common import Callback, ddim_move, grid_steps
from ddim.schedule import NoiseSchedule

Coefs = tuple[float, float, float, float]  # (c1, c2, c3, c4) of the update above


def belm_coefs(a_p: float, a: float, a_n: float) -> Coefs:
    """O-BELM (Wang et al. 2024, eq. 13): with sbar = sqrt((1 - a)/a), h = sbar - sbar_n (this step)
    and h_p = sbar_p - sbar (the last one),
        ybar_n = (h/h_p)^2 ybar_p + (1 - (h/h_p)^2) ybar - h (h + h_p)/h_p eps.
    At a_p = 0 (zero terminal SNR) h_p is infinite and the update is the DDIM step (c1 = 0)."""
    sbar = ((1 - a) / a) ** 0.5
    sbar_n = ((1 - a_n) / a_n) ** 0.5
    h = sbar - sbar_n
    if a_p == 0:
        return 0.0, (a_n / a) ** 0.5, -(a_n**0.5) * h, 0.0
    h_p = ((1 - a_p) / a_p) ** 0.5 - sbar
    r2 = (h / h_p) ** 2
    return (a_n / a_p) ** 0.5 * r2, (a_n / a) ** 0.5 * (1 - r2), -(a_n**0.5) * h * (h + h_p) / h_p, 0.0


def bdia_coefs(a_p: float, a: float, a_n: float) -> Coefs:
    """BDIA-DDIM (Zhang et al. 2023, eq. 23, gamma = 0): y_n = D(y -> a_n) + y_p - D(y -> a_p)
    with D(y -> a') = sqrt(a') x0 + sqrt(1 - a') eps (DDIM eq. 12, eta = 0)."""
    return 1.0, 0.0, (1 - a_n) ** 0.5 - (1 - a_p) ** 0.5, a_n**0.5 - a_p**0.5


COEFS = {"belm": belm_coefs, "bdia": bdia_coefs}


def pack(y0: Tensor, y1: Tensor) -> Tensor:
    """The latent of the pair (y_0, y_1): y_0 + i y_1, exact (no arithmetic, just placement)."""
    if y0.dtype not in (torch.float32, torch.float64):
        raise BadValue(
            f"exact inversion needs float32 or float64 images, got {y0.dtype}: convert with .float()"
        )
    return torch.complex(y0, y1)


def unpack(z: Tensor) -> tuple[Tensor, Tensor]:
    return z.real.contiguous(), z.imag.contiguous()


def _update(y_p: Tensor, y: Tensor, eps: Tensor, x0: Tensor, c: Coefs) -> Tensor:
    out = y_p * c[0] + y * c[1] + eps * c[2]
    return out + x0 * c[3] if c[3] else out


def exact_sample(
    predict: Predict,
    x: Tensor,
    schedule: NoiseSchedule,
    timesteps: Sequence[int] | Tensor,
    *,
    method: str = "belm",
    generator: Generators = None,
    callback: Callback | None = None,
) -> Tensor:
    """Decode a latent pair (complex x, from `exact_invert`) or sample from a plain x_T (real x,
    one DDIM step first) with the two-state update of `method`; S model calls for x_T, S - 1 for
    a pair. The last state (a = 1) is the output, and the x0 the callback sees at the last step.
    A self-conditioned model is always given zeros as its previous estimate, as in the encoder.
    Deterministic: `generator` is accepted and unused."""
    coefs = COEFS[method]
    steps = grid_steps(schedule, timesteps)
    a = [s.a_t for s in steps] + [1.0]
    if x.is_complex():
        y_p, y = unpack(x)
    else:
        eps, x0 = predict(x, steps[0].t, None)
        y_p, y = x, ddim_move(x0, eps, a[1])  # DDIM eq. 12 (eta = 0) starts the pair
        if callback is not None:
            callback(0, steps[0].t, y, y if len(steps) == 1 else x0)
    for k in range(1, len(steps)):
        # never the previous x0 estimate (self-conditioning): the encoder cannot know it
        eps, x0 = predict(y, steps[k].t, None)
        y_p, y = y, _update(y_p, y, eps, x0, coefs(a[k - 1], a[k], a[k + 1]))
        if callback is not None:
            callback(k, steps[k].t, y, y if k == len(steps) - 1 else x0)
    return y


def exact_invert(
    predict: Predict,
    x0: Tensor,
    schedule: NoiseSchedule,
    timesteps: Sequence[int] | Tensor,
    *,
    method: str = "belm",
    callback: Callback | None = None,
) -> Tensor:
    """The exact encoder: x0 -> the latent pair y_0 + i y_1 that `exact_sample` decodes to x0.
    y_{S-1} is one DDIM inversion step from x0 (any choice is exact; this one keeps the pair on
    the data's trajectory), then each update is run backwards: S model calls."""
    coefs = COEFS[method]
    steps = grid_steps(schedule, timesteps)
    a = [s.a_t for s in steps] + [1.0]
    S = len(steps)
    eps, x0_est = predict(x0, steps[-1].t, None)
    y_n, y = x0, ddim_move(x0, eps, a[S - 1])  # DDIM eq. 12 run upwards from a = 1 (DDIM sec. 4.3)
    if callback is not None:
        callback(0, steps[-1].t, y, x0_est)
    for i, k in enumerate(range(S - 1, 0, -1), start=1):
        c = coefs(a[k - 1], a[k], a[k + 1])
        if c[0] == 0:
            raise BadValue(
                f"sampler {method!r} cannot invert from t = {steps[k - 1].t}, where alphas_cumprod "
                "is 0 (zero terminal SNR): start the grid lower (e.g. spacing='leading') or use "
                "sampler='ddim'"
            )
        eps, x0_est = predict(y, steps[k].t, None)
        y_p = y_n - y * c[1] - eps * c[2]
        if c[3]:
            y_p = y_p - x0_est * c[3]
        y_n, y = y, y_p / c[0]
        if callback is not None:
            callback(i, steps[k - 1].t, y, x0_est)
    return pack(y, y_n)
