"""`ddim train` and `ddim demo`: flags -> a `RunConfig` -> `ddim.training.train`.

Flags left out keep the config dataclasses' defaults (argparse holds None for them), so the
dataclasses stay the one source of defaults and a resumed run can tell which flags were given."""

from __future__ import annotations

import argparse
import dataclasses
import time
import warnings
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from ddim.cli._common import (
    COMPILING,
    TRAJECTORY_SAMPLES,
    add_config_options,
    add_run_options,
    int_tuple,
    non_negative_float,
    non_negative_int,
    positive_float,
    positive_int,
    print_dry_run,
    say,
    seed,
    unit_float,
)
from ddim.config import EMA_WARMUPS, DiffusionConfig, RunConfig, TrainConfig
from ddim.data import DataConfig, build_dataset
from ddim.device import resolve_device
from ddim.errors import BadValue
from ddim.images import save_grid, save_trajectory_strip
from ddim.models import UNetConfig
from ddim.objectives import WEIGHTINGS
from ddim.pipeline import load
from ddim.prediction import PREDICTIONS
from ddim.schedule import SCHEDULE_KINDS
from ddim.training import CheckpointError, train
from ddim.training.checkpoint import ALL_FILES, CHECKPOINTS, find_checkpoint, list_checkpoints, read_config
from ddim.training.run_folder import check_writable, remove_run

# RunConfig section -> the fields that flags of the same name (dashes for underscores) set
SECTIONS = {
    "data": ("size", "channels", "flip", "root", "download"),
    "model": ("base_channels", "channel_mult", "num_res_blocks", "dropout", "self_condition"),
    "diffusion": ("schedule", "timesteps", "prediction", "zero_terminal_snr"),
    "train": tuple(
        "steps batch_size lr warmup_steps ema_decay ema_warmup bf16 grad_accum seed weighting min_snr_gamma "
        "offset_noise label_dropout sample_every sample_steps checkpoint_every keep_last log_every "
        "device".split()
    ),
}
# The demo: 16x16 digits on a 0.3M-parameter UNet, v-prediction with min-SNR weighting (the
# cleanest digits for the time in trials at 1000 and 1500 steps against eps-prediction, larger
# UNets and lr 2e-3). On 2 idle CPU cores a step takes 0.1-0.15 s and the whole demo 3-4 minutes.
DEMO_MODEL = UNetConfig(in_channels=1, base_channels=16, channel_mult=(1, 2, 2))
DEMO_DIFFUSION = DiffusionConfig(prediction="v")
DEMO_TRAIN = TrainConfig(  # the "demo" recipe of docs/defaults.md, spelled out in full
    steps=1500,
    batch_size=64,
    lr=1e-3,
    warmup_steps=50,
    ema_decay=0.995,
    ema_warmup="tf",
    weighting="min_snr",
    log_every=100,
)
DEMO_SAMPLES = 64


def _flag(group: argparse._ArgumentGroup, name: str, text: str, config: Any = None, **kwargs) -> None:
    """An option left None when not given (the config keeps its default, shown from `config`)."""
    if config is not None:
        text = f"{text} (default {getattr(config, name.removeprefix('--').replace('-', '_'))})"
    group.add_argument(name, help=text, default=None, **kwargs)


class _Resume(argparse._StoreTrueAction):
    """--resume: the run's data is the one its checkpoint names, so --data is no longer required."""

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        super().__call__(parser, namespace, values, option_string)
        for action in parser._actions:
            if action.dest == "data":
                action.required = False


def add_parsers(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "train",
        help="train a diffusion model",
        description="Train a UNet on a dataset, writing checkpoints (weights and config) to RUN_DIR. "
        "Example: ddim train --data digits --out runs/mine --steps 3000. --dry-run prints every flag's "
        "resolved value (and the RunConfig as `run`) as JSON: save it, edit it, and train with "
        "--config FILE.json.",
    )
    p.add_argument(
        "--data",
        required=True,
        metavar="DATA",
        help="'digits', a folder of images or of MNIST-style IDX files, or a torchvision name such as "
        "mnist (required unless --resume, which reads it from the checkpoint)",
    )
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="folder for checkpoints and samples")
    p.add_argument(
        "--resume",
        action=_Resume,
        help="continue RUN_DIR's newest checkpoint with its saved config; only training flags "
        "may change, and --steps may raise the total",
    )
    g = p.add_argument_group("data")
    _flag(g, "--size", "image size in pixels (default: the dataset's; 16 for digits)", type=positive_int)
    _flag(g, "--channels", "1 (grey) or 3 (colour) (default: the dataset's)", type=int, choices=(1, 3))
    _flag(g, "--flip", "random left-right flips", action="store_true")
    _flag(
        g,
        "--root",
        "where torchvision sets (--data mnist, ...) live (default ./data)",
        metavar="DIR",
        type=lambda text: str(Path(text).expanduser().resolve()),
    )  # absolute: a resume elsewhere finds it
    _flag(g, "--download", "fetch a torchvision set into --root when missing", action="store_true")
    g = p.add_argument_group("model")
    model = UNetConfig()
    _flag(g, "--base-channels", "channels at full resolution", model, type=positive_int)
    _flag(g, "--channel-mult", "channel multiplier per level, e.g. 1,2,2", model, type=int_tuple)
    _flag(g, "--num-res-blocks", "residual blocks per level", model, type=positive_int)
    _flag(g, "--dropout", "dropout in the residual blocks", model, type=unit_float)
    _flag(g, "--self-condition", "condition on the previous x0 estimate", action="store_true")
    _flag(g, "--conditional", "class-conditional on the dataset's labels", action="store_true")
    g = p.add_argument_group("diffusion")
    diffusion = DiffusionConfig()
    _flag(g, "--schedule", "noise schedule", diffusion, choices=SCHEDULE_KINDS)
    _flag(g, "--timesteps", "diffusion timesteps T", diffusion, type=positive_int)
    _flag(g, "--prediction", "what the network predicts", diffusion, choices=PREDICTIONS)
    _flag(g, "--zero-terminal-snr", "rescale the schedule to zero terminal SNR", action="store_true")
    g = p.add_argument_group("training")
    t = TrainConfig()
    _flag(g, "--steps", "total optimizer steps", t, type=positive_int)
    _flag(g, "--batch-size", "examples per optimizer step", t, type=positive_int)
    _flag(g, "--lr", "peak learning rate", t, type=positive_float)
    _flag(g, "--warmup-steps", "linear learning-rate warm-up", t, type=non_negative_int)
    _flag(g, "--ema-decay", "the most the EMA decay of the weights reaches", t, type=unit_float)
    _flag(
        g,
        "--ema-warmup",
        "the EMA decay over the run: power (EDM2's: an average as wide as 10%% of the steps so far, "
        "so right for short and long runs), tf ((1 + n) / (10 + n)) or none",
        t,
        choices=EMA_WARMUPS,
    )
    _flag(g, "--bf16", "bfloat16 autocast", action="store_true")
    _flag(g, "--grad-accum", "micro-batches per step (must divide --batch-size)", t, type=positive_int)
    _flag(g, "--seed", "seed of the run, in [0, 2**64)", t, type=seed)
    _flag(g, "--weighting", "loss weighting over timesteps", t, choices=WEIGHTINGS)
    _flag(g, "--min-snr-gamma", "gamma of min-SNR weighting", t, type=positive_float)
    _flag(g, "--offset-noise", "offset-noise strength", t, type=non_negative_float)
    _flag(g, "--label-dropout", "P(label -> null) for classifier-free guidance", t, type=unit_float)
    _flag(g, "--sample-every", "steps between sample grids, 0: never", t, type=non_negative_int)
    _flag(g, "--sample-steps", "DDIM steps of those grids (at most --timesteps)", t, type=positive_int)
    _flag(g, "--checkpoint-every", "steps between checkpoints, 0: only the last", t, type=non_negative_int)
    _flag(g, "--keep-last", "checkpoints kept, 0: all", t, type=non_negative_int)
    _flag(g, "--log-every", "steps between log lines (and the last step), 0: never", t, type=non_negative_int)
    _flag(g, "--device", "auto (CUDA when present, else CPU), cpu, cuda or cuda:N", t)
    _flag(
        g,
        "--compile",
        "torch.compile the UNet: on a CPU about 1.1x a step after a first compile of about 2 minutes "
        "(5 s once cached), so it pays in runs of 6,000 steps or more; results round slightly "
        "differently from eager (docs/performance.md)",
        action="store_true",
    )
    add_config_options(p)
    p.set_defaults(run=run_train)

    p = commands.add_parser(
        "demo",
        help="train a small model on digits and sample it (minutes on a CPU)",
        description="Train a small UNet on the built-in 16x16 digits, sample a grid with DDIM and save it "
        "with a strip of the sampling trajectory. Example: ddim demo --out ddim-demo",
    )
    p.add_argument("--out", default="ddim-demo", help="folder for the run and the images (default ddim-demo)")
    p.add_argument("--steps", type=positive_int, default=50, help="DDIM sampling steps (default 50)")
    p.add_argument(
        "--train-steps",
        type=positive_int,
        default=DEMO_TRAIN.steps,
        help=f"training steps (default {DEMO_TRAIN.steps})",
    )
    add_run_options(p)
    p.set_defaults(run=run_demo)


def _given(args: argparse.Namespace, section: str) -> dict[str, Any]:
    """The flags of one RunConfig section that were given on the command line."""
    return {name: getattr(args, name) for name in SECTIONS[section] if getattr(args, name) is not None}


def _data(text: str) -> str:
    """--data as stored: a path that exists becomes absolute (so that a resume from another
    folder reads the same data); a name such as digits stays a name."""
    return str(Path(text).resolve()) if Path(text).exists() else text


def _new_run(args: argparse.Namespace) -> tuple[RunConfig, Dataset]:
    """A fresh RunConfig from the flags, with the data's size and channels filled in from the dataset."""
    found = list_checkpoints(Path(args.out) / CHECKPOINTS)
    if found:
        raise BadValue(
            f"{args.out} already holds a run (newest checkpoint {found[-1].name}): pass --resume to continue "
            "it, or choose another --out"
        )
    data = DataConfig(_data(args.data), **_given(args, "data"))
    dataset = build_dataset(data)
    image, _ = dataset[0]
    channels, height, width = image.shape
    data = dataclasses.replace(data, size=height if height == width else (height, width), channels=channels)
    num_classes = None
    if args.conditional:
        num_classes = dataset.num_classes
        if num_classes is None:
            raise BadValue(f"--conditional needs a labelled dataset, and {args.data} has no labels")
    model = UNetConfig(in_channels=channels, num_classes=num_classes, **_given(args, "model"))
    if height % model.downsample_factor or width % model.downsample_factor:
        raise BadValue(
            f"images of {height}x{width} cannot be halved {len(model.channel_mult) - 1} times as "
            f"--channel-mult {','.join(map(str, model.channel_mult))} needs: pick a --size divisible by "
            f"{model.downsample_factor}"
        )
    diffusion = DiffusionConfig(**_given(args, "diffusion"))
    train_flags = _given(args, "train")
    train_flags.setdefault("sample_steps", min(TrainConfig.sample_steps, diffusion.timesteps))
    return RunConfig(model, diffusion, data, TrainConfig(**train_flags)), dataset


def _resumed_run(args: argparse.Namespace) -> RunConfig:
    """The saved RunConfig of the run in --out, with the training flags given applied."""
    if not list_checkpoints(Path(args.out) / CHECKPOINTS):
        raise CheckpointError(f"{args.out} holds no checkpoints to resume; train it without --resume first")
    with warnings.catch_warnings():  # train() names a skipped damaged checkpoint
        warnings.simplefilter("ignore")
        checkpoint = find_checkpoint(args.out, ALL_FILES)
    run, step = read_config(checkpoint)
    given = {}
    if args.data is not None and _data(args.data) != _data(run.data.dataset):
        given[("data", "dataset")] = args.data
    for section in ("data", "model", "diffusion"):
        given |= {(section, name): value for name, value in _given(args, section).items()}
    changed = [
        "--data" if name == "dataset" else f"--{name.replace('_', '-')}"
        for (section, name), value in given.items()
        if value != getattr(getattr(run, section), name)
    ]
    if args.conditional and run.model.num_classes is None:
        changed.append("--conditional")
    if changed:
        raise BadValue(
            f"{', '.join(changed)} would change the run being resumed: a resumed run keeps its saved "
            f"data, model and diffusion settings; leave {' and '.join(changed)} out, or train a new run "
            "in another --out"
        )
    if args.steps is not None and args.steps < step:
        raise BadValue(f"--steps {args.steps} is below the {step} steps already done in {checkpoint}")
    return dataclasses.replace(run, train=dataclasses.replace(run.train, **_given(args, "train")))


def resolved_flags(run: RunConfig) -> dict[str, Any]:
    """Each flag that sets a field of `run`, at its value there: read back by --config, they
    give `run` again whatever the dataclasses' defaults are by then."""
    flags = {name: getattr(getattr(run, section), name) for section in SECTIONS for name in SECTIONS[section]}
    if not isinstance(run.data.size, int):  # height != width: only the dataset can say it
        flags["size"] = None
    return {**flags, "data": run.data.dataset, "conditional": run.model.num_classes is not None}


def run_train(args: argparse.Namespace) -> None:
    run, dataset = (_resumed_run(args), None) if args.resume else _new_run(args)
    resolve_device(run.train.device)  # fail now on a device that is not there
    if args.dry_run:
        print_dry_run(args, run.to_dict(), **resolved_flags(run))
        return
    progress = not args.quiet
    if args.compile:
        say(args, COMPILING)
    checkpoint = train(
        run, args.out, resume=args.resume, dataset=dataset, compile=args.compile, progress=progress
    )
    say(args, f"trained to step {run.train.steps}; newest checkpoint: {checkpoint}")


def demo_config(train_steps: int, device: str) -> RunConfig:
    train_config = dataclasses.replace(
        DEMO_TRAIN, steps=train_steps, device=device, sample_every=0, checkpoint_every=0, keep_last=1
    )
    return RunConfig(DEMO_MODEL, DEMO_DIFFUSION, DataConfig("digits", size=16, channels=1), train_config)


def run_demo(args: argparse.Namespace) -> None:
    run = demo_config(args.train_steps, args.device)
    device = resolve_device(args.device)
    out = Path(args.out)
    if args.steps > run.diffusion.timesteps:
        raise BadValue(f"--steps {args.steps} is more than the model's {run.diffusion.timesteps} timesteps")
    if args.dry_run:
        print_dry_run(args, run.to_dict())
        return
    check_writable(out)  # before the work: the images go here
    if (out / "run").exists():  # an earlier demo's run: deleted only if ddim wrote all of it
        remove_run(out / "run")
        say(args, f"replacing the earlier demo run in {out / 'run'}")
    start = time.perf_counter()
    progress = not args.quiet
    pipe = load(train(run, out / "run", progress=progress), device=device)
    images = pipe.sample(DEMO_SAMPLES, steps=args.steps, output="tensor", progress=progress)
    grid = save_grid(images, out / "samples.png")
    steps = pipe.trajectory(TRAJECTORY_SAMPLES, steps=args.steps)
    strip = save_trajectory_strip(steps.xs.cpu(), steps.x0s.cpu(), out / "trajectory.png")
    say(
        args,
        f"trained {args.train_steps} steps and sampled {DEMO_SAMPLES} digits ({args.steps} DDIM steps) "
        f"on {device} in {time.perf_counter() - start:.0f} s",
    )
    say(args, f"samples:    {grid}")
    say(args, f"trajectory: {strip}")
