"""`ddim sample`, `ddim invert` and `ddim interpolate`: from a trained checkpoint to images, from
images back to their DDIM latents, and along the great circle between two latents."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset, TensorDataset

from ddim.cli._common import (
    TRAJECTORY_SAMPLES,
    Sampling,
    add_checkpoint_options,
    add_clip_option,
    decode,
    generate,
    inference,
    load,
    locate,
    non_negative_float,
    non_negative_int,
    positive_int,
    print_json,
    trajectory,
)
from ddim.config import RunConfig
from ddim.data import load_dataset, to_uint8
from ddim.device import resolve_device
from ddim.diffusers_compat import is_diffusers_folder, load_diffusers
from ddim.distributed import gather_on_main, init_from_env, is_main_process, split_range
from ddim.errors import BadValue, MissingFile
from ddim.images import save_grid, save_trajectory_strip
from ddim.noise import PerSampleNoise
from ddim.samplers import DEFAULT_SPACINGS, SAMPLERS, slerp
from ddim.sampling import invert


def add_parsers(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "sample",
        help="draw images from a trained model",
        description="Draw --n images from a checkpoint and save them as a grid (and optionally as an npz "
        "array and a strip of the sampling trajectory). Image i depends only on --seed and i.",
    )
    add_checkpoint_options(p)
    add_clip_option(p)
    p.add_argument(
        "--n",
        "--num-samples",
        dest="n",
        type=positive_int,
        default=64,
        help="number of images (default 64); under torchrun write --num-samples, since torchrun reads --n as "
        "an abbreviation of its own options",
    )
    p.add_argument(
        "--eta", type=non_negative_float, default=0.0, help="DDIM eta: 0 deterministic, 1 DDPM-like"
    )
    p.add_argument("--sampler", choices=list(SAMPLERS), default="ddim", help="update rule (default ddim)")
    p.add_argument(
        "--class", dest="label", type=non_negative_int, help="class to sample from a --conditional model"
    )
    p.add_argument(
        "--guidance",
        type=non_negative_float,
        default=1.0,
        help="classifier-free guidance scale with --class (Ho & Salimans 2022; 1: none, default 1)",
    )
    p.add_argument("--seed", type=non_negative_int, default=0, help="seed of the initial noise (default 0)")
    p.add_argument("--out", default="grid.png", help="grid PNG to write (default grid.png)")
    p.add_argument("--npz", help="also save the images as a uint8 array 'images' [N, H, W, C]")
    p.add_argument(
        "--trajectory",
        metavar="PNG",
        help=f"also save x_t and the x0 estimate across the steps of the first {TRAJECTORY_SAMPLES} images",
    )
    p.set_defaults(run=run_sample)

    p = commands.add_parser(
        "invert",
        help="encode images to latents x_T by DDIM inversion",
        description="Run deterministic DDIM backwards from images to latents x_T, save them, and report how "
        "well DDIM (eta = 0) decodes them back.",
    )
    add_checkpoint_options(p)
    p.add_argument("--images", required=True, metavar="PATH", help="a folder of images or one image file")
    p.add_argument("--out", default="latents.npz", help="npz to write, with 'latents' float32 [N, C, H, W]")
    p.add_argument(
        "--reconstruction",
        metavar="PNG",
        help="also save the originals (top row) above their reconstructions",
    )
    p.set_defaults(run=run_invert)

    p = commands.add_parser(
        "interpolate",
        help="decode a spherical interpolation between two seeds' latents",
        description="Slerp between x_T of two seeds and decode each point with DDIM (eta = 0) into one row.",
    )
    add_checkpoint_options(p)
    add_clip_option(p)
    p.add_argument(
        "--seeds", type=non_negative_int, nargs=2, default=(0, 1), metavar=("A", "B"), help="(default 0 1)"
    )
    p.add_argument("--n", type=positive_int, default=9, help="images in the row, ends included (default 9)")
    p.add_argument("--out", default="interp.png", help="PNG to write (default interp.png)")
    p.set_defaults(run=run_interpolate)


def _dry_run(args: argparse.Namespace, folder: Path, run: RunConfig, step: int, **extra: Any) -> bool:
    """With --dry-run, print the command's options and the checkpoint's config as JSON."""
    if args.dry_run:
        options = {k: v for k, v in vars(args).items() if k not in ("run", "dry_run")}
        print_json({**options, **extra, "checkpoint": folder, "step": step, "run": run.to_dict()})
    return args.dry_run


def run_sample(args: argparse.Namespace) -> None:
    if is_diffusers_folder(args.checkpoint):  # a diffusers UNet2DModel (+ scheduler config) folder
        if args.dry_run:
            print_json({k: v for k, v in vars(args).items() if k not in ("run", "dry_run")})
            return
        checkpoint = load_diffusers(args.checkpoint, init_from_env(resolve_device(args.device)))
    else:
        folder, run, step = locate(args)
        if _dry_run(args, folder, run, step):
            return
        checkpoint = load(args, folder)
    if args.label is not None and (checkpoint.num_classes is None or args.label >= checkpoint.num_classes):
        have = (
            "is unconditional" if checkpoint.num_classes is None else f"has {checkpoint.num_classes} classes"
        )
        raise BadValue(f"--class {args.label}: the model {have}; train with --conditional, or drop --class")
    if args.guidance != 1.0 and args.label is None:
        raise BadValue("--guidance needs --class: guidance steers towards a class")
    options = Sampling(args.steps, args.eta, args.sampler, args.spacing, args.clip, args.bf16,
                       args.label, args.guidance)  # fmt: skip
    first, stop = split_range(args.n)  # this process's share under torchrun; all of it otherwise
    images = gather_on_main(generate(checkpoint, stop - first, args.seed, args.batch_size, options, first))
    if not is_main_process():
        return
    print(f"wrote {save_grid(images, args.out)} ({args.n} images, {args.steps} {args.sampler} steps)")
    if args.npz:
        np.savez(args.npz, images=to_uint8(images))
        print(f"wrote {args.npz}")
    if args.trajectory:
        steps = trajectory(checkpoint, min(args.n, TRAJECTORY_SAMPLES), args.seed, options)
        print(
            f"wrote {save_trajectory_strip(steps.xs.float().cpu(), steps.x0s.float().cpu(), args.trajectory)}"
        )


def _load_images(path: str, size: tuple[int, int], channels: int) -> Dataset:
    """A folder of images or a single image file, resized and converted like the training data."""
    file = Path(path)
    if not file.exists():
        raise MissingFile(f"{file} does not exist; pass a folder of images or an image file")
    if file.is_dir():
        return load_dataset(file, size=size, channels=channels)
    try:
        with Image.open(file) as image:
            pixels = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)
    except OSError as e:
        raise BadValue(f"cannot read image {file} ({e})") from e
    return load_dataset(TensorDataset(pixels.unsqueeze(0)), size=size, channels=channels)


def run_invert(args: argparse.Namespace) -> None:
    folder, run, step = locate(args)
    channels, height, width = run.image_shape()
    dataset = _load_images(args.images, (height, width), channels)
    if _dry_run(args, folder, run, step, num_images=len(dataset)):
        return
    checkpoint = load(args, folder)
    x0 = torch.stack([dataset[i][0] for i in range(len(dataset))])
    spacing = args.spacing or DEFAULT_SPACINGS["ddim"]  # the grid the decoder (DDIM) walks
    latents = []
    for batch in x0.split(args.batch_size):
        with inference(checkpoint.model, args.bf16) as device:
            z = invert(
                checkpoint.model,
                batch.to(device),
                checkpoint.schedule,
                args.steps,
                spacing,
                checkpoint.prediction,
                checkpoint.self_condition,
            )
        latents.append(z.float().cpu())
    x_T = torch.cat(latents)  # noqa: N806
    np.savez(args.out, latents=x_T.numpy().astype(np.float32))
    options = Sampling(args.steps, spacing=spacing, clip=None, bf16=args.bf16)  # the inverse of invert
    recon = torch.cat([decode(checkpoint, z, options).float().cpu() for z in x_T.split(args.batch_size)])
    print(
        f"wrote {args.out} (latents {tuple(x_T.shape)}); reconstruction MSE {(recon - x0).pow(2).mean():.3g}"
    )
    if args.reconstruction:
        print(f"wrote {save_grid(torch.cat([x0, recon]), args.reconstruction, nrow=len(x0))}")


def interpolation_latents(seed_a: int, seed_b: int, n: int, shape: tuple[int, ...]) -> Tensor:
    """n latents [n, *shape] along the slerp from x_T(seed_a) to x_T(seed_b), ends included."""
    z0, z1 = (PerSampleNoise.from_seed(seed, 1).randn(shape) for seed in (seed_a, seed_b))
    return torch.cat([slerp(z0, z1, float(w)) for w in torch.linspace(0, 1, n)])


def run_interpolate(args: argparse.Namespace) -> None:
    if args.n < 2:
        raise BadValue(f"--n must be at least 2 (the two ends), got {args.n}")
    folder, run, step = locate(args)
    if _dry_run(args, folder, run, step):
        return
    checkpoint = load(args, folder)
    latents = interpolation_latents(*args.seeds, args.n, run.image_shape())
    options = Sampling(
        args.steps, spacing=args.spacing or DEFAULT_SPACINGS["ddim"], clip=args.clip, bf16=args.bf16
    )
    images = torch.cat([decode(checkpoint, z, options).float().cpu() for z in latents.split(args.batch_size)])
    print(f"wrote {save_grid(images, args.out, nrow=args.n)} (seeds {args.seeds[0]} -> {args.seeds[1]})")
