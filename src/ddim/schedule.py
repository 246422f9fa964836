"""Noise schedules: betas -> alphas_cumprod, in float64, immutable.

Notation (DDIM paper, Song et al. 2020; VP notation of Kingma et al. 2021 beside it):
    beta_t          per-step noise variance (Ho et al. 2020, eq. 2)
    a_t             alphas_cumprod[t] = prod_{s<=t} (1 - beta_s)  (DDIM's "alpha_t")
    alpha(t)        sqrt(a_t), the signal scale:  x_t = alpha(t) x_0 + sigma(t) eps
    sigma(t)        sqrt(1 - a_t), the noise scale
    log_snr(t)      log(a_t / (1 - a_t)), DPM-Solver's 2 * lambda_t

The schedule is a plain value: it lives outside any model's state_dict, so a checkpoint
can never silently replace it and `.half()` can never degrade it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ddim.errors import BadValue

SCHEDULE_KINDS = ("linear", "cosine", "sigmoid", "scaled_linear")
# The smallest a_t the math reads: at zero terminal SNR (a = 0) x0 cannot be recovered from eps
# (dividing by sqrt(a) gives NaN) and log-SNR is -inf. The eps -> x0 conversion, the log-SNR grids
# and the Karras-form samplers read max(a, A_FLOOR) instead: finite, and exact wherever
# a > A_FLOOR (diffusers uses the same floor).
A_FLOOR = 2.0**-24


def log_snr(a: Tensor | float) -> Tensor | float:
    """log(a / (1 - a)) of a = alphas_cumprod (Kingma et al. 2021, eq. 2): -inf at a = 0, +inf at
    a = 1. The one place log-SNR is computed; a tensor or a Python float."""
    if isinstance(a, Tensor):
        return a.log() - torch.log1p(-a)
    if a <= 0 or a >= 1:
        return -math.inf if a <= 0 else math.inf
    return math.log(a) - math.log1p(-a)


@dataclass(frozen=True, eq=False)
class NoiseSchedule:
    """A discrete variance-preserving schedule of T steps (timesteps 0..T-1)."""

    betas: Tensor = field(repr=False)  # float64 [T]
    alphas_cumprod: Tensor = field(init=False, repr=False)  # derived: float64 [T]

    def __post_init__(self) -> None:
        betas = torch.as_tensor(self.betas, dtype=torch.float64).detach().cpu().clone()
        if betas.ndim != 1 or len(betas) < 1:
            raise BadValue(f"betas must be a non-empty 1-D sequence, got shape {tuple(betas.shape)}")
        if not bool(((betas > 0) & (betas <= 1)).all()):
            raise BadValue("every beta must lie in (0, 1]; check the schedule's parameters")
        object.__setattr__(self, "betas", betas)
        # Ho et al. 2020, eq. 4: a_t = prod_{s<=t} (1 - beta_s)
        object.__setattr__(self, "alphas_cumprod", torch.cumprod(1.0 - betas, dim=0))

    def __repr__(self) -> str:
        a = self.alphas_cumprod
        return f"NoiseSchedule(T={self.T}, a_0={float(a[0]):.6g}, a_T-1={float(a[-1]):.6g})"

    @property
    def T(self) -> int:
        return len(self.betas)

    # ---- constructors -------------------------------------------------------------------
    @classmethod
    def from_alphas_cumprod(cls, alphas_cumprod: Tensor) -> NoiseSchedule:
        a = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
        a_prev = torch.cat([a.new_ones(1), a[:-1]])
        return cls(1.0 - a / a_prev)

    @classmethod
    def linear(
        cls,
        T: int = 1000,
        beta_start: float | None = None,
        beta_end: float | None = None,
    ) -> NoiseSchedule:
        """Ho et al. 2020, sec. 4: betas linear from 1e-4 to 0.02 at T = 1000; by default the
        endpoints scale by 1000 / T for other T (Nichol & Dhariwal 2021, sec. 3.2) so that the
        total noise matches. Endpoints given explicitly are used as they are."""
        scale = 1000 / T
        start = scale * 1e-4 if beta_start is None else beta_start
        end = scale * 0.02 if beta_end is None else beta_end
        return cls(torch.linspace(start, end, T, dtype=torch.float64))

    @classmethod
    def scaled_linear(
        cls,
        T: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
    ) -> NoiseSchedule:
        """Latent diffusion (Rombach et al. 2022): betas linear in sqrt(beta)."""
        return cls(torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float64) ** 2)

    @classmethod
    def cosine(cls, T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> NoiseSchedule:
        """Nichol & Dhariwal 2021, eq. 17: a_t = f(t)/f(0), f(t) = cos((t/T + s)/(1 + s) * pi/2)^2;
        betas = 1 - a_t / a_{t-1} clipped to max_beta (their sec. 3.2)."""
        t = torch.arange(T + 1, dtype=torch.float64) / T
        f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
        return cls((1 - f[1:] / f[:-1]).clamp(max=max_beta))

    @classmethod
    def sigmoid(
        cls,
        T: int = 1000,
        start: float = -3.0,
        end: float = 3.0,
        tau: float = 1.0,
        max_beta: float = 0.999,
    ) -> NoiseSchedule:
        """Jabri et al. 2022 (RIN), Alg. 1: a(t) = (sigmoid(end/tau) - sigmoid((t(end-start)+start)/tau))
        / (sigmoid(end/tau) - sigmoid(start/tau)), t in [0, 1]; betas from its ratios."""
        t = torch.arange(T + 1, dtype=torch.float64) / T
        v_start, v_end = (torch.sigmoid(torch.tensor(v / tau, dtype=torch.float64)) for v in (start, end))
        f = (v_end - torch.sigmoid((t * (end - start) + start) / tau)) / (v_end - v_start)
        return cls((1 - f[1:] / f[:-1]).clamp(max=max_beta))

    @classmethod
    def named(cls, kind: str, T: int = 1000) -> NoiseSchedule:
        if kind not in SCHEDULE_KINDS:
            raise BadValue(f"unknown schedule {kind!r}; choose one of {', '.join(SCHEDULE_KINDS)}")
        return getattr(cls, kind)(T)

    def rescale_zero_terminal_snr(self) -> NoiseSchedule:
        """Lin et al. 2023, Alg. 1: shift and scale sqrt(a_t) so that sqrt(a_{T-1}) = 0 while
        sqrt(a_0) is kept; the last step then carries no signal (SNR = 0)."""
        root = self.alphas_cumprod.sqrt()
        first, last = root[0].clone(), root[-1].clone()
        root = (root - last) * first / (first - last)
        return NoiseSchedule.from_alphas_cumprod(root**2)

    # ---- lookups (float64, CPU) -----------------------------------------------------------
    def alpha(self, t: Tensor | int) -> Tensor:
        """sqrt(a_t): the signal scale of x_t = alpha x_0 + sigma eps (Ho et al. 2020, eq. 4)."""
        return self.alphas_cumprod[t].sqrt()

    def sigma(self, t: Tensor | int) -> Tensor:
        """sqrt(1 - a_t): the noise scale (Ho et al. 2020, eq. 4)."""
        return (1 - self.alphas_cumprod[t]).sqrt()

    def log_snr(self, t: Tensor | int) -> Tensor:
        """log(a_t / (1 - a_t)) (Kingma et al. 2021, eq. 2); -inf where a_t = 0."""
        return log_snr(self.alphas_cumprod[t])

    def to_config(self) -> dict:
        """A JSON-ready description that rebuilds this exact schedule."""
        return {"betas": self.betas.tolist()}

    @classmethod
    def from_config(cls, config: dict) -> NoiseSchedule:
        return cls(torch.tensor(config["betas"], dtype=torch.float64))
