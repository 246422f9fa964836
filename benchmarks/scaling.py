"""Cost as work grows, on this machine with one thread: training and sampling throughput of the
default UNet (UNetConfig(), 1 channel) against batch size and resolution, and the peak memory of
`ddim sample --npz` and of `ddim eval` on its npz against --n (each a fresh process under
/usr/bin/time -v). Prints tables and, with --plot, writes docs/performance/scaling.png.

Run: OMP_NUM_THREADS=1 python benchmarks/scaling.py --sizes 16 32 64 --batches 8 32 --plot \
         [--memory RUN --n 64 256 1024]
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import ddim
from ddim.models import UNet, UNetConfig

ROOT = Path(__file__).resolve().parents[1]


def throughput(size: int, batch: int, steps: int) -> tuple[float, float]:
    """(training images/s, sampling images/s per model call) at one size and batch."""
    torch.manual_seed(0)
    net = UNet(UNetConfig())
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    schedule = ddim.NoiseSchedule.linear(1000)
    x0 = torch.rand(batch, 1, size, size) * 2 - 1
    g = torch.Generator().manual_seed(0)

    def train_step():
        loss = ddim.diffusion_loss(net, x0, schedule, generator=g).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def sample_call():
        with torch.inference_mode():
            net(x0, torch.full((batch,), 500))

    rates = []
    for fn in (train_step, sample_call):
        fn()
        start = time.perf_counter()
        for _ in range(steps):
            fn()
        rates.append(batch * steps / (time.perf_counter() - start))
    return rates[0], rates[1]


def peak_rss_mb(*command: str) -> float:
    """Peak resident memory of `ddim COMMAND...`, a fresh process under /usr/bin/time -v."""
    ddim_cli = str(Path(sys.executable).parent / "ddim")
    out = subprocess.run(
        ["/usr/bin/time", "-v", ddim_cli, *command], capture_output=True, text=True, check=True
    )
    return int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", out.stderr).group(1)) / 1024


def memory_rows(run: str, counts: list[int], steps: int) -> None:
    """Peak memory of `ddim sample --n N --npz` and of `ddim eval` on that npz, against N."""
    print("\n| --n | ddim sample peak RSS MB | ddim eval peak RSS MB |\n|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for n in counts:
            npz = f"{tmp}/{n}.npz"
            sample = peak_rss_mb("sample", "--checkpoint", run, "--n", str(n), "--steps", str(steps),
                                 "--batch-size", "64", "--device", "cpu", "--out", f"{tmp}/grid.png",
                                 "--npz", npz, "--quiet")  # fmt: skip
            score = peak_rss_mb("eval", "--samples", npz, "--reference", "digits", "--n-reference", "1000",
                                "--cache-dir", f"{tmp}/cache", "--device", "cpu", "--quiet")  # fmt: skip
            print(f"| {n} | {sample:.0f} | {score:.0f} |", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[16, 32, 64])
    p.add_argument("--batches", type=int, nargs="+", default=[8, 32])
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--plot", action="store_true")
    p.add_argument("--memory", default=None, help="a run folder: measure sample and eval peak memory")
    p.add_argument("--n", type=int, nargs="+", default=[64, 256, 1024])
    args = p.parse_args()
    torch.set_num_threads(1)
    rows = {}
    print(f"\ndefault UNetConfig (1 channel), 1 thread, {args.steps} timed steps after one warm-up\n")
    print("| size | batch | train images/s | sampling images/s per model call |")
    print("|---:|---:|---:|---:|")
    for size in args.sizes:
        for batch in args.batches:
            rows[(size, batch)] = throughput(size, batch, args.steps)
            train, sample = rows[(size, batch)]
            print(f"| {size} | {batch} | {train:.1f} | {sample:.1f} |", flush=True)
    if args.plot:
        import matplotlib
        import matplotlib.ticker

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
        for ax, k, title in ((axes[0], 0, "training"), (axes[1], 1, "sampling (per model call)")):
            for batch in args.batches:
                ax.plot(args.sizes, [rows[(s, batch)][k] for s in args.sizes], "o-", label=f"batch {batch}")
            ax.set_xscale("log", base=2)
            ax.set(yscale="log", xlabel="image size (px)", ylabel="images/s", title=title)
            ax.set_xticks(args.sizes, [str(s) for s in args.sizes])
            ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
            ax.legend()
        fig.tight_layout()
        out = ROOT / "docs" / "performance" / "scaling.png"
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, dpi=100)
        print(f"\nplot: {out}")
    if args.memory:
        memory_rows(args.memory, args.n, 2)


if __name__ == "__main__":
    main()
