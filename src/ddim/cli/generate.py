"""`ddim sample`, `ddim invert` and `ddim interpolate`: from a trained model to images, from images
to latents and back, and between two images, latents or seeds. Each maps its flags onto the
pipeline (`ddim.load`), so Python gives the same images for the same options and seed."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ddim.cli._common import (
    TRAJECTORY_SAMPLES,
    add_checkpoint_options,
    add_clip_option,
    dry_run,
    non_negative_float,
    non_negative_int,
    open_pipeline,
    positive_int,
    say,
    seed,
)
from ddim.cli.outputs import NpzWriter, check_file, check_folder, write_pngs
from ddim.data import to_uint8
from ddim.distributed import batches_by_round, gather_on_main, is_distributed, is_main_process
from ddim.errors import BadValue, MissingFile
from ddim.images import save_grid, save_trajectory_strip
from ddim.inputs import read_images
from ddim.latents import Latents
from ddim.pipeline import Pipeline, describe
from ddim.real_images import CHECKPOINT_CLIP, INVERT_SAMPLER
from ddim.samplers import EXACT_INVERTIBLE, SAMPLERS

GRID_MAX = 256  # the grid shows at most this many images (the npz and --out-dir hold all)


def add_parsers(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "sample",
        help="draw images from a trained model, or decode saved latents",
        description="Draw --n images from a checkpoint, or decode the --latents that `ddim invert` wrote, "
        "and save them as a grid (and an npz array, one PNG each, a trajectory strip). Image i depends only "
        "on --seed and i. Example: ddim sample --checkpoint runs/mnist --n 64 --steps 50 --out grid.png",
    )
    add_checkpoint_options(
        p, "sampling steps (default 50; with --latents, the steps they were inverted with)"
    )
    add_clip_option(p, "the checkpoint's data range; with --latents none, so that they decode exactly")
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
        "--eta",
        type=non_negative_float,
        default=0.0,
        help="DDIM eta: 0 deterministic, 1 DDPM-like (default 0)",
    )
    p.add_argument(
        "--sampler", choices=list(SAMPLERS), help="update rule (default ddim; with --latents, theirs)"
    )
    p.add_argument(
        "--latents", metavar="NPZ", help="decode these latents (from `ddim invert`) instead of noise"
    )
    p.add_argument(
        "--class", dest="label", type=non_negative_int, help="class to sample from a --conditional model"
    )
    p.add_argument(
        "--guidance",
        type=non_negative_float,
        default=1.0,
        help="classifier-free guidance scale with --class (Ho & Salimans 2022; 1: none, default 1)",
    )
    p.add_argument("--seed", type=seed, default=0, help="seed of the noise (default 0)")
    p.add_argument(
        "--out", default="grid.png", help=f"grid PNG of the first {GRID_MAX} images (default grid.png)"
    )
    p.add_argument("--npz", help="also save the images as a uint8 array 'images' [N, H, W, C] (streamed)")
    p.add_argument(
        "--out-dir", metavar="DIR", help="also save one PNG per image, named seed{SEED}-{INDEX}.png"
    )
    p.add_argument(
        "--trajectory",
        metavar="PNG",
        help=f"also save x_t and the x0 estimate across the steps of the first {TRAJECTORY_SAMPLES} images",
    )
    p.set_defaults(run=run_sample)

    p = commands.add_parser(
        "invert",
        help="encode images to latents (exactly, with an exact sampler)",
        description="Run a deterministic sampler backwards from images to latents and save them in an npz "
        "that `ddim sample --latents` decodes with no repeated flags; report how well they decode back. "
        "Example: ddim invert --checkpoint runs/mnist --images digits/ --out latents.npz",
    )
    add_checkpoint_options(p)
    p.add_argument("--images", required=True, metavar="PATH", help="a folder of images or one image file")
    p.add_argument(
        "--sampler",
        choices=["ddim", *EXACT_INVERTIBLE],
        default=INVERT_SAMPLER,
        help=f"the sampler to invert (default {INVERT_SAMPLER}; {', '.join(EXACT_INVERTIBLE) or 'none'}: "
        "exact round trips; ddim: DDIM inversion, approximate)",
    )
    p.add_argument(
        "--refine",
        type=non_negative_int,
        default=0,
        help="fixed-point refinements of --sampler ddim inversion (default 0)",
    )
    p.add_argument("--out", default="latents.npz", help="npz to write (default latents.npz)")
    p.add_argument(
        "--reconstruction",
        metavar="PNG",
        help="also save the originals (top row) above their reconstructions",
    )
    p.set_defaults(run=run_invert)

    p = commands.add_parser(
        "interpolate",
        help="decode the interpolation between two images, two inverted latents or two seeds",
        description="Invert two images (--images), take two of saved latents (--latents --pair), or take the "
        "x_T of two seeds (--seeds); interpolate (slerp, or the exact sampler's analogue) and decode each "
        "point into one row; the ends reproduce the inputs. Example: ddim interpolate --checkpoint "
        "runs/mnist --images a.png b.png --n 9 --out strip.png",
    )
    add_checkpoint_options(p)
    add_clip_option(p, "the checkpoint's data range for --seeds, none for images and latents")
    ends = p.add_mutually_exclusive_group()
    ends.add_argument("--seeds", type=seed, nargs=2, metavar=("A", "B"), help="two seeds (default 0 1)")
    ends.add_argument("--images", nargs=2, metavar=("A", "B"), help="two image files")
    ends.add_argument("--latents", metavar="NPZ", help="latents from `ddim invert`, with --pair")
    p.add_argument(
        "--pair", type=non_negative_int, nargs=2, metavar=("I", "J"), help="two indices of --latents"
    )
    p.add_argument(
        "--sampler",
        choices=["ddim", *EXACT_INVERTIBLE],
        help=f"the sampler for --images (default {INVERT_SAMPLER})",
    )
    p.add_argument("--n", type=positive_int, default=9, help="images in the row, ends included (default 9)")
    p.add_argument("--out", default="interp.png", help="PNG to write (default interp.png)")
    p.add_argument("--npz", help="also save the row as a uint8 array 'images' [N, H, W, C]")
    p.set_defaults(run=run_interpolate)


def _save(images: torch.Tensor, args: argparse.Namespace) -> None:
    """Data first (--npz), then the pictures (--out-dir, --out)."""
    if args.npz:
        np.savez(args.npz, images=to_uint8(images))
        say(args, f"wrote {args.npz}")
    if args.out_dir:
        write_pngs(to_uint8(images), args.out_dir, args.seed, 0)
        say(args, f"wrote {len(images)} PNGs to {args.out_dir}")
    say(args, f"wrote {save_grid(images[:GRID_MAX], args.out)} ({len(images)} images)")


def _batches(pipe: Pipeline, args: argparse.Namespace, options: dict) -> Iterator[torch.Tensor]:
    """The --n images, a batch at a time in image order. Under torchrun the ranks take turns
    batch by batch (`batches_by_round`) and rank 0 gets each round's batches gathered, so it
    holds one round at a time; the other ranks get nothing."""
    if not is_distributed():
        yield from pipe.sample_batches(args.n, output="tensor", **options)
        return
    empty = torch.zeros(0, *pipe.image_shape)
    one_batch = dict(options, progress=False)
    with tqdm(
        total=args.n, desc="sampling", unit="image", disable=not options["progress"], leave=False
    ) as bar:
        for first, stop in batches_by_round(args.n, args.batch_size):
            part = (
                pipe.sample(stop - first, start=first, output="tensor", **one_batch)
                if stop > first
                else empty
            )
            images = gather_on_main(part)
            if images is not None:
                bar.update(len(images))
                yield images


def _stream(pipe: Pipeline, args: argparse.Namespace, options: dict) -> torch.Tensor | None:
    """The --n images in batches: each batch to the npz, then to --out-dir; returns the first
    GRID_MAX for the grid (None on a rank other than 0, which writes nothing)."""
    main = is_main_process()
    shape = (args.n, *pipe.image_shape[1:], pipe.image_shape[0])
    grid, start = [], 0
    writer = NpzWriter(args.npz, shape) if args.npz and main else None
    try:
        for batch in _batches(pipe, args, options):
            pixels = to_uint8(batch)
            if writer:
                writer.write(pixels)
            if args.out_dir:
                write_pngs(pixels, args.out_dir, args.seed, start)
            if start < GRID_MAX:
                grid.append(batch[: GRID_MAX - start])
            start += len(batch)
        if writer:
            writer.close()
    except BaseException:
        if writer:
            writer.abort()
        raise
    return torch.cat(grid) if main else None


def run_sample(args: argparse.Namespace) -> None:
    check_file(args.out, "--out", ".png")
    check_file(args.npz, "--npz", ".npz")
    check_file(args.trajectory, "--trajectory", ".png")
    args.out_dir = check_folder(args.out_dir, "--out-dir")
    if args.latents and (args.label is not None or args.eta or args.trajectory):
        raise BadValue("--latents decodes saved latents as they are; drop --class, --eta and --trajectory")
    if args.latents and not Path(args.latents).is_file():
        raise MissingFile(f"--latents {args.latents} does not exist; write latents with `ddim invert`")
    if dry_run(args):
        return
    pipe = open_pipeline(args)
    if args.latents:
        latents = Latents.load(args.latents)
        clip = None if args.clip is CHECKPOINT_CLIP else args.clip
        images = pipe.decode(
            latents,
            steps=args.steps,
            sampler=args.sampler,
            spacing=args.spacing,
            clip=clip,
            seed=args.seed,
            batch_size=args.batch_size,
            output="tensor",
            progress=not args.quiet,
        )
        _save(images, args)
        return
    options = dict(
        steps=args.steps,
        seed=args.seed,
        eta=args.eta,
        sampler=args.sampler or "ddim",
        spacing=args.spacing,
        clip=args.clip,
        label=args.label,
        guidance=args.guidance,
    )
    progress = not args.quiet and is_main_process()
    grid = _stream(pipe, args, dict(options, batch_size=args.batch_size, progress=progress))
    if not is_main_process():
        return
    if args.npz:
        say(args, f"wrote {args.npz} ({args.n} images)")
    if args.out_dir:
        say(args, f"wrote {args.n} PNGs to {args.out_dir}")
    steps = pipe.trajectory(min(args.n, TRAJECTORY_SAMPLES), **options) if args.trajectory else None
    shown = "" if args.n <= GRID_MAX else f", the first {GRID_MAX} shown"
    say(args, f"wrote {save_grid(grid, args.out)} ({args.n} images{shown}, {options['sampler']})")
    if steps is not None:
        say(args, f"wrote {save_trajectory_strip(steps.xs, steps.x0s, args.trajectory)}")


def run_invert(args: argparse.Namespace) -> None:
    check_file(args.out, "--out", ".npz")
    check_file(args.reconstruction, "--reconstruction", ".png")
    if args.refine and args.sampler != "ddim":
        raise BadValue(f"--refine applies to --sampler ddim; {args.sampler} inverts exactly without it")
    if args.dry_run:
        x, _, _ = read_images(args.images, describe(args.checkpoint)["image_shape"])
        return dry_run(args, num_images=len(x))
    pipe = open_pipeline(args)
    latents = pipe.invert(
        args.images,
        steps=args.steps,
        sampler=args.sampler,
        spacing=args.spacing,
        refine=args.refine,
        batch_size=args.batch_size,
        progress=not args.quiet,
    )
    latents.save(args.out)
    x = read_images(args.images, pipe.image_shape)[0]
    recon = pipe.decode(latents, batch_size=args.batch_size, output="tensor", progress=False)
    error = (recon - x).pow(2).mean()
    say(
        args,
        f"wrote {args.out} ({len(x)} latents {tuple(latents.z.shape[1:])}, {latents.sampler}, "
        f"{latents.steps} steps); reconstruction MSE {error:.3g}",
    )
    if args.reconstruction:
        say(args, f"wrote {save_grid(torch.cat([x, recon]), args.reconstruction, nrow=len(x))}")


def run_interpolate(args: argparse.Namespace) -> None:
    check_file(args.out, "--out", ".png")
    check_file(args.npz, "--npz", ".npz")
    if args.n < 2:
        raise BadValue(f"--n must be at least 2 (the two ends), got {args.n}")
    if (args.latents is None) != (args.pair is None):
        raise BadValue("--latents and --pair go together: --latents latents.npz --pair I J")
    if dry_run(args):
        return
    pipe = open_pipeline(args)
    common = dict(n=args.n, steps=args.steps, spacing=args.spacing, clip=args.clip, output="tensor")
    if args.latents:
        latents = Latents.load(args.latents)
        for i in args.pair:
            if i >= len(latents):
                raise BadValue(
                    f"--pair {i}: {args.latents} holds {len(latents)} latents (0 to {len(latents) - 1})"
                )
        a, b, what = latents[args.pair[0]], latents[args.pair[1]], f"latents {args.pair[0]} -> {args.pair[1]}"
        common.pop("steps"), common.pop("spacing")
    elif args.images:
        (a, b), what = args.images, f"{args.images[0]} -> {args.images[1]}"
        common["sampler"] = args.sampler
    else:
        a, b = args.seeds or (0, 1)
        what = f"seeds {a} -> {b}"
    images = pipe.interpolate(a, b, **common)
    if args.npz:
        np.savez(args.npz, images=to_uint8(images))
        say(args, f"wrote {args.npz}")
    say(args, f"wrote {save_grid(images, args.out, nrow=args.n)} ({what})")
