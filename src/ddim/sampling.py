"""The public entry points: `sample` (x_T -> x0) and `invert` (x0 -> x_T) for any model."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from ddim.errors import BadValue
from ddim.noise import Generators, PerSampleNoise
from ddim.prediction import Clip, make_predictor
from ddim.samplers import DEFAULT_SPACINGS, SAMPLERS, ddim_invert
from ddim.samplers._common import Callback
from ddim.schedule import NoiseSchedule
from ddim.timesteps import make_timesteps

DEFAULT_STEPS = 50


class Trajectory(NamedTuple):
    """The whole run: xs[0] = x_T, xs[i + 1] = x after step i; x0s[i] = the x0 estimate at step i."""

    samples: Tensor
    xs: Tensor  # [steps + 1, N, ...]
    x0s: Tensor  # [steps, N, ...]
    timesteps: Tensor  # [steps]


def _grid(schedule: NoiseSchedule, steps: int | None, spacing: str | Sequence[int]) -> Tensor:
    if steps is None and isinstance(spacing, str):
        steps = min(DEFAULT_STEPS, schedule.T)
    return make_timesteps(schedule.T, steps, spacing, schedule=schedule)


def sample(
    model: Callable[..., Tensor],
    x_T: Tensor,  # noqa: N803
    schedule: NoiseSchedule,
    steps: int | None = None,
    eta: float = 0.0,
    sampler: str = "ddim",
    spacing: str | Sequence[int] | None = None,
    prediction: str = "eps",
    clip: Clip = None,
    generator: Generators = None,
    callback: Callback | None = None,
    self_condition: bool = False,
    return_all_timesteps: bool = False,
    **options,
) -> Tensor | Trajectory:
    """Sample x0 from x_T with a named sampler on a grid of `steps` timesteps (default 50);
    `spacing` None takes the sampler's measured best grid (DEFAULT_SPACINGS: "trailing" for ddim).

    `model(x_t, t)` maps a float tensor [N, ...] and int64 timesteps [N] to a tensor shaped like
    x_t holding the declared `prediction` ("eps", "x0" or "v"). `clip` (default None: no
    clipping, right for latents and any data outside [-1, 1]) clamps the x0 estimate and re-derives
    eps from it. `generator` is a torch.Generator or one per example; the same seed gives the same
    image whatever the batch size. `callback(i, t, x, x0)` sees every step; with
    `return_all_timesteps` the whole trajectory is returned as a `Trajectory`. Other options go
    to the sampler (e.g. `variance="beta"` for "ddpm")."""
    if sampler not in SAMPLERS:
        raise BadValue(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    fn = SAMPLERS[sampler]
    spacing = DEFAULT_SPACINGS[sampler] if spacing is None else spacing
    if "eta" in inspect.signature(fn).parameters:
        options["eta"] = eta
    elif eta != 0:
        raise BadValue(f"sampler {sampler!r} has no eta; eta applies to 'ddim'")
    timesteps = _grid(schedule, steps, spacing)
    predict = make_predictor(model, schedule, prediction, clip, self_condition)
    if not return_all_timesteps:
        return fn(predict, x_T, schedule, timesteps, generator=generator, callback=callback, **options)

    xs, x0s = [x_T], []

    def collect(i: int, t: int, x: Tensor, x0: Tensor) -> None:
        xs.append(x)
        x0s.append(x0)
        if callback is not None:
            callback(i, t, x, x0)

    out = fn(predict, x_T, schedule, timesteps, generator=generator, callback=collect, **options)
    return Trajectory(out, torch.stack(xs), torch.stack(x0s), timesteps)


def sample_seeded(
    model: Callable[..., Tensor],
    schedule: NoiseSchedule,
    shape: Sequence[int],
    seed: int,
    start: int,
    n: int,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    **options,
) -> Tensor:
    """Examples start..start+n-1 of the run seeded with `seed`: x_T and each example's per-step
    noise come from the seed and the example's index, so an image is the same however the
    examples are split into batches or processes. `options` go to `sample`."""
    x_T = PerSampleNoise.from_seed(seed, n, start).randn(shape, device=device, dtype=dtype)  # noqa: N806
    return sample(
        model, x_T, schedule, generator=PerSampleNoise.from_seed(seed, n, start, stream=1), **options
    )


def invert(
    model: Callable[..., Tensor],
    x0: Tensor,
    schedule: NoiseSchedule,
    steps: int | None = None,
    spacing: str | Sequence[int] = "trailing",
    prediction: str = "eps",
    self_condition: bool = False,
    refine: int = 0,
    callback: Callback | None = None,
) -> Tensor:
    """The deterministic DDIM encoding x0 -> x_T along the grid that `sample(..., eta=0)` walks,
    so that sample(model, invert(model, x0, ...), ...) reconstructs x0 (DDIM sec. 5.4)."""
    timesteps = _grid(schedule, steps, spacing)
    predict = make_predictor(model, schedule, prediction, None, self_condition)
    return ddim_invert(predict, x0, schedule, timesteps, refine=refine, callback=callback)
