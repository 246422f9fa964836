"""Training images/s with 1 and with 2 processes under torchrun (gloo on the CPU, NCCL on GPUs),
the same global batch in both, from each run's log.csv.

    python benchmarks/distributed_throughput.py [--steps 60] [--batch-size 64] [--device cpu]
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def run(nproc: int, out: Path, args: argparse.Namespace) -> float:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "ddim", "train", "--data", "digits", "--out", str(out), "--steps", str(args.steps),
           "--batch-size", str(args.batch_size), "--sample-every", "0", "--checkpoint-every", "0",
           "--log-every", str(args.steps // 2), "--device", args.device]  # fmt: skip
    threads = max(1, (os.cpu_count() or 2) // nproc) if args.device == "cpu" else 1
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    subprocess.run(cmd, check=True, env=env, capture_output=True)
    rows = list(csv.DictReader((out / "log.csv").open()))
    return float(rows[-1]["images_per_s"])  # the second half of the run: past start-up


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="cpu")
    p.add_argument("--procs", default="1,2")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = {n: run(int(n), Path(tmp) / f"p{n}", args) for n in args.procs.split(",")}
    base = results[args.procs.split(",")[0]]
    print(f"| processes | images/s (global batch {args.batch_size}, {args.device}) | ratio |\n|---|---|---|")
    for n, ips in results.items():
        print(f"| {n} | {ips:.0f} | {ips / base:.2f} |")


if __name__ == "__main__":
    main()
