"""Pieces the subcommands share: argument types, the options every command takes, JSON output
for --dry-run, and sampling from a loaded checkpoint (inference mode, optional bf16 autocast,
per-example noise so that an image depends on its seed and index, never on the batch)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from ddim.config import RunConfig
from ddim.device import resolve_device
from ddim.distributed import init_from_env, is_main_process
from ddim.errors import BadValue
from ddim.noise import PerSampleNoise
from ddim.prediction import Clip, classifier_free_guidance
from ddim.sampling import DEFAULT_STEPS, Trajectory, sample
from ddim.timesteps import SPACINGS
from ddim.training import LoadedCheckpoint, load_checkpoint
from ddim.training.checkpoint import find_checkpoint, read_config

TRAJECTORY_SAMPLES = 4  # images whose sampling trajectory is shown
DEFAULT_CLIP = 1.0  # checkpoints trained here model images in [-1, 1], so x0 estimates may be clamped to it


def _number(kind: type, text: str, ok: Callable[[Any], bool], what: str) -> Any:
    """`text` as a finite `kind` for which `ok` holds; inf and nan are refused like any bad value."""
    try:
        value = kind(text)
    except (ValueError, OverflowError):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if not math.isfinite(value) or not ok(value):
        raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
    return value


def positive_int(text: str) -> int:
    return _number(int, text, lambda v: v >= 1, "a positive integer")


def non_negative_int(text: str) -> int:
    return _number(int, text, lambda v: v >= 0, "an integer >= 0")


def seed(text: str) -> int:
    """A seed: an integer in [0, 2**64), the range torch's generators take."""
    return _number(int, text, lambda v: 0 <= v < 2**64, "an integer in [0, 2**64)")


def positive_float(text: str) -> float:
    return _number(float, text, lambda v: v > 0, "a finite number > 0")


def non_negative_float(text: str) -> float:
    return _number(float, text, lambda v: v >= 0, "a finite number >= 0")


def unit_float(text: str) -> float:
    return _number(float, text, lambda v: 0 <= v < 1, "a number in [0, 1)")


def int_tuple(text: str) -> tuple[int, ...]:
    """ "1,2,2" -> (1, 2, 2), each a positive integer."""
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers such as 1,2,2, got {text!r}"
        ) from None
    if not all(v >= 1 for v in values):
        raise argparse.ArgumentTypeError(f"every entry must be a positive integer, got {text}")
    return values


def clip_value(text: str) -> Clip:
    """ "none" -> None, "dynamic" -> "dynamic", a number c > 0 -> clamp x0 to [-c, c]."""
    if text in ("none", "dynamic"):
        return None if text == "none" else text
    return _number(float, text, lambda v: v > 0, "'none', 'dynamic' or a finite number > 0")


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """--device and --dry-run, which every subcommand takes."""
    parser.add_argument(
        "--device",
        default="auto",
        help="auto (CUDA when present, else CPU), cpu, cuda or cuda:N (default auto)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the resolved configuration as JSON and exit without work",
    )


def add_checkpoint_options(parser: argparse.ArgumentParser) -> None:
    """The options of the commands that run a trained model: which checkpoint and which grid."""
    parser.add_argument(
        "--checkpoint",
        required=True,
        metavar="RUN_DIR",
        help="a run folder (its newest checkpoint is used) or one checkpoint folder",
    )
    parser.add_argument(
        "--steps", type=positive_int, default=DEFAULT_STEPS, help=f"sampling steps (default {DEFAULT_STEPS})"
    )
    parser.add_argument(
        "--spacing",
        choices=SPACINGS,
        default=None,
        help="how the steps are spread (default: the sampler's measured best, trailing for ddim)",
    )
    parser.add_argument("--batch-size", type=positive_int, default=256, help="images per batch (default 256)")
    parser.add_argument(
        "--no-ema", action="store_true", help="use the raw weights instead of the EMA weights"
    )
    parser.add_argument("--bf16", action="store_true", help="run the network under bfloat16 autocast")
    add_run_options(parser)


def add_clip_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--clip",
        type=clip_value,
        default=DEFAULT_CLIP,
        metavar="none|C|dynamic",
        help="clamp each step's x0 estimate to [-C, C], threshold it dynamically, or leave it (default 1: "
        "the training images lie in [-1, 1])",
    )


def print_json(config: dict[str, Any]) -> None:
    print(json.dumps(config, indent=2, default=str))


@dataclasses.dataclass(frozen=True)
class Sampling:
    """How to turn x_T into images; the sampler-facing options of `ddim.sample`."""

    steps: int = DEFAULT_STEPS
    eta: float = 0.0
    sampler: str = "ddim"
    spacing: str | None = None  # None: the sampler's default grid
    clip: Clip = DEFAULT_CLIP
    bf16: bool = False
    label: int | None = None  # class-conditional models: the class to sample (None: unconditional)
    guidance: float = 1.0  # classifier-free guidance scale (1: plain conditional)


def locate(args: argparse.Namespace) -> tuple[Path, RunConfig, int]:
    """(folder, run config, step) of --checkpoint, read from its config.json without loading
    weights, after refusing a --steps grid the model cannot take and a missing --device."""
    folder = find_checkpoint(args.checkpoint)
    run, step = read_config(folder)
    if args.steps > run.diffusion.timesteps:
        raise BadValue(
            f"--steps {args.steps} is more than the model's {run.diffusion.timesteps} timesteps; "
            f"pass --steps {run.diffusion.timesteps} or fewer"
        )
    resolve_device(args.device)
    return folder, run, step


def load(args: argparse.Namespace, folder: Path) -> LoadedCheckpoint:
    """The checkpoint's model (EMA weights unless --no-ema) on --device."""
    device = init_from_env(resolve_device(args.device))  # under torchrun: join the group, take its GPU
    return load_checkpoint(folder, use_ema=not args.no_ema, device=device)


@contextmanager
def inference(model: torch.nn.Module, bf16: bool) -> Iterator[torch.device]:
    """Inference mode, with bfloat16 autocast if asked, on the model's device (which it yields)."""
    device = next(model.parameters()).device
    with torch.inference_mode(), torch.autocast(device.type, torch.bfloat16, enabled=bf16):
        yield device


def decode(
    checkpoint: LoadedCheckpoint,
    x_T: Tensor,  # noqa: N803
    options: Sampling,
    seed: int = 0,
    start: int = 0,
    return_all_timesteps: bool = False,
) -> Tensor | Trajectory:
    """Sample from x_T (examples start.. of a run seeded with `seed`) under inference mode; the
    per-step noise is each example's own stream, as in `ddim.sample_seeded`."""
    step_noise = PerSampleNoise.from_seed(seed, len(x_T), start, stream=1)
    model = checkpoint.model
    if options.label is not None:
        y = torch.full((len(x_T),), options.label, dtype=torch.int64)
        model = classifier_free_guidance(checkpoint.model, y, options.guidance, checkpoint.num_classes)
    with inference(checkpoint.model, options.bf16) as device:
        return sample(
            model,
            x_T.to(device),
            checkpoint.schedule,
            options.steps,
            options.eta,
            options.sampler,
            options.spacing,
            checkpoint.prediction,
            options.clip,
            step_noise,
            self_condition=checkpoint.self_condition,
            return_all_timesteps=return_all_timesteps,
        )


def generate(
    checkpoint: LoadedCheckpoint, n: int, seed: int, batch_size: int, options: Sampling, first: int = 0
) -> Tensor:
    """Images first..first+n-1 [n, C, H, W] in [-1, 1] on the CPU; image i is the same for any
    batch_size and any split of the indices among processes."""
    shape = checkpoint.image_shape
    batches = []
    stop = first + n
    for start in tqdm(
        range(first, stop, batch_size), desc="sampling", unit="batch", disable=not is_main_process()
    ):
        x_T = PerSampleNoise.from_seed(seed, min(batch_size, stop - start), start=start).randn(shape)  # noqa: N806
        batches.append(decode(checkpoint, x_T, options, seed, start).float().cpu())
    return torch.cat(batches) if batches else torch.empty(0, *shape)


def trajectory(checkpoint: LoadedCheckpoint, n: int, seed: int, options: Sampling) -> Trajectory:
    """The whole run of the first n images of `generate(checkpoint, ..., seed, ...)`."""
    x_T = PerSampleNoise.from_seed(seed, n).randn(checkpoint.image_shape)  # noqa: N806
    return decode(checkpoint, x_T, options, seed, return_all_timesteps=True)
