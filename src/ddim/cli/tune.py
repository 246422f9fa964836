"""`ddim tune`: a step grid tuned to a checkpoint (`ddim.tuning.tune_timesteps`), stored in the
run folder's tuned-grids.json for `ddim sample --spacing tuned` (and bench-samplers, and
`ddim.load(...)`). The checkpoints themselves are never touched."""

from __future__ import annotations

import argparse
import datetime
from collections.abc import Callable

import torch
from torch import Tensor

from ddim.cli._common import (
    add_clip_option,
    add_run_options,
    non_negative_int,
    positive_int,
    print_dry_run,
    say,
)
from ddim.device import resolve_device
from ddim.distributed import init_from_env
from ddim.errors import BadValue
from ddim.evaluation.features import DigitFeatures
from ddim.evaluation.metrics import feature_statistics, frechet_distance
from ddim.generation import running
from ddim.pipeline import CHECKPOINT_CLIP, load
from ddim.samplers import SAMPLERS, steps_for_calls
from ddim.training.checkpoint import find_checkpoint, read_config
from ddim.tuning import METHODS, TUNED_FILE, run_folder, store_tuned, tune_timesteps

DISTANCES = ("l2", "digits-fd")


def add_parsers(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "tune",
        help="tune a sampler's step grid to a trained model",
        description="Find the timesteps at which --sampler, making --calls model calls, best matches a "
        f"fine reference solve of the checkpoint's model from the same noise, and store them in the run "
        f"folder's {TUNED_FILE}; then `ddim sample --sampler S --steps N --spacing tuned` uses them. "
        "Example: ddim tune --checkpoint runs/mine --sampler unipc --calls 5",
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        metavar="RUN_DIR",
        help="a run folder (its newest checkpoint is used) or one checkpoint folder",
    )
    p.add_argument("--calls", type=positive_int, default=5, help="model calls per image (default 5)")
    deterministic = [s for s in SAMPLERS if not s.startswith("ddpm")]
    p.add_argument("--sampler", choices=deterministic, default="unipc", help="update rule (default unipc)")
    p.add_argument("--n", type=positive_int, default=256, help="tuning examples (default 256)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of their noise (default 0)")
    p.add_argument(
        "--method", choices=METHODS, default="search", help="search (default, best measured) or gits"
    )
    p.add_argument(
        "--reference-steps",
        type=positive_int,
        default=200,
        help="steps of the fine reference solve (DPM-Solver++(2M), log-SNR grid; default 200)",
    )
    p.add_argument(
        "--max-evals", type=positive_int, default=120, help="sampler runs the search may make (default 120)"
    )
    p.add_argument(
        "--distance",
        choices=DISTANCES,
        default="l2",
        help="what the search matches to the reference samples: l2 (pixels, default) or digits-fd (the "
        "Frechet distance of the shipped digit classifier's features of the two sets; for digit models, "
        "it keeps the last step sharp: docs/tuning.md)",
    )
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA weights")
    add_clip_option(p)
    add_run_options(p)
    p.set_defaults(run=run_tune)


def digits_fd_distance(device: torch.device | str = "cpu") -> Callable[[Tensor, Tensor], float]:
    """distance(samples, reference): the Frechet distance between the shipped digit classifier's
    features of the two sets (images clamped to [-1, 1]), for `tune_timesteps(distance=...)`."""
    features = DigitFeatures(device=device)

    def distance(x: Tensor, reference: Tensor) -> float:
        f, g = features(x.clamp(-1, 1)), features(reference.clamp(-1, 1))
        return frechet_distance(*feature_statistics(f), *feature_statistics(g))

    return distance


def run_tune(args: argparse.Namespace) -> None:
    folder = find_checkpoint(args.checkpoint)
    run, step = read_config(folder)
    steps = steps_for_calls(args.sampler, args.calls, exact=True)
    if steps > run.diffusion.timesteps:
        raise BadValue(
            f"--calls {args.calls} needs {steps} steps, more than the model's {run.diffusion.timesteps}"
        )
    target = run_folder(folder)
    if args.dry_run:
        print_dry_run(args, {"checkpoint_folder": folder, "steps": steps, "writes": target / TUNED_FILE})
        return
    ckpt = load(folder, device=init_from_env(resolve_device(args.device)), use_ema=not args.no_ema)
    args.clip = ckpt.clip if args.clip is CHECKPOINT_CLIP else args.clip
    info: dict = {}
    with running(device := ckpt.device):
        grid = tune_timesteps(
            ckpt.model, ckpt.schedule, ckpt.image_shape, args.calls, args.sampler, args.n, args.seed,
            ckpt.prediction, method=args.method, clip=args.clip, self_condition=ckpt.self_condition,
            reference_steps=args.reference_steps, max_evals=args.max_evals, device=device, info=info,
            distance=digits_fd_distance(device) if args.distance == "digits-fd" else None,
            progress=not args.quiet,
        )  # fmt: skip
    entry = {
        "timesteps": grid,
        "sampler": args.sampler,
        "calls": args.calls,
        "method": args.method,
        "distance": args.distance,
        "checkpoint": folder.name,
        "step": step,
        "n": args.n,
        "seed": args.seed,
        "clip": args.clip,
        "error": info.get("error"),
        "start_errors": info.get("start_errors"),
        "seconds": round(info["seconds"], 1),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    file = store_tuned(target, args.sampler, args.calls, entry)
    say(
        args,
        f"{args.sampler} at {args.calls} calls: timesteps {grid} ({info['seconds']:.0f} s); stored in {file}",
    )
    say(
        args,
        f"use it: ddim sample --checkpoint {target} --sampler {args.sampler} --steps {steps} --spacing tuned",
    )
