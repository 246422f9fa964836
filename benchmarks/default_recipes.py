"""Do the default training flags learn? Three recipes trained side by side on the built-in digits
and on MNIST (16x16), scored by FD on the shipped digit classifier's features (ddim.evaluation)
after 300, 1,500 and 6,000 steps (issue 10):

- old:  the defaults before issue 10: eps prediction, uniform weighting, lr 2e-4, EMA 0.999 with
        TensorFlow's warm-up;
- demo: `ddim demo`'s recipe: a smaller UNet (channel_mult 1,2,2), v prediction, min-SNR
        weighting, lr 1e-3, EMA 0.995 with TensorFlow's warm-up;
- new:  the defaults now (`TrainConfig()`, `DiffusionConfig()`, `UNetConfig()` as they are).

None of the recipes depends on the run's length (constant learning rate after warm-up; each EMA
profile is a function of the step alone), so the 300- and 1,500-step models are exactly the
6,000-step run's checkpoints at those steps: one run per recipe and dataset gives every column.
Samples: 1,000 a cell, DDIM 50 steps (eta 0, seed 0, the CLI's defaults). The floor is the FD of
as many real images (digits: a random subset; MNIST: the test split) against the reference.

Run (each line is independent, so two can share a 2-core machine):
  python benchmarks/default_recipes.py train --data digits --recipe new
  python benchmarks/default_recipes.py train --data mnist --recipe old    # ... all 6 pairs
  python benchmarks/default_recipes.py report     # the table, a plot and grids, in docs/defaults/
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch

import ddim
from ddim.config import DiffusionConfig, RunConfig, TrainConfig
from ddim.data import DataConfig, load_dataset
from ddim.evaluation.features import DigitFeatures, embed
from ddim.evaluation.metrics import feature_statistics, frechet_distance
from ddim.images import save_grid
from ddim.models import UNetConfig
from ddim.training import train

STEPS = (300, 1500, 6000)
DATA = {"digits": "digits", "mnist": "../shared/data/mnist"}
OLD_TRAIN = dict(lr=2e-4, warmup_steps=100, ema_decay=0.999, ema_warmup="tf", weighting="uniform")
RECIPES = {
    "old": (UNetConfig(in_channels=1), DiffusionConfig(prediction="eps"), OLD_TRAIN),
    "demo": (
        UNetConfig(in_channels=1, channel_mult=(1, 2, 2)),
        DiffusionConfig(prediction="v"),
        dict(lr=1e-3, warmup_steps=50, ema_decay=0.995, ema_warmup="tf", weighting="min_snr"),
    ),
    "new": (UNetConfig(in_channels=1), DiffusionConfig(), {}),
}


def run_config(data: str, recipe: str, steps: int) -> RunConfig:
    model, diffusion, train_options = RECIPES[recipe]
    train_config = dataclasses.replace(
        TrainConfig(),
        **train_options,
        steps=steps,
        sample_every=0,
        checkpoint_every=STEPS[0],
        keep_last=0,
        log_every=100,
        device="cpu",
    )
    return RunConfig(model, diffusion, DataConfig(DATA[data], size=16, channels=1), train_config)


class Scorer:
    def __init__(self, data: str, n: int) -> None:
        self.features = DigitFeatures()
        ref = load_dataset(DATA[data], size=16, split="train").images
        self.ref_stats = feature_statistics(embed(self.features, ref))
        if data == "mnist":
            real = load_dataset(DATA[data], size=16, split="test").images[:n]
        else:
            real = ref[torch.randperm(len(ref), generator=torch.Generator().manual_seed(1))[:n]]
        self.floor = self.fd(real)

    def fd(self, images: torch.Tensor) -> float:
        return frechet_distance(*feature_statistics(embed(self.features, images)), *self.ref_stats)


def train_and_score(args) -> None:
    torch.set_num_threads(args.threads)
    out = Path(args.out) / f"{args.data}-{args.recipe}"
    run = run_config(args.data, args.recipe, args.max_steps)
    train(run, out, resume=(out / "checkpoints").is_dir(), progress=not args.quiet)
    score(args)


def score(args) -> None:
    """FD of each STEPS checkpoint that exists (so a run still training can be looked at)."""
    torch.set_num_threads(args.threads)
    out = Path(args.out) / f"{args.data}-{args.recipe}"
    scorer = Scorer(args.data, args.n)
    result = {"data": args.data, "recipe": args.recipe, "floor": scorer.floor, "fd": {}}
    for step in STEPS:
        checkpoint = out / "checkpoints" / f"step-{step:06d}"
        if not checkpoint.is_dir():
            continue
        images = ddim.load(checkpoint, device="cpu").sample(args.n, steps=50, seed=0, output="tensor")
        result["fd"][step] = scorer.fd(images)
        save_grid(images[:64], out / f"samples-{step}.png")
        print(
            f"{args.data} {args.recipe} step {step}: FD {result['fd'][step]:.2f} (floor {scorer.floor:.2f})"
        )
    (out / "result.json").write_text(json.dumps(result, indent=2))


def report(args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    docs = Path(args.docs)
    docs.mkdir(parents=True, exist_ok=True)
    results = {}
    for file in sorted(Path(args.out).glob("*/result.json")):
        r = json.loads(file.read_text())
        results[(r["data"], r["recipe"])] = r
    fig, axes = plt.subplots(1, len(DATA), figsize=(5 * len(DATA), 3.6))
    print("| data | recipe | " + " | ".join(f"{s:,} steps" for s in STEPS) + " | floor |")
    print("|---|---|" + "---:|" * (len(STEPS) + 1))
    for ax, data in zip(axes, DATA):
        for recipe in RECIPES:
            r = results.get((data, recipe))
            if r is None:
                continue
            fds = [r["fd"].get(str(s)) for s in STEPS]  # None: not trained that far
            cells = " | ".join("" if v is None else f"{v:.2f}" for v in fds)
            print(f"| {data} | {recipe} | {cells} | {r['floor']:.2f} |")
            done = [(s, v) for s, v in zip(STEPS, fds) if v is not None]
            ax.plot(*zip(*done), marker="o", label=recipe)
            ax.axhline(r["floor"], color="grey", lw=0.8, ls="--")
        ax.set(xscale="log", yscale="log", title=data, xlabel="training steps", ylabel="FD (digit features)")
        ax.set_xticks(STEPS, [f"{s:,}" for s in STEPS], minor=False)
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.legend()
    fig.tight_layout()
    fig.savefig(docs / "fd-by-steps.png", dpi=110)
    for data in DATA:  # one strip per dataset: each recipe's samples after the fewest steps
        grids = [Image.open(Path(args.out) / f"{data}-{r}" / f"samples-{STEPS[0]}.png") for r in RECIPES]
        strip = Image.new(
            "RGB", (sum(g.width for g in grids) + 8 * (len(grids) - 1), grids[0].height), "white"
        )
        x = 0
        for g in grids:
            strip.paste(g, (x, 0))
            x += g.width + 8
        strip.save(docs / f"{data}-{STEPS[0]}-steps.png")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train one recipe on one dataset, then score it")
    c = sub.add_parser("score", help="score the checkpoints a run has so far")
    for q in (t, c):
        q.add_argument("--data", choices=list(DATA), required=True)
        q.add_argument("--recipe", choices=list(RECIPES), required=True)
        q.add_argument("--n", type=int, default=1000, help="samples per FD")
        q.add_argument("--threads", type=int, default=1)
    t.add_argument("--quiet", action="store_true")
    t.add_argument(
        "--max-steps", type=int, default=max(STEPS), help="stop here (a later call continues the run)"
    )
    t.set_defaults(run=train_and_score)
    c.set_defaults(run=score)
    r = sub.add_parser("report")
    r.add_argument("--docs", default="docs/defaults")
    r.set_defaults(run=report)
    for q in (t, c, r):
        q.add_argument("--out", default="runs/recipes", help="where the runs live")
    args = p.parse_args()
    args.run(args)


if __name__ == "__main__":
    main()
