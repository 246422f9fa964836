"""Samplers as pure functions `sampler(predict, x_T, schedule, timesteps, **options) -> x0`,
registered by name (samplers/registry.py)."""

from ddim.samplers.ddim import ddim, ddim_invert, ddim_sigma
from ddim.samplers.ddpm import ddpm, posterior_variance
from ddim.samplers.dpm_solver import dpm_solver_pp
from ddim.samplers.exact import exact_invert, exact_sample
from ddim.samplers.interpolation import interpolate_latents, slerp
from ddim.samplers.ipndm import ipndm
from ddim.samplers.karras import euler, heun
from ddim.samplers.registry import (
    DEFAULT_SPACINGS,
    EXACT_INVERTIBLE,
    INVERSES,
    SAMPLERS,
    Sampler,
    model_calls,
    registered,
    steps_for_calls,
)
from ddim.samplers.unipc import unipc

__all__ = [
    "DEFAULT_SPACINGS",
    "EXACT_INVERTIBLE",
    "INVERSES",
    "SAMPLERS",
    "Sampler",
    "ddim",
    "ddim_invert",
    "ddim_sigma",
    "ddpm",
    "dpm_solver_pp",
    "exact_invert",
    "exact_sample",
    "euler",
    "heun",
    "interpolate_latents",
    "ipndm",
    "model_calls",
    "steps_for_calls",
    "posterior_variance",
    "registered",
    "slerp",
    "unipc",
]
