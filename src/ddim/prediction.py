"""Prediction targets and the one contract between a network and the samplers.

With a = a_t (alphas_cumprod) and x_t = sqrt(a) x0 + sqrt(1 - a) eps (Ho et al. 2020, eq. 4):
    x0 from eps   x0 = (x_t - sqrt(1 - a) eps) / sqrt(a)            (DDIM eq. 12, "predicted x0")
    eps from x0   eps = (x_t - sqrt(a) x0) / sqrt(1 - a)             (eq. 4 solved for eps)
    v             v = sqrt(a) eps - sqrt(1 - a) x0                   (Salimans & Ho 2022, sec. 4)
    from v        x0 = sqrt(a) x_t - sqrt(1 - a) v,  eps = sqrt(1 - a) x_t + sqrt(a) v

`make_predictor` turns a network of any declared target into `predict(x, t, x0_prev) ->
Prediction(eps, x0)`, clipping or thresholding x0 when asked and re-deriving eps from the
clipped x0, so samplers never branch on the target.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor

from ddim.errors import BadValue
from ddim.schedule import A_FLOOR, NoiseSchedule

PREDICTIONS = ("eps", "x0", "v")

Coef = float | Tensor
Clip = None | float | tuple[float, float] | str


class Prediction(NamedTuple):
    eps: Tensor
    x0: Tensor


def append_dims(a: Coef, x: Tensor) -> Coef:
    """A per-example value [N] as [N, 1, ..., 1] on x's device (and dtype, if a float), to
    broadcast over x's trailing dimensions (k-diffusion's append_dims); Python floats pass through."""
    if isinstance(a, Tensor):
        dtype = x.dtype if a.is_floating_point() else a.dtype  # a mask stays a mask
        return a.to(dtype=dtype, device=x.device).reshape(-1, *([1] * (x.ndim - 1)))
    return a


def x0_from_eps(x: Tensor, eps: Tensor, a: Coef) -> Tensor:
    if isinstance(a, float):  # the sampling hot path: one new tensor instead of three
        return torch.sub(x, eps, alpha=(1 - a) ** 0.5).mul_(max(a, A_FLOOR) ** -0.5)
    return (x - append_dims((1 - a) ** 0.5, x) * eps) / append_dims(a.clamp_min(A_FLOOR) ** 0.5, x)


def eps_from_x0(x: Tensor, x0: Tensor, a: Coef) -> Tensor:
    return (x - append_dims(a**0.5, x) * x0) / append_dims((1 - a) ** 0.5, x)


def v_from(eps: Tensor, x0: Tensor, a: Coef) -> Tensor:
    return append_dims(a**0.5, eps) * eps - append_dims((1 - a) ** 0.5, eps) * x0


def x0_from_v(x: Tensor, v: Tensor, a: Coef) -> Tensor:
    return append_dims(a**0.5, x) * x - append_dims((1 - a) ** 0.5, x) * v


def eps_from_v(x: Tensor, v: Tensor, a: Coef) -> Tensor:
    return append_dims((1 - a) ** 0.5, x) * x + append_dims(a**0.5, x) * v


def to_eps_x0(output: Tensor, x: Tensor, a: Coef, prediction: str) -> Prediction:
    """Read a network output of the declared target as (eps, x0)."""
    if prediction == "eps":
        return Prediction(output, x0_from_eps(x, output, a))
    if prediction == "x0":
        return Prediction(eps_from_x0(x, output, a), output)
    if prediction == "v":
        return Prediction(eps_from_v(x, output, a), x0_from_v(x, output, a))
    raise BadValue(f"unknown prediction {prediction!r}; choose one of {', '.join(PREDICTIONS)}")


def target_of(prediction: str, eps: Tensor, x0: Tensor, a: Coef) -> Tensor:
    """What a network of the declared target should output for this (eps, x0)."""
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x0
    if prediction == "v":
        return v_from(eps, x0, a)
    raise BadValue(f"unknown prediction {prediction!r}; choose one of {', '.join(PREDICTIONS)}")


def dynamic_threshold(x0: Tensor, percentile: float = 0.995) -> Tensor:
    """Imagen (Saharia et al. 2022, sec. 2.3): s = the percentile of |x0| per example, at least 1;
    clamp to [-s, s] and divide by s."""
    s = torch.quantile(x0.detach().flatten(1).abs().float(), percentile, dim=1).clamp_min(1.0)
    s = append_dims(s, x0)
    return x0.clamp(-s, s) / s


def clip_x0(x0: Tensor, clip: Clip) -> Tensor:
    """None: no clipping (the default: right for latents and any data outside [-1, 1]);
    c: clamp to [-c, c]; (lo, hi): clamp to the range; "dynamic": Imagen's thresholding."""
    if clip is None:
        return x0
    if clip == "dynamic":
        return dynamic_threshold(x0)
    if isinstance(clip, (int, float)) and not isinstance(clip, bool) and clip > 0:
        return x0.clamp(-clip, clip)
    if isinstance(clip, (tuple, list)) and len(clip) == 2 and clip[0] < clip[1]:
        return x0.clamp(clip[0], clip[1])
    raise BadValue(
        f"clip must be None, a positive number c (clamp to [-c, c]), a range (lo, hi) with lo < hi, "
        f"or 'dynamic', got {clip!r}"
    )


Predict = Callable[..., Prediction]


def make_predictor(
    model: Callable[..., Tensor],
    schedule: NoiseSchedule,
    prediction: str = "eps",
    clip: Clip = None,
    self_condition: bool = False,
) -> Predict:
    """Wrap `model(x_t, t) -> output` (or `model(x_t, t, x0_prev)` with self-conditioning,
    Chen et al. 2022 "Analog Bits", sec. 3.2) into `predict(x, t, x0_prev=None) -> (eps, x0)`.

    `t` is a Python int timestep; the model receives it as an int64 tensor [N] on x's device.
    The predictor holds no state: the sampler passes the previous x0 estimate back in."""
    if prediction not in PREDICTIONS:
        raise BadValue(f"unknown prediction {prediction!r}; choose one of {', '.join(PREDICTIONS)}")
    clip_x0(torch.zeros(1, 1), clip)  # validate now, not at the first step
    a_cumprod = schedule.alphas_cumprod.tolist()

    def predict(x: Tensor, t: int, x0_prev: Tensor | None = None) -> Prediction:
        t_in = torch.full((x.shape[0],), t, dtype=torch.int64, device=x.device)
        if self_condition:
            out = model(x, t_in, torch.zeros_like(x) if x0_prev is None else x0_prev)
        else:
            out = model(x, t_in)
        if not isinstance(out, Tensor) or out.shape != x.shape:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise BadValue(
                f"the model returned {got} for an input of shape {tuple(x.shape)}: it must return "
                "a tensor shaped like x_t (for a model that also predicts variance, keep only the "
                "first half of its channels)"
            )
        a = a_cumprod[t]
        eps, x0 = to_eps_x0(out, x, a, prediction)
        if clip is not None:
            x0 = clip_x0(x0, clip)
            eps = eps_from_x0(x, x0, a)  # re-derive eps from the clipped x0 (as lucidrains does)
        return Prediction(eps, x0)

    return predict


def classifier_free_guidance(
    model: Callable[..., Tensor], y: Tensor, scale: float, null_class: int
) -> Callable[..., Tensor]:
    """Ho & Salimans 2022, eq. 6, with scale s = 1 + w: out = out(x, null) + s (out(x, y) - out(x, null)).

    `model(x, t, *extra, y=labels)` is class-conditional with `null_class` as its "no label"
    index; `y` [N] holds each example's class. Every output target (eps, x0, v) is an affine
    function of the others at fixed x_t, so guiding the raw output is the same as guiding eps.
    Both passes run as one batch of 2N, each example paired with its own label; scale 1 is one
    plain conditional pass."""

    def guided(x: Tensor, t: Tensor, *extra: Tensor) -> Tensor:
        labels = y.to(x.device)
        if scale == 1:
            return model(x, t, *extra, y=labels)
        doubled = [torch.cat([e, e]) for e in extra]
        null = torch.full_like(labels, null_class)
        out = model(torch.cat([x, x]), torch.cat([t, t]), *doubled, y=torch.cat([labels, null]))
        cond, uncond = out.chunk(2)
        return uncond + scale * (cond - uncond)

    return guided
