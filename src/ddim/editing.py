"""Editing real images with a trained model: SDEdit (Meng et al. 2022) and inpainting (DDNM's
data-consistent x0 on DDIM steps, Wang et al. 2023, with RePaint's resampling, Lugmayr et al.
2022). Pure functions of `model(x_t, t)`; noise only from the `generator` given (a
torch.Generator, one per example, or a `PerSampleNoise`, whose per-example streams make an
image's result depend only on its seed and index).

Notation as in samplers/ddim.py: a_t = alphas_cumprod[t], a_next = a at the next grid point.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ddim.errors import BadValue
from ddim.noise import Generators, PerSampleNoise
from ddim.prediction import Clip, make_predictor
from ddim.samplers import DEFAULT_SPACINGS, SAMPLERS, ddim_sigma
from ddim.samplers._common import ddim_move, grid_steps
from ddim.sampling import autograd, check_finite, released, sample, sampling_grid
from ddim.schedule import NoiseSchedule

INPAINT_STEPS = 25
INPAINT_RESAMPLE = 8


def edit(
    model: Callable[..., Tensor],
    x0: Tensor,
    schedule: NoiseSchedule,
    strength: float,
    steps: int | None = None,
    sampler: str = "ddim",
    eta: float = 0.0,
    spacing: str | Sequence[int] | None = None,
    prediction: str = "eps",
    clip: Clip = None,
    generator: Generators | PerSampleNoise = None,
    self_condition: bool = False,
    grad: bool = False,
    **options,
) -> Tensor:
    """SDEdit (Meng et al. 2022, sec. 3): noise x0 to the time set by `strength` with q(x_t | x0)
    (Ho et al. 2020, eq. 4) and sample back with `sampler` over the part of the grid (`steps`
    points spaced by `spacing`, as in `sample`) below strength * T. Strength 0 returns x0
    unchanged (as it does when no grid point lies below strength * T); strength 1 is a fresh
    sample from pure noise. The noise of x_t is the generator's first draw for each example;
    the sampler's per-step noise (eta > 0) comes after it from the same streams. Other options
    go to `sample`."""
    if not 0 <= strength <= 1:
        raise BadValue(f"strength must lie in [0, 1] (0: the input, 1: a fresh sample), got {strength}")
    if sampler not in SAMPLERS:
        raise BadValue(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    grid = sampling_grid(schedule, steps, DEFAULT_SPACINGS[sampler] if spacing is None else spacing)
    if strength < 1:
        grid = grid[grid < strength * schedule.T]
    if strength == 0 or len(grid) == 0:
        return x0.clone()
    source = PerSampleNoise.from_generators(generator, len(x0))
    with autograd(grad):
        eps = source.randn(x0.shape[1:], device=x0.device, dtype=x0.dtype)
        if strength == 1:
            x_t = eps
        else:
            a = schedule.alphas_cumprod[int(grid[0])].item()
            x_t = x0 * a**0.5 + eps * (1 - a) ** 0.5  # Ho et al. eq. 4
    return sample(
        model, x_t, schedule, steps=len(grid), eta=eta, sampler=sampler, spacing=grid.tolist(),
        prediction=prediction, clip=clip, generator=source, self_condition=self_condition,
        grad=grad, **options,
    )  # fmt: skip


def inpaint(
    model: Callable[..., Tensor],
    x0: Tensor,
    mask: Tensor,
    schedule: NoiseSchedule,
    steps: int | None = None,
    generator: Generators | PerSampleNoise = None,
    prediction: str = "eps",
    clip: Clip = None,
    self_condition: bool = False,
    resample: int = INPAINT_RESAMPLE,
    eta: float = 1.0,
    spacing: str | Sequence[int] = "trailing",
    grad: bool = False,
) -> Tensor:
    """Fill the pixels where `mask` is 1 (True; white in a mask image) and keep those where it is
    0, as diffusers does; `mask` broadcasts to x0 (values above 0.5 count as 1). Kept pixels of
    the result equal x0 bit for bit.

    On each of `steps` (default 25) grid steps t -> t_prev, the x0 estimate takes the input's
    kept pixels (DDNM's range-null space step for a masking operator, Wang et al. 2023, eq. 13:
    x0 = A^+ y + (I - A^+ A) x0_est) and DDIM moves x_t with it (eq. 12, `eta`), so the kept
    part is noised with the model's own eps; then RePaint's resampling (Lugmayr et al. 2022,
    Alg. 1; DDNM+'s time travel): the result goes back to t by q(x_t | x_t_prev) (Ho et al.
    eq. 2 over the jump) and the step is redone, `resample` times in all, so the fill agrees with
    what is kept. steps * resample model calls."""
    if isinstance(resample, bool) or not isinstance(resample, int) or resample < 1:
        raise BadValue(f"resample must be a positive integer (1: no resampling), got {resample!r}")
    generate = mask.to(x0.device)
    generate = generate if generate.dtype == torch.bool else generate > 0.5
    try:
        generate = torch.broadcast_to(generate, x0.shape)
    except RuntimeError:
        raise BadValue(
            f"the mask {tuple(mask.shape)} does not fit the images {tuple(x0.shape)}: give one of "
            "their size (1 = generate, 0 = keep)"
        ) from None
    if steps is None and isinstance(spacing, str):
        steps = INPAINT_STEPS
    ts = sampling_grid(schedule, steps, spacing)
    predict = make_predictor(model, schedule, prediction, clip, self_condition)
    source = PerSampleNoise.from_generators(generator, len(x0))
    shape, dev, dt = x0.shape[1:], x0.device, x0.dtype
    with autograd(grad):
        x, x0_est = source.randn(shape, dev, dt), None
        for t, a_t, a_next in grid_steps(schedule, ts):
            sigma = ddim_sigma(a_t, a_next, eta)
            for u in range(resample):
                eps, x0_est = predict(x, t, x0_est)
                x0_est = torch.where(generate, x0_est, x0)  # DDNM eq. 13 for a mask
                x_prev = ddim_move(x0_est, eps, a_next, sigma)  # DDIM eq. 12
                if sigma > 0:
                    x_prev = x_prev + sigma * source.randn(shape, dev, dt)
                if u < resample - 1:  # back to t: q(x_t | x_prev) = N(sqrt(r) x_prev, 1 - r)
                    r = a_t / a_next
                    x = x_prev * r**0.5 + source.randn(shape, dev, dt) * (1 - r) ** 0.5
            x = x_prev
        out = torch.where(generate, x, x0)
    return released(check_finite(out, "the inpainted image"))
