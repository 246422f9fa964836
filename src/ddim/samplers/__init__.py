"""Samplers as pure functions `sampler(predict, x_T, schedule, timesteps, **options) -> x0`,
registered by name."""

from functools import partial

from ddim.samplers.ddim import ddim, ddim_invert, ddim_sigma
from ddim.samplers.ddpm import ddpm, posterior_variance
from ddim.samplers.dpm_solver import dpm_solver_pp
from ddim.samplers.interpolation import slerp
from ddim.samplers.karras import euler, heun, model_calls
from ddim.samplers.unipc import unipc

SAMPLERS = {
    "ddim": ddim,
    "ddpm": ddpm,
    # DDIM paper, Table 1, "sigma-hat": the DDPM update with the larger variance beta
    "ddpm_sigma_hat": partial(ddpm, variance="beta"),
    "dpmpp_2m": partial(dpm_solver_pp, order=2),
    "dpmpp_3m": partial(dpm_solver_pp, order=3),
    "unipc": unipc,
    "euler": euler,
    "heun": heun,
}

__all__ = [
    "SAMPLERS",
    "ddim",
    "ddim_invert",
    "ddim_sigma",
    "ddpm",
    "dpm_solver_pp",
    "euler",
    "heun",
    "model_calls",
    "posterior_variance",
    "slerp",
    "unipc",
]
