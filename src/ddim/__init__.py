"""ddim: denoising diffusion models. DDPM training; DDIM and higher-order sampling, inversion,
interpolation; metrics."""

from ddim.device import resolve_device  # first import: it sets OMP_WAIT_POLICY before torch
from ddim.noise import PerSampleNoise
from ddim.objectives import diffusion_loss
from ddim.prediction import Prediction, classifier_free_guidance, make_predictor
from ddim.samplers import SAMPLERS, slerp
from ddim.sampling import Trajectory, invert, sample, sample_seeded
from ddim.schedule import NoiseSchedule
from ddim.timesteps import SPACINGS, make_timesteps

__all__ = [
    "SAMPLERS",
    "SPACINGS",
    "NoiseSchedule",
    "PerSampleNoise",
    "Prediction",
    "Trajectory",
    "classifier_free_guidance",
    "diffusion_loss",
    "invert",
    "make_predictor",
    "make_timesteps",
    "resolve_device",
    "sample",
    "sample_seeded",
    "slerp",
]
