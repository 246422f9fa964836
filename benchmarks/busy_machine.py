"""A short training run (the demo's UNet and batch: 16x16x1, batch 64, v-prediction) quiet and
beside one busy process (`yes > /dev/null`, one core kept busy), under several thread choices:
torch's default (one thread per core, OpenMP's default spinning wait), the same with
OMP_WAIT_POLICY=PASSIVE (sleeping waits), one thread, and what the CLI does
(`ddim.device.choose_threads()` once, then `adjust_threads()` after each step, which follows the
CPUs other processes leave, looked at every 2 s).
Each case is a fresh process (the wait policy must be set before torch starts). The load average
is printed beside each time: other users of the machine make "quiet" only relatively quiet.

Run: python benchmarks/busy_machine.py --steps 40 --repeats 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

CASES = {
    "torch default": {},
    "OMP_WAIT_POLICY=PASSIVE": {"OMP_WAIT_POLICY": "PASSIVE"},
    "1 thread": {"OMP_NUM_THREADS": "1"},
    "ddim (choose_threads, adjust_threads)": {"DDIM_BENCH_CHOOSE": "1"},
}


def worker(steps: int) -> None:
    """Time `steps` training steps (after 2 warm-up steps); print threads and seconds."""
    from ddim.device import adjust_threads, choose_threads

    if os.environ.get("DDIM_BENCH_CHOOSE"):
        choose_threads()
    import torch

    import ddim
    from ddim.models import UNet, UNetConfig
    from ddim.objectives import diffusion_loss

    torch.manual_seed(0)
    net = UNet(UNetConfig(in_channels=1, base_channels=16, channel_mult=(1, 2, 2)))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    schedule = ddim.NoiseSchedule.linear(1000)
    x0 = torch.rand(64, 1, 16, 16) * 2 - 1

    def step():
        loss = diffusion_loss(net, x0, schedule, prediction="v", generator=torch.Generator().manual_seed(0))
        opt.zero_grad(set_to_none=True)
        loss.mean().backward()
        opt.step()
        adjust_threads()  # a no-op unless choose_threads() chose the count

    for _ in range(2):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    print(torch.get_num_threads(), time.perf_counter() - start)


def run_case(env: dict[str, str], steps: int) -> tuple[int, float]:
    full = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    out = subprocess.run(
        [sys.executable, __file__, "--worker", "--steps", str(steps)],
        env={**full, **env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return int(out[-2]), float(out[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args.steps)
        return
    times: dict[tuple[str, bool], list[float]] = {}
    threads: dict[tuple[str, bool], int] = {}
    loads: dict[tuple[str, bool], list[float]] = {}
    for _ in range(args.repeats):
        for busy in (False, True):
            hog = subprocess.Popen(["yes"], stdout=subprocess.DEVNULL) if busy else None
            try:
                time.sleep(0.5 if busy else 0)
                for name, env in CASES.items():
                    load = os.getloadavg()[0]
                    n, s = run_case(env, args.steps)
                    times.setdefault((name, busy), []).append(s / args.steps)
                    loads.setdefault((name, busy), []).append(load)
                    threads[(name, busy)] = n
            finally:
                if hog is not None:
                    hog.kill()
                    hog.wait()
    print(
        f"\ndemo UNet training step (batch 64, 16x16x1), {os.cpu_count()} CPUs, "
        f"{args.steps} steps a run, median of {args.repeats}; load = 1-min load average at the start\n"
    )
    print(
        "| threads chosen by | threads quiet / busy | s/step quiet | s/step busy | busy / quiet "
        "| load quiet / busy |"
    )
    print("|---|---|---:|---:|---:|---|")
    for name in CASES:
        q, b = statistics.median(times[(name, False)]), statistics.median(times[(name, True)])
        lq, lb = statistics.median(loads[(name, False)]), statistics.median(loads[(name, True)])
        print(
            f"| {name} | {threads[(name, False)]} / {threads[(name, True)]} | {q:.3f} | {b:.3f} | "
            f"{b / q:.2f}x | {lq:.1f} / {lb:.1f} |"
        )


if __name__ == "__main__":
    main()
