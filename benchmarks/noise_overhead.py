"""Cost of per-example noise in a stochastic sampler: DDIM at eta = 1 with the library's
per-example streams (`PerSampleNoise`, as `ddim.sample_seeded` and `ddim sample` use them) against
the same sampler fed by one plain `torch.randn` generator per step (no per-example guarantee),
and eta = 0 (no noise) for scale. The model is trivial (x * 0.1), so the step time is the
sampler's own work. Repeats are interleaved; the table reports medians.

Run: OMP_NUM_THREADS=1 python benchmarks/noise_overhead.py --batch 16 --size 32 --channels 3 \
         --steps 50 --repeats 20
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence

import torch

import ddim
from ddim import PerSampleNoise


class PlainNoise(PerSampleNoise):
    """One generator for the whole batch: torch.randn per step, as a plain `randn_like` loop."""

    def __init__(self, seed: int):
        super().__init__(seed, range(0))
        self.g = torch.Generator().manual_seed(seed)

    def randn(self, shape: Sequence[int], device=None, dtype=None):
        return torch.randn((self.n, *shape), generator=self.g, device=device, dtype=dtype)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    device = torch.device(args.device)
    schedule = ddim.NoiseSchedule.linear(1000)
    x = torch.randn(args.batch, args.channels, args.size, args.size, device=device)

    def model(x, t):
        return x * 0.1

    def plain():
        noise = PlainNoise(0)
        noise.n = len(x)
        return noise

    def run(eta: float, make_noise: Callable | None) -> Callable[[], None]:
        return lambda: ddim.sample(
            model, x, schedule, steps=args.steps, eta=eta, generator=make_noise() if make_noise else None
        )

    runs = {
        "eta=0 (no noise)": run(0.0, None),
        "eta=1, plain randn (one generator)": run(1.0, plain),
        "eta=1, PerSampleNoise (default for the device)": run(
            1.0, lambda: PerSampleNoise.from_seed(0, len(x), stream=1)
        ),
        "eta=1, PerSampleNoise philox=True": run(
            1.0, lambda: PerSampleNoise.from_seed(0, len(x), stream=1, philox=True)
        ),
    }

    def timed(fn) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.inference_mode():
            fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) / args.steps * 1e6

    for fn in runs.values():
        timed(fn)
    times: dict[str, list[float]] = {k: [] for k in runs}
    names = list(runs)
    for r in range(args.repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            times[name].append(timed(runs[name]))
    med = {k: statistics.median(v) for k, v in times.items()}
    base = med["eta=0 (no noise)"]
    plain_us = med["eta=1, plain randn (one generator)"]
    print(
        f"\nDDIM, {args.steps} steps, batch {args.batch}x{args.channels}x{args.size}x{args.size}, "
        f"{device.type}, {torch.get_num_threads()} threads, median of {args.repeats} interleaved repeats\n"
    )
    print("| sampler | us/step | noise us/step | vs plain randn |")
    print("|---|---:|---:|---:|")
    for name, us in med.items():
        print(f"| {name} | {us:.1f} | {us - base:.1f} | {us / plain_us:.2f}x |")


if __name__ == "__main__":
    main()
