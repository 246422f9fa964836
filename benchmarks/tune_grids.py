"""FD against model calls for grids tuned to a model (`ddim.tuning.tune_timesteps`) and the fixed
grids (trailing, logsnr, karras), with the tuning time; the grids plotted. docs/tuning.md.

    OMP_NUM_THREADS=1 .venv-test/bin/python benchmarks/tune_grids.py \
        --checkpoint runs/mnist16/checkpoints/step-006000 --reference ../shared/data/mnist \
        --calls 3,4,5,6,8,10 --n 500 --out docs/tuning/mnist16

Tuning uses the x_T of --tune-seed (--n-tune examples); every FD cell uses the same other x_T
(--seed, --n examples), with no clipping, as `ddim bench-samplers` does. The baseline row is
DDIM on its default grid at 20 calls. Prints a markdown table; writes results.json, fd.png and
grids.png under --out.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from ddim.cli.tune import DISTANCES, digits_fd_distance
from ddim.evaluation import evaluate
from ddim.generation import generate
from ddim.noise import PerSampleNoise
from ddim.samplers import steps_for_calls
from ddim.timesteps import make_timesteps
from ddim.training import load_checkpoint
from ddim.tuning import reference_solve, tune_timesteps

FIXED = ("trailing", "logsnr", "karras")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--reference", required=True, help="digits or an MNIST folder")
    p.add_argument("--sampler", default="unipc")
    p.add_argument("--calls", default="3,4,5,6,8,10")
    p.add_argument("--n", type=int, default=500, help="samples per FD cell")
    p.add_argument("--n-tune", type=int, default=128)
    p.add_argument("--max-evals", type=int, default=60)
    p.add_argument("--reference-steps", type=int, default=100)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--tune-seed", type=int, default=0)
    p.add_argument("--baseline-calls", type=int, default=20)
    p.add_argument("--distance", choices=DISTANCES, default="l2", help="as ddim tune --distance")
    p.add_argument("--fixed", default=",".join(FIXED), help="fixed grids to score ('' for none)")
    p.add_argument("--out", required=True)
    args = p.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = load_checkpoint(args.checkpoint)
    model, schedule, shape = ckpt.model, ckpt.schedule, ckpt.image_shape
    calls = [int(c) for c in args.calls.split(",")]
    kw = dict(prediction=ckpt.prediction)
    fixed = [g for g in args.fixed.split(",") if g]
    distance = digits_fd_distance() if args.distance == "digits-fd" else None

    started = time.perf_counter()
    x_T = PerSampleNoise.from_seed(args.tune_seed, args.n_tune).randn(shape)
    ref = reference_solve(model, schedule, x_T, args.reference_steps, **kw)
    ref_seconds = time.perf_counter() - started

    def fd(sampler: str, spacing, steps: int) -> float:
        images = generate(model, schedule, shape, args.n, seed=args.seed, steps=steps, sampler=sampler,
                          spacing=spacing, **kw)  # fmt: skip
        return evaluate(images, args.reference, "digits")

    results = {"checkpoint": str(ckpt.path), "sampler": args.sampler, "n": args.n, "n_tune": args.n_tune,
               "reference_seconds": ref_seconds, "args": vars(args), "rows": []}  # fmt: skip
    rows: dict[int, dict] = {}

    def save() -> None:  # after every cell, so that a cut-short run leaves its figures
        results["rows"] = [rows[c] for c in calls if c in rows]
        (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")

    base = None
    for c in sorted(calls, key=lambda c: c != 5):  # 5 calls first: the bar, against DDIM at 20
        info: dict = {}
        grid = tune_timesteps(model, schedule, shape, c, args.sampler, args.n_tune, args.tune_seed,
                              reference=ref, max_evals=args.max_evals, info=info, distance=distance,
                              **kw)  # fmt: skip
        print(f"calls {c}: {grid} in {info['seconds']:.0f} s, start errors {info['start_errors']}, "
              f"tuned {info['error']:.3g}", flush=True)  # fmt: skip
        steps = steps_for_calls(args.sampler, c, exact=True)
        rows[c] = {"calls": c, "grid": grid, "tune_seconds": info["seconds"], "tune_error": info["error"],
                   "start_errors": info["start_errors"]}  # fmt: skip
        rows[c]["tuned"] = fd(args.sampler, grid, steps)["fid"]
        save()
        if base is None and args.baseline_calls:
            base = fd("ddim", "trailing", args.baseline_calls)
            results.update(fid_floor=base["fid_floor"], baseline=base["fid"])
        for name in fixed:
            rows[c][name] = fd(args.sampler, name, steps)["fid"]
            save()
        print(rows[c], flush=True)
    rows = [rows[c] for c in calls]
    if base is None or fixed != list(FIXED):
        return
    print(f"\n{args.sampler} on {ckpt.path} ({args.n} samples a cell, floor {base['fid_floor']:.2f}; "
          f"DDIM trailing at {args.baseline_calls} calls: {base['fid']:.2f}; reference solve "
          f"{ref_seconds:.0f} s)\n")  # fmt: skip
    print("| model calls | tuned | trailing | logsnr | karras | tuning time (s) | tuned grid |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['calls']} | {r['tuned']:.2f} | {r['trailing']:.2f} | {r['logsnr']:.2f} | "
              f"{r['karras']:.2f} | {r['tune_seconds']:.0f} | {r['grid']} |")  # fmt: skip
    plot(rows, base, args, schedule, out)


def plot(rows, base, args, schedule, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    cs = [r["calls"] for r in rows]
    for name in ("tuned", *FIXED):
        ax.plot(cs, [r[name] for r in rows], marker="o", label=f"{args.sampler}, {name}")
    ax.axhline(base["fid"], color="k", linestyle=":", label=f"DDIM at {args.baseline_calls} calls")
    ax.axhline(base["fid_floor"], color="gray", linestyle="--", label="real vs real")
    ax.set(xlabel="model calls", ylabel="FD (digit features)", yscale="log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "fd.png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(rows), figsize=(2.2 * len(rows), 3), sharey=True)
    for ax, r in zip(axes, rows):
        steps = len(r["grid"])
        for name in FIXED:
            ax.plot(
                make_timesteps(schedule.T, steps, name, schedule).tolist(), marker=".", label=name, alpha=0.6
            )
        ax.plot(r["grid"], marker="o", color="k", label="tuned")
        ax.set(title=f"{r['calls']} calls", xlabel="step")
    axes[0].set_ylabel("timestep t")
    axes[-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "grids.png", dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
