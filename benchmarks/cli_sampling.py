"""Where `ddim sample` spends its time: the command's wall time against (model calls x the time of
one forward pass of the same batch). A ratio near 1 means the model, not the sampler, the
per-example noise, the I/O or the start-up, dominates.

    python benchmarks/cli_sampling.py --checkpoint RUN_DIR [--n 256] [--steps 50] [--batch-size 256]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from ddim.cli import main as ddim_main
from ddim.training import load_checkpoint


def forward_seconds(checkpoint, batch: int, repeats: int = 7) -> float:
    x = torch.randn(batch, *checkpoint.image_shape)
    t = torch.full((batch,), 500)
    times = []
    with torch.inference_mode():
        for _ in range(repeats + 2):
            started = time.perf_counter()
            checkpoint.model(x, t)
            times.append(time.perf_counter() - started)
    return statistics.median(times[2:])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--eta", default="0")
    args = p.parse_args()
    checkpoint = load_checkpoint(args.checkpoint)
    batches = -(-args.n // args.batch_size)
    model_time = batches * args.steps * forward_seconds(checkpoint, args.batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.perf_counter()
        ddim_main(["sample", "--checkpoint", args.checkpoint, "--n", str(args.n), "--steps", str(args.steps),
                   "--batch-size", str(args.batch_size), "--eta", args.eta, "--device", "cpu",
                   "--out", str(Path(tmp) / "grid.png"), "--npz", str(Path(tmp) / "s.npz")])  # fmt: skip
        wall = time.perf_counter() - started
    print(f"| n | steps | eta | model calls | calls x forward (s) | ddim sample wall (s) | ratio |\n"
          f"|---|---|---|---|---|---|---|\n| {args.n} | {args.steps} | {args.eta} | {batches * args.steps} "
          f"| {model_time:.2f} | {wall:.2f} | {wall / model_time:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
