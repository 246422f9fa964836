"""What `compile_model` buys on this machine: UNet training-step and sampling-forward time, eager
against torch.compile (inductor), and the compile time of a first run (empty cache) and of a
second run (inductor's FX/AOT caches under a fresh cache dir, filled by the first run). Each run is
a fresh process with one thread (set DDIM_BENCH_THREADS to change it).
The training step uses ddim's optimizer (`ddim.training.optim.adamw`).

Run: python benchmarks/compile_speedup.py --steps 10
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

CONFIGS = {  # name: (size, channels, batch)
    "16x16x1, batch 64": (16, 1, 64),
    "32x32x3, batch 32": (32, 3, 32),
}


def worker(size: int, channels: int, batch: int, mode: str, steps: int) -> dict:
    import torch

    torch.set_num_threads(int(os.environ.get("DDIM_BENCH_THREADS", "1")))
    from ddim.models import UNet, UNetConfig
    from ddim.models.compile import compile_model
    from ddim.training.optim import adamw

    torch.manual_seed(0)
    net = UNet(UNetConfig(in_channels=channels))
    x = torch.randn(batch, channels, size, size)
    t = torch.randint(0, 1000, (batch,))
    opt = adamw(net.parameters(), 1e-4, 0.0, torch.device("cpu"))  # what ddim trains with

    def step(model):
        if mode == "train":
            loss = (model(x, t) - x).square().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        else:
            with torch.inference_mode():
                model(x, t)

    def timed(model, n):
        start = time.perf_counter()
        for _ in range(n):
            step(model)
        return (time.perf_counter() - start) / n

    step(net)
    eager = timed(net, steps)
    compiled = compile_model(net)
    compile_s = timed(compiled, 1)  # the first call compiles (or loads from the cache)
    step(compiled)
    return {"eager": eager, "compile": compile_s, "compiled": timed(compiled, steps)}


def run(cfg: tuple[int, int, int], mode: str, steps: int, cache: str) -> dict:
    env = {**os.environ, "DDIM_CACHE_DIR": cache}
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)
    args = [sys.executable, __file__, "--worker", json.dumps([*cfg, mode]), "--steps", str(steps)]
    out = subprocess.run(args, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    p.add_argument("--modes", nargs="+", default=["train", "sample"], choices=["train", "sample"])
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        size, channels, batch, mode = json.loads(args.worker)
        print(json.dumps(worker(size, channels, batch, mode, args.steps)))
        return
    rows = []
    for name in args.configs:
        cfg = CONFIGS[name]
        for mode in args.modes:
            with tempfile.TemporaryDirectory() as cache:
                first = run(cfg, mode, args.steps, cache)
                second = run(cfg, mode, args.steps, cache)
            eager = (first["eager"] + second["eager"]) / 2
            compiled = (first["compiled"] + second["compiled"]) / 2
            saved = eager - compiled
            rows.append(
                f"| {name} | {mode} | {eager * 1e3:.0f} | {compiled * 1e3:.0f} | {eager / compiled:.2f}x | "
                f"{first['compile']:.0f} | {second['compile']:.1f} | "
                f"{(first['compile'] / saved if saved > 0 else float('inf')):.0f} | "
                f"{(second['compile'] / saved if saved > 0 else float('inf')):.0f} |"
            )
            print(rows[-1], flush=True)
    threads = os.environ.get("DDIM_BENCH_THREADS", "1")
    print(
        f"\ndefault UNetConfig, {threads} thread(s), {args.steps} timed steps, "
        f"load {os.getloadavg()[0]:.1f}\n"
    )
    print(
        "| config | step | eager ms | compiled ms | speed-up | compile s (empty cache) | compile s (cached) "
        "| steps to pay back (empty) | steps to pay back (cached) |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
