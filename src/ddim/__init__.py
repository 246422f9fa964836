"""ddim: denoising diffusion models. DDPM training; DDIM and higher-order sampling, inversion,
interpolation; metrics."""

from importlib.metadata import PackageNotFoundError, version

from ddim.device import resolve_device
from ddim.editing import edit, inpaint
from ddim.generation import generate, sample_seeded
from ddim.latents import Latents
from ddim.noise import PerSampleNoise
from ddim.objectives import diffusion_loss
from ddim.pipeline import Pipeline, load
from ddim.prediction import Prediction, classifier_free_guidance, make_predictor
from ddim.samplers import EXACT_INVERTIBLE, SAMPLERS, interpolate_latents, slerp
from ddim.sampling import Trajectory, invert, sample
from ddim.schedule import NoiseSchedule
from ddim.timesteps import SPACINGS, make_timesteps
from ddim.tuning import tune_timesteps

try:
    __version__ = version("ddim")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = [
    "EXACT_INVERTIBLE",
    "Latents",
    "Pipeline",
    "SAMPLERS",
    "SPACINGS",
    "NoiseSchedule",
    "PerSampleNoise",
    "Prediction",
    "Trajectory",
    "classifier_free_guidance",
    "diffusion_loss",
    "edit",
    "generate",
    "inpaint",
    "interpolate_latents",
    "invert",
    "load",
    "make_predictor",
    "make_timesteps",
    "resolve_device",
    "sample",
    "sample_seeded",
    "slerp",
    "tune_timesteps",
]
