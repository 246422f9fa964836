"""What the trainer's safety net costs a step: `ddim.training.state.capture` (the step, data
position and every RNG state, taken after each step so that a signal or an error can save the
last completed step) and the finiteness check of the loss and gradient norm (one device sync a
step), beside a whole training step of the demo's model (16x16x1, batch 64, ddim demo's UNet).
One thread, CPU; the medians of `--repeats` timings.

Run: OMP_NUM_THREADS=1 python benchmarks/fault_guard_overhead.py --repeats 200 --steps 20
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from ddim.cli.train import demo_config
from ddim.data import load_dataset
from ddim.training import train
from ddim.training.state import capture


def median_us(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data_gen, noise_gen = torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)
    capture_us = median_us(lambda: capture(10, 640, data_gen, noise_gen), args.repeats)
    loss, norm = torch.tensor(0.5), torch.tensor(1.0)

    def check():
        flags = torch.stack([~torch.isfinite(loss), ~torch.isfinite(norm)]).float()
        torch.cat([flags, torch.tensor([0.0])]).tolist()

    check_us = median_us(check, args.repeats)
    run = demo_config(args.steps, "cpu")
    dataset = load_dataset("digits", size=16)
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        train(run, out, progress=False, dataset=dataset)
        step_us = (time.perf_counter() - start) / args.steps * 1e6  # includes setup: an upper bound
    print(f"| what (per step) | microseconds | share of a demo step ({step_us / 1e3:.0f} ms) |")
    print("|---|---:|---:|")
    for name, us in (("capture (RNG states, position)", capture_us), ("finiteness check + sync", check_us)):
        print(f"| {name} | {us:.1f} | {100 * us / step_us:.4f}% |")


if __name__ == "__main__":
    main()
