"""Preview images during training: `sample_images` draws the sample grids `train` writes every
`train.sample_every` steps from the EMA model."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ddim.config import RunConfig
from ddim.noise import PerSampleNoise
from ddim.sampling import sample


@torch.no_grad()
def sample_images(ema: nn.Module, run: RunConfig, shape: tuple[int, ...], device: torch.device) -> Tensor:
    """train.sample_n images from the EMA model with deterministic DDIM on the trailing grid; x_T
    from the run's seed (the same images at every step for the same weights). A class-conditional
    model gets labels 0, 1, 2, ... in turn."""
    cfg, n, chunks = run.train, run.train.sample_n, []
    schedule = run.diffusion.make_schedule()
    for start in range(0, n, cfg.micro_batch):
        k = min(cfg.micro_batch, n - start)
        x_T = PerSampleNoise.from_seed(cfg.seed, k, start=start).randn(shape, device=device)  # noqa: N806
        net = ema
        if run.model.num_classes is not None:
            y = (torch.arange(start, start + k) % run.model.num_classes).to(device)

            def net(x, t, x_self_cond=None, y=y):
                return ema(x, t, x_self_cond, y=y)

        chunks.append(
            sample(
                net,
                x_T,
                schedule,
                steps=cfg.sample_steps,
                spacing="trailing",
                prediction=run.diffusion.prediction,
                self_condition=run.model.self_condition,
            ).cpu()
        )
    return torch.cat(chunks)
