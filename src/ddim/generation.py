"""One way to make images from a model: seeded per example, batched, under inference mode.

`generate` is what the pipeline (`ddim.load`), the CLI, the trainer's preview grids and the
sampler benchmark all call. Example i of a run seeded with `seed` takes its x_T from stream 0 of
`PerSampleNoise` at index i and its per-step noise (eta > 0, ddpm, ...) from stream 1, so an image
depends only on the seed, its index and the sampling options: never on the batch size, the first
index of a call, or how the indices are split among processes.

    images = generate(model, schedule, (1, 16, 16), 64, seed=0, steps=50, prediction="eps")
    for batch in generate_batches(model, schedule, shape, 10_000, seed=0, batch_size=256): ...
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ddim.device import adjust_threads
from ddim.errors import BadValue
from ddim.noise import PerSampleNoise
from ddim.prediction import classifier_free_guidance
from ddim.sampling import Trajectory, resolve_sampler, sample
from ddim.schedule import NoiseSchedule

X_T_STREAM, STEP_NOISE_STREAM = 0, 1  # PerSampleNoise streams: the initial noise, each step's noise


def model_device(model: Callable[..., Tensor], default: torch.device | str | None = None) -> torch.device:
    """Where `model` runs: its parameters' device if it has any, else `default` (else the CPU)."""
    params = model.parameters() if isinstance(model, torch.nn.Module) else iter(())
    first = next(params, None)
    return first.device if first is not None else torch.device(default or "cpu")


def running(device: torch.device, bf16: bool = False, grad: bool = False) -> contextlib.ExitStack:
    """Inference mode (unless `grad`), with bfloat16 autocast on `device` when `bf16`."""
    stack = contextlib.ExitStack()
    if not grad:
        stack.enter_context(torch.inference_mode())
    if bf16:
        stack.enter_context(torch.autocast(device.type, torch.bfloat16))
    return stack


def sample_seeded(
    model: Callable[..., Tensor],
    schedule: NoiseSchedule,
    shape: Sequence[int],
    seed: int,
    start: int,
    n: int,
    *,
    x_T: Tensor | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    labels: Tensor | None = None,
    guidance: float = 1.0,
    null_class: int | None = None,
    **options,
) -> Tensor | Trajectory:
    """Examples start..start+n-1 of the run seeded with `seed`, as one batch (see the module's
    docstring); `x_T` [n, ...] replaces the seeded initial noise (decoding given latents). A
    class-conditional model gets `labels` [n] (classifier-free guidance `guidance`, with
    `null_class` as the model's "no label" index). `options` go to `ddim.sample`."""
    if x_T is None:
        x_T = PerSampleNoise.from_seed(seed, n, start, stream=X_T_STREAM).randn(shape)
    elif len(x_T) != n:
        raise BadValue(f"got {len(x_T)} latents for {n} examples; pass one per example")
    if labels is not None:
        if null_class is None:
            raise BadValue("labels need null_class: the model's 'no label' index (its num_classes)")
        model = classifier_free_guidance(model, labels, guidance, null_class)
    step_noise = PerSampleNoise.from_seed(seed, n, start, stream=STEP_NOISE_STREAM)
    x_T = x_T.to(device=device, dtype=x_T.dtype if x_T.is_complex() else dtype)  # exact latents
    return sample(model, x_T, schedule, generator=step_noise, **options)


def generate_batches(
    model: Callable[..., Tensor],
    schedule: NoiseSchedule,
    shape: Sequence[int],
    n: int,
    *,
    seed: int = 0,
    start: int = 0,
    batch_size: int = 256,
    x_T: Tensor | None = None,
    labels: Tensor | None = None,
    device: torch.device | str | None = None,
    bf16: bool = False,
    progress: bool = True,
    **options,
) -> Iterator[Tensor | Trajectory]:
    """Examples start..start+n-1 of the run seeded with `seed`, `batch_size` at a time, each batch
    float32 on the CPU (a `Trajectory` with `return_all_timesteps=True`), under inference mode
    and, with `bf16`, bfloat16 autocast. `x_T` [n, ...] and `labels` [n] are split alike. The
    progress bar counts images. `options` go to `sample_seeded` and `ddim.sample`."""
    if batch_size < 1:
        raise BadValue(f"batch_size must be at least 1, got {batch_size}")
    device = model_device(model, device)
    resolve_sampler(schedule, **options)  # bad sampling options are refused before the first batch
    with tqdm(total=n, desc="sampling", unit="image", disable=not progress, leave=False) as bar:
        for first in range(0, n, batch_size):
            adjust_threads()  # follow the machine's load (ddim.device)
            k = min(batch_size, n - first)
            part = slice(first, first + k)
            with running(device, bf16):
                out = sample_seeded(
                    model,
                    schedule,
                    shape,
                    seed,
                    start + first,
                    k,
                    device=device,
                    x_T=None if x_T is None else x_T[part],
                    labels=None if labels is None else labels[part],
                    **options,
                )
            bar.update(k)
            if isinstance(out, Trajectory):
                yield Trajectory(*(v.float().cpu() for v in out[:3]), out.timesteps)
            else:
                yield out.float().cpu()


def generate(
    model: Callable[..., Tensor], schedule: NoiseSchedule, shape: Sequence[int], n: int, **options
) -> Tensor | Trajectory:
    """All of `generate_batches(model, schedule, shape, n, **options)` as one tensor [n, *shape]
    (or one `Trajectory`, batches joined along the example dimension)."""
    parts = list(generate_batches(model, schedule, shape, n, **options))
    if not parts:
        return torch.empty(0, *shape)
    if isinstance(parts[0], Trajectory):
        joined = (torch.cat([p[i] for p in parts], dim=min(i, 1)) for i in range(3))
        return Trajectory(*joined, parts[0].timesteps)
    return torch.cat(parts)
