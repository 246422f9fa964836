"""The DDPM training objective: per-example losses [N]; the trainer reduces and logs.

The timestep draw is fixed (uniform, Ho et al. 2020, Alg. 1) unless the caller passes `t`; the
weighting is chosen by name (`WEIGHTINGS`): uniform, or min-SNR (Hang et al. 2023)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ddim.errors import BadValue
from ddim.prediction import PREDICTIONS, append_dims, target_of, to_eps_x0
from ddim.schedule import NoiseSchedule

WEIGHTINGS = ("uniform", "min_snr")


def sample_timesteps(n: int, T: int, generator: torch.Generator | None = None, device=None) -> Tensor:
    """t ~ Uniform{0..T-1} (Ho et al. 2020, Alg. 1)."""
    gen_device = generator.device if generator is not None else "cpu"
    return torch.randint(0, T, (n,), generator=generator, device=gen_device).to(device)


def min_snr_weight(snr: Tensor, prediction: str, gamma: float = 5.0) -> Tensor:
    """Min-SNR-gamma (Hang et al. 2023, eq. 9 and sec. 3.4): the x0-loss weight min(SNR, gamma)
    expressed for each target: / SNR for eps, / (SNR + 1) for v."""
    clipped = snr.clamp(max=gamma)
    if prediction == "x0":
        return clipped
    if prediction == "eps":
        return torch.where(snr > 0, clipped / snr, torch.ones_like(snr))  # limit 1 as SNR -> 0
    return clipped / (snr + 1)


def diffusion_loss(
    model: Callable[..., Tensor],
    x0: Tensor,
    schedule: NoiseSchedule,
    *,
    prediction: str = "eps",
    weighting: str = "uniform",
    min_snr_gamma: float = 5.0,
    offset_noise: float = 0.0,
    self_condition: bool = False,
    t: Tensor | None = None,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
    model_kwargs: dict | None = None,
    rank_world: tuple[int, int] = (0, 1),
) -> Tensor:
    """Per-example loss [N]: || target - model(x_t, t) ||^2 averaged over each example's values,
    x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps (Ho et al. 2020, eq. 4 and Alg. 1).

    offset_noise adds offset * N(0, 1) constant over the dimensions after the channel one
    (Guttenberg 2023), so the model learns to change an image's mean. With self_condition,
    half the batch gets the model's own x0 estimate (no gradient) as extra input (Chen et al.
    2022, "Analog Bits", Alg. 1); the model is called as model(x_t, t, x0_self_cond).

    rank_world = (r, k): x0 is the r-th of k equal shares of a global batch (data-parallel training);
    the randomness is drawn for the whole global batch and this share kept, so k processes with
    batch n draw exactly what one process with batch k n would."""
    if prediction not in PREDICTIONS:
        raise BadValue(f"unknown prediction {prediction!r}; choose one of {', '.join(PREDICTIONS)}")
    if weighting not in WEIGHTINGS:
        raise BadValue(f"unknown weighting {weighting!r}; choose one of {', '.join(WEIGHTINGS)}")
    n = x0.shape[0]
    rank, world = rank_world
    mine = slice(rank * n, (rank + 1) * n)
    kwargs = model_kwargs or {}
    gen_device = generator.device if generator is not None else "cpu"
    if t is None:
        t = sample_timesteps(n * world, schedule.T, generator, x0.device)[mine]
    if noise is None:
        noise = torch.randn((n * world, *x0.shape[1:]), generator=generator, device=gen_device)[mine]
        if offset_noise > 0:
            shape = (n * world, x0.shape[1]) + (1,) * (x0.ndim - 2)
            offset = torch.randn(shape, generator=generator, device=gen_device)[mine]
            noise = noise + offset_noise * offset
        noise = noise.to(x0)
    a64 = schedule.alphas_cumprod[t.cpu()]
    a = a64.to(device=x0.device, dtype=x0.dtype)
    x_t = append_dims(a.sqrt(), x0) * x0 + append_dims((1 - a).sqrt(), x0) * noise  # Ho et al. eq. 4
    if self_condition:
        cond = torch.zeros_like(x0)
        use = torch.rand(n * world, generator=generator, device=gen_device)[mine].to(x0.device) < 0.5
        if bool(use.any()):
            with torch.no_grad():
                out = model(x_t, t, cond, **kwargs)
            est = to_eps_x0(out, x_t, a, prediction).x0
            cond = torch.where(append_dims(use, x0), est.detach(), cond)
        output = model(x_t, t, cond, **kwargs)
    else:
        output = model(x_t, t, **kwargs)
    target = target_of(prediction, noise, x0, a)
    loss = (output.float() - target.float()).pow(2).flatten(1).mean(1)
    if weighting == "min_snr":
        snr = a64 / (1 - a64)
        loss = loss * min_snr_weight(snr, prediction, min_snr_gamma).to(loss)
    return loss
