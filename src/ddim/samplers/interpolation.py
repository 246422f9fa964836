"""Spherical interpolation of latents (DDIM sec. 5.3, after White 2016, "Sampling Generative
Networks"): Gaussian latents live near a sphere, where a straight line would pass inside it."""

from __future__ import annotations

import torch
from torch import Tensor

from ddim.errors import BadValue


def _weights(f0: Tensor, f1: Tensor, a: Tensor) -> tuple[Tensor, Tensor]:
    """slerp's weights per example (rows of f0, f1): sin((1 - a) theta)/sin(theta) and
    sin(a theta)/sin(theta), theta the angle between the rows; the straight line's where they
    are parallel. Exactly (1, 0) at a = 0 and (0, 1) at a = 1."""
    cos = (f0 * f1).sum(1) / (f0.norm(dim=1) * f1.norm(dim=1))
    theta = cos.clamp(-1, 1).acos()
    sin = theta.sin()
    parallel = sin.abs() < 1e-8
    safe = torch.where(parallel, torch.ones_like(sin), sin)
    w0 = torch.where(parallel, 1 - a, ((1 - a) * theta).sin() / safe)
    w1 = torch.where(parallel, a.expand_as(theta), (a * theta).sin() / safe)
    return w0[:, None], w1[:, None]


def slerp(z0: Tensor, z1: Tensor, alpha: float | Tensor) -> Tensor:
    """sin((1 - alpha) theta)/sin(theta) z0 + sin(alpha theta)/sin(theta) z1, with theta the
    angle between z0 and z1 per example (leading dimension N); falls back to the straight line
    where the latents are parallel.

    A complex latent (an exact sampler's pair y_0 + i y_1, samplers/exact.py) takes the weights
    of its real part, x_T, for both parts: the second state follows the first as it did in each
    input, and the ends are the inputs exactly."""
    if z0.shape != z1.shape or z0.dtype != z1.dtype:
        raise BadValue(
            f"slerp needs latents of one shape and dtype, got {tuple(z0.shape)} {z0.dtype} and "
            f"{tuple(z1.shape)} {z1.dtype}"
        )
    a = torch.as_tensor(alpha, dtype=torch.float64)
    if z0.is_complex():
        r0, r1 = z0.real.flatten(1).double(), z1.real.flatten(1).double()
        w0, w1 = _weights(r0, r1, a)
        i0, i1 = z0.imag.flatten(1).double(), z1.imag.flatten(1).double()
        out = torch.complex(w0 * r0 + w1 * r1, w0 * i0 + w1 * i1)
    else:
        f0, f1 = z0.flatten(1).double(), z1.flatten(1).double()
        w0, w1 = _weights(f0, f1, a)
        out = w0 * f0 + w1 * f1
    return out.reshape(z0.shape).to(z0.dtype)


def interpolate_latents(z_a: Tensor, z_b: Tensor, n: int) -> Tensor:
    """n latents from z_a to z_b, ends included (alpha = k / (n - 1)), by `slerp`, for plain x_T
    and for exact samplers' complex latents alike. z_a, z_b [N, ...] give [n * N, ...] with row
    k * N + j between z_a[j] and z_b[j]; rows 0..N-1 equal z_a and the last N equal z_b exactly."""
    if not isinstance(n, int) or n < 2:
        raise BadValue(f"interpolation needs n >= 2 latents (the two ends included), got {n!r}")
    return torch.cat([slerp(z_a, z_b, k / (n - 1)) for k in range(n)])
