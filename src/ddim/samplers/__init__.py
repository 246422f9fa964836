"""Samplers as pure functions `sampler(predict, x_T, schedule, timesteps, **options) -> x0`,
registered by name."""

from functools import partial

from ddim.samplers.ddim import ddim, ddim_invert, ddim_sigma
from ddim.samplers.ddpm import ddpm, posterior_variance
from ddim.samplers.dpm_solver import dpm_solver_pp
from ddim.samplers.exact import exact_invert, exact_sample
from ddim.samplers.interpolation import interpolate_latents, slerp
from ddim.samplers.ipndm import ipndm
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
    # exactly invertible (samplers/exact.py); their encoders are in INVERSES
    "belm": partial(exact_sample, method="belm"),
    "bdia": partial(exact_sample, method="bdia"),
    "ipndm": ipndm,
}

# Each sampler's grid when none is asked for, chosen by measurement on the exact Gaussian oracle
# (tests/test_higher_order.py::test_recommended_grids; docs/samplers.md): a multistep solver
# loses its order on `trailing`, whose last step jumps from t = T/S - 1 straight to clean data.
DEFAULT_SPACINGS = {
    "ddim": "trailing",
    "ddpm": "trailing",
    "ddpm_sigma_hat": "trailing",
    "dpmpp_2m": "logsnr",
    "dpmpp_3m": "logsnr",
    "unipc": "logsnr",
    "euler": "trailing",
    "heun": "karras",
    "belm": "trailing",
    "bdia": "trailing",
    "ipndm": "logsnr",
}

# The samplers whose encoder is the exact inverse of their decoder, best first (FD on MNIST,
# docs/latent.md), and those encoders.
EXACT_INVERTIBLE = ("bdia", "belm")
INVERSES = {name: partial(exact_invert, method=name) for name in EXACT_INVERTIBLE}

__all__ = [
    "DEFAULT_SPACINGS",
    "EXACT_INVERTIBLE",
    "INVERSES",
    "SAMPLERS",
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
    "posterior_variance",
    "slerp",
    "unipc",
]
