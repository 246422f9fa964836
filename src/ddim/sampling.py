"""The public entry points: `sample` (x_T -> x0) and `invert` (x0 -> x_T) for any model."""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from ddim.errors import BadValue, NonFinite
from ddim.noise import Generators
from ddim.prediction import Clip, make_predictor
from ddim.samplers import DEFAULT_SPACINGS, EXACT_INVERTIBLE, INVERSES, SAMPLERS, ddim_invert
from ddim.samplers._common import Callback
from ddim.samplers.exact import unpack
from ddim.schedule import NoiseSchedule
from ddim.timesteps import make_timesteps

DEFAULT_STEPS = 50


class Trajectory(NamedTuple):
    """The whole run: xs[0] = x_T, xs[i + 1] = x after step i; x0s[i] = the x0 estimate at step i.
    From an exact sampler's latent pair (samplers/exact.py), xs[0] and xs[1] are the pair's two
    states and x0s starts at step 1."""

    samples: Tensor
    xs: Tensor  # [steps + 1, N, ...]
    x0s: Tensor  # [steps, N, ...]
    timesteps: Tensor  # [steps]


def sampling_grid(schedule: NoiseSchedule, steps: int | None, spacing: str | Sequence[int]) -> Tensor:
    """The grid `sample` walks: `steps` (default 50, at most T) timesteps spaced by `spacing`."""
    if steps is None and isinstance(spacing, str):
        steps = min(DEFAULT_STEPS, schedule.T)
    return make_timesteps(schedule.T, steps, spacing, schedule=schedule)


def autograd(grad: bool) -> contextlib.AbstractContextManager:
    """torch.inference_mode() unless the caller asked for gradients (`grad=True`)."""
    return contextlib.nullcontext() if grad else torch.inference_mode()


def released(x: Tensor) -> Tensor:
    """A tensor made under inference_mode, as an ordinary tensor the caller may modify in place."""
    return x.clone() if x.is_inference() else x


def check_finite(x: Tensor, what: str) -> Tensor:
    """Raise NonFinite when x holds NaN or infinity: once, after the loop (one host sync)."""
    if not bool(torch.isfinite(x).all()):
        raise NonFinite(
            f"{what} holds NaN or infinity: the model's output went non-finite (check the checkpoint "
            "and that the data range, prediction type and schedule match it)"
        )
    return x


def sample(
    model: Callable[..., Tensor],
    x_T: Tensor,
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
    grad: bool = False,
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
    to the sampler (e.g. `variance="beta"` for "ddpm").

    An exact sampler (EXACT_INVERTIBLE) also decodes the complex latent `invert` gives it (a real
    x_T is a fresh start; samplers/exact.py). Runs under torch.inference_mode() unless `grad`;
    raises NonFinite if the result holds NaN or infinity."""
    if sampler not in SAMPLERS:
        raise BadValue(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")
    if x_T.is_complex() and sampler not in EXACT_INVERTIBLE:
        raise BadValue(
            f"a complex x_T is the latent of an exact sampler ({', '.join(EXACT_INVERTIBLE)}): decode "
            f"it with the sampler that wrote it, not {sampler!r}"
        )
    fn = SAMPLERS[sampler]
    spacing = DEFAULT_SPACINGS[sampler] if spacing is None else spacing
    if "eta" in inspect.signature(fn).parameters:
        options["eta"] = eta
    elif eta != 0:
        raise BadValue(f"sampler {sampler!r} has no eta; eta applies to 'ddim'")
    timesteps = sampling_grid(schedule, steps, spacing)
    predict = make_predictor(model, schedule, prediction, clip, self_condition)
    what = f"the {sampler!r} sample"
    if not return_all_timesteps:
        with autograd(grad):
            out = fn(predict, x_T, schedule, timesteps, generator=generator, callback=callback, **options)
        return released(check_finite(out, what))

    xs, x0s = list(unpack(x_T)) if x_T.is_complex() else [x_T], []

    def collect(i: int, t: int, x: Tensor, x0: Tensor) -> None:
        xs.append(x)
        x0s.append(x0)
        if callback is not None:
            callback(i, t, x, x0)

    with autograd(grad):
        out = fn(predict, x_T, schedule, timesteps, generator=generator, callback=collect, **options)
        traj = Trajectory(check_finite(out, what), torch.stack(xs), torch.stack(x0s), timesteps)
    return Trajectory(*(released(v) for v in traj))


def invert(
    model: Callable[..., Tensor],
    x0: Tensor,
    schedule: NoiseSchedule,
    steps: int | None = None,
    spacing: str | Sequence[int] | None = None,
    prediction: str = "eps",
    self_condition: bool = False,
    refine: int = 0,
    callback: Callback | None = None,
    sampler: str = "ddim",
    clip: Clip = None,
    grad: bool = False,
) -> Tensor:
    """The deterministic encoding x0 -> latent along the grid that `sample(..., sampler=sampler)`
    walks, so that sample(model, invert(model, x0, ...), ...) with the same steps, spacing,
    prediction and clip reconstructs x0.

    sampler "ddim" (the default): the DDIM encoder x0 -> x_T (DDIM sec. 5.4), approximate;
    `refine` fixed-point iterations per step bring it closer. A name in EXACT_INVERTIBLE: that
    sampler's exact encoder (samplers/exact.py), whose latent is one complex tensor shaped like
    x0 (float32 or float64 only) that the same sampler decodes back to x0 up to rounding.
    Runs under torch.inference_mode() unless `grad`; raises NonFinite on NaN or infinity."""
    if sampler != "ddim" and sampler not in EXACT_INVERTIBLE:
        choices = ", ".join(("ddim", *EXACT_INVERTIBLE))
        raise BadValue(f"sampler {sampler!r} has no encoder; invert with one of {choices}")
    if refine and sampler != "ddim":
        raise BadValue(f"refine applies to sampler='ddim'; {sampler!r} inverts exactly without it")
    timesteps = sampling_grid(schedule, steps, DEFAULT_SPACINGS[sampler] if spacing is None else spacing)
    predict = make_predictor(model, schedule, prediction, clip, self_condition)
    with autograd(grad):
        if sampler == "ddim":
            z = ddim_invert(predict, x0, schedule, timesteps, refine=refine, callback=callback)
        else:
            z = INVERSES[sampler](predict, x0, schedule, timesteps, callback=callback)
    return released(check_finite(z, f"the {sampler!r} latent"))
