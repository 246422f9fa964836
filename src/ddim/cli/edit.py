"""`ddim edit` (SDEdit: noise real images part way and sample back) and `ddim inpaint` (fill the
masked pixels, keep the others exactly), through the pipeline (`ddim.load`), so Python's
`pipe.edit` / `pipe.inpaint` give the same images for the same options and seed."""

from __future__ import annotations

import argparse

import numpy as np
import torch

from ddim.cli._common import (
    add_checkpoint_options,
    add_clip_option,
    dry_run,
    non_negative_float,
    open_pipeline,
    say,
    seed,
)
from ddim.cli.outputs import check_file
from ddim.data import to_uint8
from ddim.images import save_grid
from ddim.inputs import read_images
from ddim.samplers import SAMPLERS


def _strength(text: str) -> float:
    value = non_negative_float(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1], got {text}")
    return value


def _outputs(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--images", required=True, metavar="PATH", help="a folder of images or one image file")
    p.add_argument(
        "--seed", type=seed, default=0, help="seed of the noise; image i's depends on it and i (default 0)"
    )
    p.add_argument(
        "--out", default=f"{what}.png", help=f"grid PNG: inputs (top row) above results (default {what}.png)"
    )
    p.add_argument("--npz", help="also save the results as a uint8 array 'images' [N, H, W, C]")
    add_checkpoint_options(p)
    add_clip_option(p)


def add_parsers(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "edit",
        help="SDEdit: re-imagine images, keeping their layout",
        description="Noise each image to the time that --strength sets and sample back (SDEdit, Meng et al. "
        "2022): 0 returns the input, 1 a fresh sample. Example: ddim edit --checkpoint runs/mnist --images "
        "digits/ --strength 0.6 --out edited.png --npz edited.npz",
    )
    p.add_argument("--strength", type=_strength, required=True, help="how far to noise, in [0, 1]")
    p.add_argument("--sampler", choices=list(SAMPLERS), default="ddim", help="update rule (default ddim)")
    p.add_argument("--eta", type=non_negative_float, default=0.0, help="DDIM eta (default 0)")
    _outputs(p, "edited")
    p.set_defaults(run=run_edit)

    p = commands.add_parser(
        "inpaint",
        help="fill the masked pixels of images, keeping the others exactly",
        description="Generate the pixels where the mask is white and keep the black ones bit-exactly. --mask "
        "is a PNG of the images' size or a folder with one mask per image (same file names). Example: ddim "
        "inpaint --checkpoint runs/mnist --images digits/ --mask right-half.png --out inpainted.png",
    )
    p.add_argument("--mask", required=True, metavar="PNG|DIR", help="white (255) = generate, black = keep")
    _outputs(p, "inpainted")
    p.set_defaults(run=run_inpaint)


def _run(args: argparse.Namespace, method: str, **options) -> None:
    """Check the outputs, load, run `pipe.<method>`, write the npz (data first), then the grid
    of inputs above results."""
    check_file(args.out, "--out", ".png")
    check_file(args.npz, "--npz", ".npz")
    if dry_run(args):
        return
    pipe = open_pipeline(args)
    common = dict(steps=args.steps, seed=args.seed, clip=args.clip, batch_size=args.batch_size)
    results = getattr(pipe, method)(
        args.images, **options, **common, output="tensor", progress=not args.quiet
    )
    if args.npz:
        np.savez(args.npz, images=to_uint8(results))
        say(args, f"wrote {args.npz}")
    x = read_images(args.images, pipe.image_shape)[0]
    say(args, f"wrote {save_grid(torch.cat([x, results]), args.out, nrow=len(x))} ({len(x)} images)")


def run_edit(args: argparse.Namespace) -> None:
    options = dict(sampler=args.sampler, eta=args.eta, spacing=args.spacing)
    _run(args, "edit", strength=args.strength, **options)


def run_inpaint(args: argparse.Namespace) -> None:
    _run(args, "inpaint", mask=args.mask, spacing=args.spacing)
