"""Exact denoisers for Gaussian data, and the exact probability-flow map they imply.

For x0 ~ N(mu, s^2) per coordinate and x_t = sqrt(a) x0 + sqrt(1 - a) eps:
    x_t ~ N(sqrt(a) mu, v_t),  v_t = a s^2 + 1 - a
    E[x0 | x_t] = mu + sqrt(a) s^2 / v_t (x_t - sqrt(a) mu)
and the probability-flow ODE keeps (x_t - sqrt(a_t) mu) / sqrt(v_t) constant, so its exact
solution from x_T is x0 = mu + s (x_T - sqrt(a_T) mu) / sqrt(v_T).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ddim import NoiseSchedule


class GaussianOracle:
    """model(x_t, t) -> the optimal eps (or x0 / v) for N(mu, s^2) data, coordinate-wise."""

    def __init__(self, schedule: NoiseSchedule, mu: Tensor, s: Tensor, prediction: str = "eps"):
        self.a = schedule.alphas_cumprod
        self.mu, self.s, self.prediction = mu, s, prediction
        self.calls = 0

    def _a(self, t: Tensor, x: Tensor) -> Tensor:
        return self.a[t.cpu()].to(x).reshape(-1, *([1] * (x.ndim - 1)))

    def x0_mean(self, x: Tensor, a: Tensor) -> Tensor:
        mu, s = self.mu.to(x), self.s.to(x)
        return mu + a.sqrt() * s**2 / (a * s**2 + 1 - a) * (x - a.sqrt() * mu)

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        self.calls += 1
        a = self._a(t, x)
        x0 = self.x0_mean(x, a)
        eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
        if self.prediction == "eps":
            return eps
        if self.prediction == "x0":
            return x0
        return a.sqrt() * eps - (1 - a).sqrt() * x0

    def flow(self, x_T: Tensor, a_T: float) -> Tensor:
        """The exact probability-flow ODE solution x0 from x_T at a_T."""
        mu, s = self.mu.to(x_T), self.s.to(x_T)
        return mu + s * (x_T - a_T**0.5 * mu) / (a_T * s**2 + 1 - a_T) ** 0.5

    def encode(self, x0: Tensor, a_T: float) -> Tensor:
        """The exact probability-flow map x0 -> x_T (the inverse of `flow`)."""
        mu, s = self.mu.to(x0), self.s.to(x0)
        return a_T**0.5 * mu + (a_T * s**2 + 1 - a_T) ** 0.5 * (x0 - mu) / s


# The problems the sampler tests share: a narrow one (coordinates of spread 0.05 to 1, where a
# wrong x0 estimate shows) and a wide one (spread 2, where a wrong eps shows).
SCHED = NoiseSchedule.linear(1000)
MU = torch.tensor([0.5, -1.0, 2.0, 0.0], dtype=torch.float64)
S = torch.tensor([0.3, 1.0, 0.1, 0.05], dtype=torch.float64)
MU_W = torch.tensor([0.5, -1.0], dtype=torch.float64)
S_W = torch.tensor([0.5, 2.0], dtype=torch.float64)


def oracle(prediction: str = "eps", schedule: NoiseSchedule = SCHED, mu: Tensor = MU, s: Tensor = S):
    """The exact denoiser of N(mu, s^2) data under `schedule`."""
    return GaussianOracle(schedule, mu, s, prediction)


def x_T(n: int = 64, d: int = 4, seed: int = 0, dtype: torch.dtype = torch.float64) -> Tensor:
    """n seeded standard-normal starting points of d coordinates."""
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)
