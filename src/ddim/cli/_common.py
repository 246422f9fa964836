"""Argument parsing the subcommands share: argument types, the options every command takes
(--config, --dry-run, --quiet), the options of the commands that run a model, and --dry-run's
JSON, which --config reads back (`ddim.cli.config_file`). Making images is the
pipeline's job (`ddim.load`, `ddim.generation`); the commands only map flags onto it."""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable
from typing import Any

from ddim.cli.config_file import ConfigAction, flag_values
from ddim.device import resolve_device
from ddim.distributed import init_from_env
from ddim.pipeline import Pipeline, describe, load
from ddim.prediction import Clip
from ddim.real_images import CHECKPOINT_CLIP
from ddim.sampling import DEFAULT_STEPS
from ddim.timesteps import SPACINGS

TRAJECTORY_SAMPLES = 4  # images whose sampling trajectory is shown


def _number(kind: type, text: str, ok: Callable[[Any], bool], what: str) -> Any:
    """`text` as a finite `kind` for which `ok` holds; inf and nan are refused like any bad value."""
    try:
        value = kind(text)
    except (ValueError, OverflowError):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if (isinstance(value, float) and not math.isfinite(value)) or not ok(value):
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
    """ "none" -> None, "dynamic" -> "dynamic", "checkpoint" -> the checkpoint's data range (the
    default), a number c > 0 -> clamp x0 to [-c, c]."""
    if text in ("none", "dynamic", "checkpoint"):
        return {"none": None, "dynamic": "dynamic", "checkpoint": CHECKPOINT_CLIP}[text]
    return _number(float, text, lambda v: v > 0, "'none', 'dynamic', 'checkpoint' or a finite number > 0")


def add_config_options(parser: argparse.ArgumentParser) -> None:
    """--config, --dry-run and --quiet, which every subcommand takes."""
    parser.add_argument(
        "--config",
        action=ConfigAction,
        metavar="FILE",
        help="a .toml or .json file of flag values (keys: the flags' long names, e.g. batch_size = 64), "
        "taken as defaults that the flags given here override; --dry-run prints one",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the resolved configuration as JSON (a file that --config reads back) and exit without "
        "work",
    )
    parser.add_argument(
        "--quiet", action="store_true", help="no progress bars and no info lines; errors still print"
    )


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """--device, --config, --dry-run and --quiet, which every subcommand but train takes (train's
    --device is in its training group)."""
    parser.add_argument(
        "--device",
        default="auto",
        help="auto (CUDA when present, else CPU), cpu, cuda or cuda:N (default auto)",
    )
    add_config_options(parser)


def say(args: argparse.Namespace, *text: object) -> None:
    """An info line (what was written, how long it took), left out under --quiet."""
    if not args.quiet:
        print(*text)


def add_checkpoint_options(parser: argparse.ArgumentParser, steps_help: str | None = None) -> None:
    """The options of the commands that run a trained model: which checkpoint and which grid."""
    parser.add_argument(
        "--checkpoint",
        required=True,
        metavar="RUN_DIR",
        help="a run folder (its newest intact checkpoint is used), one checkpoint folder, or a diffusers "
        "UNet2DModel folder",
    )
    parser.add_argument(
        "--steps",
        type=positive_int,
        default=None,
        help=steps_help or f"sampling steps (default {DEFAULT_STEPS})",
    )
    parser.add_argument(
        "--spacing",
        choices=(*SPACINGS, "tuned"),
        default=None,
        help="how the steps are spread (default: the sampler's measured best, trailing for ddim; tuned: the "
        "grid `ddim tune` stored in the run folder for this sampler and step count)",
    )
    parser.add_argument("--batch-size", type=positive_int, default=256, help="images per batch (default 256)")
    parser.add_argument(
        "--no-ema", action="store_true", help="use the raw weights instead of the EMA weights"
    )
    parser.add_argument("--bf16", action="store_true", help="run the network under bfloat16 autocast")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the network: on a CPU about 1.5x a model call after a first compile of "
        "about a minute (5 s once cached), so it pays beyond about 2,000 calls (batches x steps); "
        "images round slightly differently from eager (docs/performance.md)",
    )
    add_run_options(parser)


def add_clip_option(
    parser: argparse.ArgumentParser, default_help: str = "the checkpoint's data range"
) -> None:
    parser.add_argument(
        "--clip",
        type=clip_value,
        default=CHECKPOINT_CLIP,
        metavar="none|C|dynamic|checkpoint",
        help="clamp each step's x0 estimate to [-C, C], threshold it dynamically, or leave it (default "
        f"checkpoint: {default_help}; 1 for ddim checkpoints, whose images lie in [-1, 1])",
    )


def print_dry_run(args: argparse.Namespace, run: Any, **flags: Any) -> None:
    """--dry-run's JSON: the command's flags (with `flags` in place of their parsed values), then
    `run`, what they resolve to, which --config skips when it reads the file back."""
    config = {**flag_values(args), **flags, "run": run}
    if "clip" in config and config["clip"] is None:  # null would read back as the default
        config["clip"] = "none"
    print(json.dumps(config, indent=2, default=str))


def dry_run(args: argparse.Namespace, **extra: Any) -> bool:
    """With --dry-run, print the command's options and, as `run`, what --checkpoint holds (read
    from its config files, no weights loaded) and `extra`; whether it did."""
    if args.dry_run:
        print_dry_run(args, {**describe(args.checkpoint), **extra})
    return args.dry_run


COMPILING = (
    "compiling the network (--compile): the first model call waits about 1-2 minutes on a CPU, "
    "about 5 s when an earlier run cached the same graphs"
)


def open_pipeline(args: argparse.Namespace) -> Pipeline:
    """`ddim.load(--checkpoint)` on --device (joining the process group under torchrun), EMA
    weights unless --no-ema, bf16 autocast with --bf16, torch.compile with --compile."""
    device = init_from_env(resolve_device(args.device))
    compile = getattr(args, "compile", False)
    if compile:
        say(args, COMPILING)
    return load(args.checkpoint, device=device, use_ema=not args.no_ema, bf16=args.bf16, compile=compile)
