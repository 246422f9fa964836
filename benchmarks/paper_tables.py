"""The shape of the DDIM paper's Tables 1 and 2, and a sampler comparison, on a model trained here.

    python benchmarks/paper_tables.py --checkpoint RUN_DIR --reference /work/shared/data/mnist \
        --images /work/shared/data/mnist --out docs/paper

Table 1 (DDIM sec. 5.1): sample quality against steps for eta in {0, 0.2, 0.5, 1} and the larger
variance sigma-hat. Table 2 (sec. 5.4): the error of x0 -> x_T -> x0 against steps. Then each
sampler against model calls. Quality is the Frechet distance on the shipped digit classifier's
features (`ddim.evaluation`), with the real-vs-real floor. Writes markdown, CSV and PNG files.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from ddim.data import load_dataset
from ddim.evaluation.sampler_bench import bench_samplers, label, write_report
from ddim.sampling import invert, sample
from ddim.training import load_checkpoint


def table1(ckpt, shape, args) -> list[dict]:
    variants = [("ddim", 0.0), ("ddim", 0.2), ("ddim", 0.5), ("ddim", 1.0), "ddpm_sigma_hat"]
    return bench_samplers(ckpt.model, ckpt.schedule, shape, args.reference, samplers=variants,
                          calls=args.steps, n=args.n, prediction=ckpt.prediction, split="train",
                          n_reference=args.n_reference)  # fmt: skip


def table2(ckpt, args) -> list[dict]:
    size = ckpt.config.data.size
    images = load_dataset(args.images, size=size, split="test").images[: args.n_reconstruct]
    rows = []
    with torch.inference_mode():
        for steps in args.steps:
            started = time.perf_counter()
            z = invert(ckpt.model, images, ckpt.schedule, steps=steps, prediction=ckpt.prediction)
            rec = sample(ckpt.model, z, ckpt.schedule, steps=steps, prediction=ckpt.prediction)
            mse = (rec - images).pow(2).mean().item()  # per-dimension MSE in [-1, 1] units, as Table 2
            rows.append({"steps": steps, "mse": mse, "seconds": time.perf_counter() - started})
            print(f"reconstruction, {steps} steps: MSE {mse:.5f}")
    return rows


def markdown(rows: list[dict], columns: list[int], key: str) -> str:
    """A pivot of the FD: one row per variant, one column per value of `key` (steps or budget)."""
    names = list(dict.fromkeys(label(r) for r in rows))
    head = "| " + " | ".join([key, *map(str, columns)]) + " |\n|" + "---|" * (len(columns) + 1) + "\n"
    body = ""
    for name in names:
        cells = {r[key]: r["fid"] for r in rows if label(r) == name}
        body += f"| {name} | " + " | ".join(f"{cells[c]:.3f}" for c in columns) + " |\n"
    return head + body


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--reference", required=True, help="dataset for the metric's reference statistics")
    p.add_argument("--images", required=True, help="dataset whose test split is reconstructed")
    p.add_argument("--out", default="docs/paper")
    p.add_argument("--n", type=int, default=1000, help="samples per table cell")
    p.add_argument("--n-reference", type=int, default=10000)
    p.add_argument("--n-reconstruct", type=int, default=256)
    p.add_argument("--steps", type=lambda s: [int(v) for v in s.split(",")], default=[10, 20, 50, 100])
    p.add_argument("--samplers", default="ddim,dpmpp_2m,dpmpp_3m,unipc,heun")
    p.add_argument("--calls", type=lambda s: [int(v) for v in s.split(",")], default=[5, 10, 20, 50])
    args = p.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    ckpt = load_checkpoint(args.checkpoint)
    c, size = ckpt.config.model.in_channels, ckpt.config.data.size
    shape = (c, size, size)

    t1 = table1(ckpt, shape, args)
    write_report(t1, out / "table1")
    floor = t1[0]["fid_floor"]
    t2 = table2(ckpt, args)
    samplers = args.samplers.split(",")
    bench = bench_samplers(ckpt.model, ckpt.schedule, shape, args.reference, samplers=samplers,
                           calls=args.calls, n=args.n, prediction=ckpt.prediction,
                           n_reference=args.n_reference)  # fmt: skip
    write_report(bench, out / "samplers")
    text = (
        f"Checkpoint {ckpt.path} (step {ckpt.step}); {args.n} samples per cell; FD on the digit "
        f"classifier's features; real-vs-real floor {floor:.3f}.\n\n### Table 1: FD against steps\n\n"
        + markdown(t1, args.steps, "steps")
        + "\n### Table 2: reconstruction MSE of x0 -> x_T -> x0 (DDIM, eta = 0)\n\n| steps | "
        + " | ".join(str(r["steps"]) for r in t2) + " |\n|" + "---|" * (len(t2) + 1) + "\n| MSE | "
        + " | ".join(f"{r['mse']:.5f}" for r in t2) + " |\n"
        + "\n### Samplers: FD against the budget of model calls (Heun: 2S - 1 <= budget)\n\n"
        + markdown(bench, args.calls, "budget")
    )  # fmt: skip
    (out / "tables.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
