"""The registry: each sampler by name with what callers need to know of it (its function, its
default grid, whether it takes DDIM's eta, how many model calls it makes), declared in one place."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

from torch import Tensor

from ddim.errors import BadValue
from ddim.samplers.ddim import ddim
from ddim.samplers.ddpm import ddpm
from ddim.samplers.dpm_solver import dpm_solver_pp
from ddim.samplers.exact import exact_invert, exact_sample
from ddim.samplers.ipndm import ipndm
from ddim.samplers.karras import euler, heun
from ddim.samplers.unipc import unipc


def one_call_per_step(steps: int) -> int:
    return steps


def heun_calls(steps: int) -> int:
    """Two calls per step but one on the last, an Euler step to sigma = 0 (Karras et al. 2022,
    Alg. 2, line 9)."""
    return 2 * steps - 1


@dataclass(frozen=True)
class Sampler:
    """A registered sampler; calling it calls `fn(predict, x_T, schedule, timesteps, **options)`.

    spacing: its grid when none is asked for. takes_eta: it takes DDIM's `eta` (eq. 16).
    calls: the model calls it makes on a grid of `steps` points. may_leave_noise: on a coarse grid
    its output can hold noise the last step cannot remove, so `ddim.sample` checks the grid first
    (`sampling.check_noise_left`)."""

    fn: Callable[..., Tensor]
    spacing: str
    takes_eta: bool = False
    calls: Callable[[int], int] = one_call_per_step
    may_leave_noise: bool = False

    def __call__(self, *args, **kwargs) -> Tensor:
        return self.fn(*args, **kwargs)


# Each sampler's default grid is chosen by measurement on the exact Gaussian oracle
# (tests/test_higher_order.py::test_recommended_grids; docs/samplers.md): a multistep solver
# loses its order on `trailing`, whose last step jumps from t = T/S - 1 straight to clean data.
SAMPLERS: dict[str, Sampler] = {
    "ddim": Sampler(ddim, "trailing", takes_eta=True),
    "ddpm": Sampler(ddpm, "trailing"),
    # DDIM paper, Table 1, "sigma-hat": the DDPM update with the larger variance beta
    "ddpm_sigma_hat": Sampler(partial(ddpm, variance="beta"), "trailing"),
    "dpmpp_2m": Sampler(partial(dpm_solver_pp, order=2), "logsnr"),
    "dpmpp_3m": Sampler(partial(dpm_solver_pp, order=3), "logsnr"),
    "unipc": Sampler(unipc, "logsnr"),
    "euler": Sampler(euler, "trailing"),
    # karras: the paper's grid, within 15% of the oracle's best (logsnr) from 10 steps and ahead at
    # 5; its trapezoidal corrector leaves noise on a coarse grid (docs/samplers.md, "Few steps")
    "heun": Sampler(heun, "karras", calls=heun_calls, may_leave_noise=True),
    # exactly invertible (samplers/exact.py); their encoders are in INVERSES
    "belm": Sampler(partial(exact_sample, method="belm"), "trailing"),
    "bdia": Sampler(partial(exact_sample, method="bdia"), "trailing"),
    "ipndm": Sampler(ipndm, "logsnr"),
}
DEFAULT_SPACINGS = {name: entry.spacing for name, entry in SAMPLERS.items()}

# The samplers whose encoder is the exact inverse of their decoder, best first (FD on MNIST,
# docs/latent.md), and those encoders.
EXACT_INVERTIBLE = ("bdia", "belm")
INVERSES = {name: partial(exact_invert, method=name) for name in EXACT_INVERTIBLE}


def registered(sampler: str) -> Sampler:
    """The registry's entry for `sampler`, or BadValue naming the choices."""
    if sampler not in SAMPLERS:
        raise BadValue(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    return SAMPLERS[sampler]


def model_calls(sampler: str, steps: int) -> int:
    """The model calls that the registered sampler `sampler` makes on a grid of `steps` points."""
    return registered(sampler).calls(steps)


def steps_for_calls(sampler: str, calls: int, *, exact: bool = False) -> int:
    """The most grid points (at least 1) on which `sampler` makes at most `calls` model calls; with
    `exact`, exactly `calls` of them or BadValue (heun makes 2 steps - 1, an odd number)."""
    entry = registered(sampler)
    steps = max((s for s in range(1, calls + 1) if entry.calls(s) <= calls), default=1)
    if exact and entry.calls(steps) != calls:
        raise BadValue(
            f"{sampler} cannot make exactly {calls} model calls (at most {entry.calls(steps)}); "
            "pick another --calls"
        )
    return steps
