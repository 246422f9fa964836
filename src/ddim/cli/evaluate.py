"""`ddim eval` (sample quality of a set of images against a dataset, with the real-vs-real floor)
and `ddim bench-samplers` (each sampler at each budget of model calls, for one checkpoint)."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from ddim.cli._common import add_run_options, int_tuple, positive_int, print_dry_run, say
from ddim.device import resolve_device
from ddim.errors import BadValue, MissingFile, from_os_error
from ddim.evaluation import InceptionFeatures, evaluate
from ddim.evaluation.metrics import DEFAULT_CACHE
from ddim.evaluation.sampler_bench import bench_samplers, write_report
from ddim.pipeline import load
from ddim.samplers import SAMPLERS
from ddim.timesteps import SPACINGS
from ddim.training.run_folder import check_writable

METRICS = ("fid", "kid", "precision", "recall")


def _samplers(text: str) -> list[str]:
    """ "ddim,dpmpp_2m@trailing": sampler names, each optionally with a grid after "@"."""
    entries = text.split(",")
    for entry in entries:
        name, _, spacing = entry.partition("@")
        if name not in SAMPLERS:
            raise argparse.ArgumentTypeError(f"unknown sampler {name!r}; choose from {', '.join(SAMPLERS)}")
        if spacing and spacing not in (*SPACINGS, "tuned"):
            raise argparse.ArgumentTypeError(
                f"unknown spacing {spacing!r}; choose from {', '.join(SPACINGS)}"
            )
    return entries


def _add_metric_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--reference",
        required=True,
        metavar="digits|PATH|NAME",
        help="the real data: 'digits', a folder of images or IDX files, or a torchvision name",
    )
    p.add_argument(
        "--features",
        choices=("digits", "inception"),
        default="digits",
        help="digits: the shipped classifier (offline; digits, MNIST, Fashion-MNIST); inception: "
        "Inception-v3 in the pytorch-fid convention (default digits)",
    )
    p.add_argument(
        "--inception-weights",
        metavar="PATH",
        help="pt_inception-2015-12-05-6726825d.pth for --features inception",
    )
    p.add_argument(
        "--n-reference",
        type=positive_int,
        default=10000,
        help="reference images, split into two halves for the floor (default 10000)",
    )
    p.add_argument("--split", default="train", help="the reference split (default train)")
    p.add_argument("--root", metavar="DIR", help="where a torchvision reference lives (default ./data)")
    p.add_argument(
        "--cache-dir",
        default=str(DEFAULT_CACHE),
        help=f"where reference statistics are cached; '' caches nothing (default {DEFAULT_CACHE})",
    )


def add_parsers(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "eval",
        help="FID, KID, precision and recall of samples against real data",
        description="Score a set of images (an .npz written by `ddim sample --npz`, or a folder of "
        "images of one size) against real data; every figure is printed beside its real-vs-real "
        "floor. Example: ddim eval --samples samples.npz --reference digits --json scores.json",
    )
    p.add_argument(
        "--samples",
        required=True,
        metavar="NPZ_OR_DIR",
        help="images: an .npz as written by ddim sample --npz, or a folder of images of one size",
    )
    p.add_argument("--json", metavar="FILE", help="also write the scores to this JSON file")
    _add_metric_options(p)
    add_run_options(p)
    p.set_defaults(run=run_eval)

    p = commands.add_parser(
        "bench-samplers",
        help="sample quality and time of each sampler per model calls",
        description="For one checkpoint, run each sampler at each budget of model calls "
        "from the same x_T, and write a markdown table, a CSV and a plot of the metric "
        "against model calls. Cells the sampler refuses (heun on too coarse a grid) are left out with the "
        "reason. Example: ddim bench-samplers --checkpoint runs/mine --reference digits --calls 5,10,20 "
        "--out bench",
    )
    p.add_argument("--checkpoint", required=True, metavar="RUN_DIR", help="the run or checkpoint to sample")
    p.add_argument(
        "--samplers",
        type=_samplers,
        default=["ddim", "dpmpp_2m", "unipc", "heun"],
        help="comma-separated sampler names, each optionally NAME@SPACING for another grid "
        "(default ddim,dpmpp_2m,unipc,heun)",
    )
    p.add_argument(
        "--calls",
        type=int_tuple,
        default=[5, 10, 20, 50, 100],
        help="budgets of model calls (default 5,10,20,50,100)",
    )
    p.add_argument("--n", type=positive_int, default=2000, help="samples per cell (default 2000)")
    p.add_argument("--seed", type=int, default=0, help="seed of the shared x_T (default 0)")
    p.add_argument("--batch-size", type=positive_int, default=250, help="images per batch (default 250)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for samplers.md, .csv and .png")
    _add_metric_options(p)
    add_run_options(p)
    p.set_defaults(run=run_bench)


def _metric_kwargs(args: argparse.Namespace) -> dict:
    features = InceptionFeatures(args.inception_weights) if args.features == "inception" else args.features
    return {
        "features": features,
        "n_reference": args.n_reference,
        "split": args.split,
        "root": args.root,
        "cache_dir": args.cache_dir or None,
    }


def run_eval(args: argparse.Namespace) -> None:
    if args.dry_run:
        print_dry_run(args, None)
        return
    if not Path(args.samples).exists():
        raise MissingFile(f"{args.samples} does not exist; write samples with `ddim sample --npz`")
    if args.json:  # checked before the work: a folder where the file goes, a read-only folder
        if Path(args.json).is_dir():
            raise BadValue(f"--json {args.json} is a folder; pass a file name such as scores.json")
        check_writable(Path(args.json).absolute().parent)
    scores = evaluate(args.samples, args.reference, **_metric_kwargs(args))
    if args.json:
        _write_json(Path(args.json), scores)
    print(
        f"{scores['n_samples']} samples against {scores['n_reference']} reference images "
        f"(floor: {scores['n_floor']} other reference images)"
    )
    print("| metric | samples | real vs real |\n|---|---|---|")
    for name in METRICS:
        print(f"| {name} | {scores[name]:.4f} | {scores[name + '_floor']:.4f} |")
    if args.json:
        say(args, f"wrote {args.json}")


def _write_json(path: Path, scores: dict) -> None:
    """Write the scores atomically (a temporary file, then a rename)."""
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(json.dumps(scores, indent=2) + "\n")
        os.replace(tmp, path)
    except OSError as e:
        error = from_os_error(e, path)
        if error is None:
            raise
        raise error from None


def run_bench(args: argparse.Namespace) -> None:
    if args.dry_run:
        print_dry_run(args, None)
        return
    pipe = load(args.checkpoint, device=resolve_device(args.device))  # a ddim run or a diffusers folder
    kwargs = _metric_kwargs(args)
    rows = bench_samplers(
        pipe.model,
        pipe.schedule,
        pipe.image_shape,
        args.reference,
        samplers=args.samplers,
        calls=args.calls,
        n=args.n,
        prediction=pipe.prediction,
        self_condition=pipe.self_condition,
        tuned_from=pipe.path,
        seed=args.seed,
        batch_size=args.batch_size,
        device=pipe.device,
        progress=not args.quiet,
        **kwargs,
    )
    files = write_report(rows, args.out)
    say(args, files[0].read_text())
    say(args, "written: " + ", ".join(str(f) for f in files))
