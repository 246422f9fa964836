"""Spherical interpolation of latents (DDIM sec. 5.3, after White 2016, "Sampling Generative
Networks"): Gaussian latents live near a sphere, where a straight line would pass inside it."""

from __future__ import annotations

import torch
from torch import Tensor

from ddim.errors import BadValue


def slerp(z0: Tensor, z1: Tensor, alpha: float | Tensor) -> Tensor:
    """sin((1 - alpha) theta)/sin(theta) z0 + sin(alpha theta)/sin(theta) z1, with theta the
    angle between z0 and z1 per example (leading dimension N); falls back to the straight line
    where the latents are parallel."""
    if z0.shape != z1.shape:
        raise BadValue(f"slerp needs latents of one shape, got {tuple(z0.shape)} and {tuple(z1.shape)}")
    a = torch.as_tensor(alpha, dtype=torch.float64)
    f0, f1 = z0.flatten(1).double(), z1.flatten(1).double()
    cos = (f0 * f1).sum(1) / (f0.norm(dim=1) * f1.norm(dim=1))
    theta = cos.clamp(-1, 1).acos()
    sin = theta.sin()
    parallel = sin.abs() < 1e-8
    safe = torch.where(parallel, torch.ones_like(sin), sin)
    w0 = torch.where(parallel, 1 - a, ((1 - a) * theta).sin() / safe)
    w1 = torch.where(parallel, a.expand_as(theta), (a * theta).sin() / safe)
    out = w0[:, None] * f0 + w1[:, None] * f1
    return out.reshape(z0.shape).to(z0.dtype)
