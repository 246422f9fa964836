"""The public entry points: `sample` (x_T -> x0) and `invert` (x0 -> x_T) for any model."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from ddim.errors import BadValue, NonFinite
from ddim.noise import Generators
from ddim.prediction import Clip, make_predictor
from ddim.samplers import DEFAULT_SPACINGS, EXACT_INVERTIBLE, INVERSES, Sampler, ddim_invert, registered
from ddim.samplers._common import Callback
from ddim.samplers.exact import unpack
from ddim.schedule import NoiseSchedule
from ddim.timesteps import make_timesteps

DEFAULT_STEPS = 50
# The noise check of `check_noise_left`: data N(0, PROBE_S^2), the spread of images in [-1, 1], and
# the spread ratio above which a sample is mostly noise (docs/samplers.md, "Few steps": heun on
# MNIST, linear schedule, 5 steps: 2.7x, FD 19.3; 10 steps: 1.25x, FD 2.47)
PROBE_S, NOISE_LEFT_LIMIT = 0.5, 2.0


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


def spread_ratio(sampler: str, schedule: NoiseSchedule, timesteps: Tensor) -> float:
    """The spread of `sampler`'s output on this grid over the data's, for N(0, PROBE_S^2) data and
    its exact denoiser E[x0 | x_t] = sqrt(a) s^2 / (a s^2 + 1 - a) x_t (tests/oracles.py). The
    sampler is then linear in x_T ~ N(0, 1), so one run from x_T = 1 gives the ratio."""
    a_all, s2 = schedule.alphas_cumprod.tolist(), PROBE_S**2

    def predict(x: Tensor, t: int, x0_prev: Tensor | None = None) -> tuple[Tensor, Tensor]:
        a = a_all[t]
        x0 = x * (a**0.5 * s2 / (a * s2 + 1 - a))
        return (x - a**0.5 * x0) / (1 - a) ** 0.5, x0

    out = registered(sampler)(predict, torch.ones(1, dtype=torch.float64), schedule, timesteps)
    return abs(out.item()) / PROBE_S


def check_noise_left(sampler: str, schedule: NoiseSchedule, timesteps: Tensor, spacing: str) -> None:
    """Refuse a `spacing` grid on which `sampler` would return mostly noise (a spread ratio above
    NOISE_LEFT_LIMIT), naming the fewest steps of that spacing (up to 100) that pass. The reason
    given is heun's, the one registered sampler that `may_leave_noise`."""
    ratio = spread_ratio(sampler, schedule, timesteps)
    if ratio <= NOISE_LEFT_LIMIT:
        return
    fewest = next(
        (n for n in range(len(timesteps) + 1, min(schedule.T, 100) + 1)
         if spread_ratio(sampler, schedule, sampling_grid(schedule, n, spacing)) <= NOISE_LEFT_LIMIT),
        None,
    )  # fmt: skip
    raise BadValue(
        f"sampler {sampler!r} on a {len(timesteps)}-step {spacing} grid returns mostly noise ({ratio:.1f}x "
        "the data's spread on Gaussian data): a trapezoidal step across a large fall in noise (above all "
        "the one into the last grid point, where the model takes its input for nearly clean) removes "
        f"only about half the noise it starts from; use {f'steps >= {fewest}' if fewest else 'more steps'}, "
        "or a one-call-per-step sampler (ddim, dpmpp_2m) for few model calls"
    )


def resolve_sampler(
    schedule: NoiseSchedule,
    sampler: str = "ddim",
    steps: int | None = None,
    spacing: str | Sequence[int] | None = None,
    eta: float = 0.0,
    **_other_options,
) -> tuple[Sampler, Tensor]:
    """The registry entry and the grid that `sample` walks for these options, after every check
    it makes of them, so that a caller (`generation.generate_batches`) can refuse bad options
    before any work; `sample`'s other options are accepted and ignored here."""
    entry = registered(sampler)
    spacing = entry.spacing if spacing is None else spacing
    if eta != 0 and not entry.takes_eta:
        raise BadValue(f"sampler {sampler!r} has no eta; eta applies to 'ddim'")
    timesteps = sampling_grid(schedule, steps, spacing)
    if entry.may_leave_noise and isinstance(spacing, str):  # a custom grid is taken as given
        check_noise_left(sampler, schedule, timesteps, spacing)
    return entry, timesteps


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
    entry, timesteps = resolve_sampler(schedule, sampler, steps, spacing, eta)
    if x_T.is_complex() and sampler not in EXACT_INVERTIBLE:
        raise BadValue(
            f"a complex x_T is the latent of an exact sampler ({', '.join(EXACT_INVERTIBLE)}): decode "
            f"it with the sampler that wrote it, not {sampler!r}"
        )
    if entry.takes_eta:
        options["eta"] = eta
    predict = make_predictor(model, schedule, prediction, clip, self_condition)
    what = f"the {sampler!r} sample"
    if not return_all_timesteps:
        with autograd(grad):
            out = entry(predict, x_T, schedule, timesteps, generator=generator, callback=callback, **options)
        return released(check_finite(out, what))

    xs, x0s = list(unpack(x_T)) if x_T.is_complex() else [x_T], []

    def collect(i: int, t: int, x: Tensor, x0: Tensor) -> None:
        xs.append(x)
        x0s.append(x0)
        if callback is not None:
            callback(i, t, x, x0)

    with autograd(grad):
        out = entry(predict, x_T, schedule, timesteps, generator=generator, callback=collect, **options)
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
