"""Preview images during training: `sample_images` draws the sample grids `train` writes every
`train.sample_every` steps from the EMA model."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ddim.config import RunConfig
from ddim.generation import generate


def sample_images(ema: nn.Module, run: RunConfig, shape: tuple[int, ...], device: torch.device) -> Tensor:
    """train.sample_n images from the EMA model with deterministic DDIM on the trailing grid; x_T
    from the run's seed (the same images at every step for the same weights). A class-conditional
    model gets labels 0, 1, 2, ... in turn."""
    cfg, n = run.train, run.train.sample_n
    classes = run.model.num_classes
    labels = None if classes is None else torch.arange(n) % classes
    return generate(ema, run.diffusion.make_schedule(), shape, n, seed=cfg.seed, batch_size=cfg.micro_batch,
                    labels=labels, null_class=classes, device=device, progress=False, steps=cfg.sample_steps,
                    spacing="trailing", prediction=run.diffusion.prediction,
                    self_condition=run.model.self_condition)  # fmt: skip
