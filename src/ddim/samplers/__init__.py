"""Samplers as pure functions `sampler(predict, x_T, schedule, timesteps, **options) -> x0`,
registered by name."""

from functools import partial

from ddim.samplers.ddim import ddim, ddim_invert, ddim_sigma
from ddim.samplers.ddpm import ddpm, posterior_variance
from ddim.samplers.interpolation import slerp

SAMPLERS = {
    "ddim": ddim,
    "ddpm": ddpm,
    # DDIM paper, Table 1, "sigma-hat": the DDPM update with the larger variance beta
    "ddpm_sigma_hat": partial(ddpm, variance="beta"),
}

__all__ = ["SAMPLERS", "ddim", "ddim_invert", "ddim_sigma", "ddpm", "posterior_variance", "slerp"]
