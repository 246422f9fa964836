"""Per-step cost of the sampling loop itself: our `ddim.sample` against diffusers' DDIMScheduler
loop (set_timesteps + step) and lucidrains' `GaussianDiffusion.ddim_sample`, in one run.

The model is trivial (x * 0.1), so a step's time is the sampler's own arithmetic and Python
overhead; the bare model call is timed too, and overhead = per step - model. All run DDIM with
eta = 0 on the linear schedule, T = 1000, on the same batch. lucidrains always clips x0 to
[-1, 1] and re-derives eps (and draws a noise tensor every step, even at eta = 0), so ours and
diffusers (clip_sample + use_clipped_model_output: the same clip-and-re-derive) are timed both
without clipping and with it. Ratios are against the fastest anchor. Repeats are interleaved
across samplers so that load from other processes hits all alike; the table reports medians. On
CUDA the clock is synchronised only around each whole sampling call, and our loop is then run once
more under torch.cuda.set_sync_debug_mode("error"), which raises on any host-device sync
(reported for eta = 0 and, for information, eta = 1 with a CPU generator).

Run: python benchmarks/sampler_overhead.py --batch 64 --size 32 --channels 3 --steps 50 \
         --repeats 15 --device cpu
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

os.environ.setdefault("TQDM_DISABLE", "1")  # lucidrains wraps its loop in tqdm; ours shows none

import torch
from torch import Tensor, nn

import ddim

T = 1000


class Trivial(nn.Module):
    """x * 0.1, with the attributes lucidrains' GaussianDiffusion reads from its Unet."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = self.out_dim = channels
        self.self_condition = False
        self.random_or_learned_sinusoidal_cond = False

    def forward(self, x: Tensor, t: Tensor, x_self_cond: Tensor | None = None) -> Tensor:
        return x * 0.1


def contenders(args, model: Trivial, x: Tensor) -> dict[str, Callable[[], Tensor]]:
    device, steps = x.device, args.steps
    schedule = ddim.NoiseSchedule.linear(T)
    runs: dict[str, Callable[[], Tensor]] = {}

    def bare_model() -> Tensor:
        t = torch.full((len(x),), 500, dtype=torch.int64, device=device)
        for _ in range(steps):
            out = model(x, t)
        return out

    runs["model call alone"] = bare_model
    runs["ours (no clip)"] = lambda: ddim.sample(model, x, schedule, steps=steps, spacing="leading")
    runs["ours (clip=1.0)"] = lambda: ddim.sample(model, x, schedule, steps=steps, clip=1.0)

    try:
        from diffusers import DDIMScheduler

        def diffusers_loop(clip: bool) -> Callable[[], Tensor]:
            scheduler = DDIMScheduler(
                num_train_timesteps=T,
                beta_schedule="linear",
                clip_sample=clip,
                set_alpha_to_one=True,
                steps_offset=0,
                timestep_spacing="leading",
            )

            def run() -> Tensor:
                scheduler.set_timesteps(steps, device=device)
                y = x
                for t in scheduler.timesteps:
                    out = model(y, t)
                    y = scheduler.step(out, t, y, use_clipped_model_output=clip).prev_sample
                return y

            return run

        runs["diffusers DDIMScheduler (no clip)"] = diffusers_loop(False)
        # clip_sample + use_clipped_model_output: clamp x0, re-derive eps, as ours with clip=1.0
        runs["diffusers DDIMScheduler (clip)"] = diffusers_loop(True)
    except ImportError:
        print("diffusers not installed: skipped")

    try:
        from denoising_diffusion_pytorch import GaussianDiffusion

        diffusion = GaussianDiffusion(
            model,
            image_size=args.size,
            timesteps=T,
            sampling_timesteps=steps,
            objective="pred_noise",
            beta_schedule="linear",
            ddim_sampling_eta=0.0,
            auto_normalize=False,
        ).to(device)
        shape = tuple(x.shape)
        runs["lucidrains ddim_sample (clips)"] = lambda: diffusion.ddim_sample(shape)
    except ImportError:
        print("denoising_diffusion_pytorch not installed: skipped")
    return runs


def timed(fn: Callable[[], Tensor], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    with torch.inference_mode():
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def check_no_sync(model: Trivial, x: Tensor, steps: int) -> list[str]:
    """Run our loop with CUDA's sync debugging set to raise on any host-device synchronisation.
    eta = 0 is the benchmarked case; eta = 1 draws noise every step (from a CPU generator unless
    one on the GPU is passed), so it is reported too."""
    schedule = ddim.NoiseSchedule.linear(T)
    cases = {
        "eta=0, no clip": lambda: ddim.sample(model, x, schedule, steps=steps, spacing="leading"),
        "eta=0, clip=1.0": lambda: ddim.sample(model, x, schedule, steps=steps, clip=1.0),
        "eta=1, CPU generator": lambda: ddim.sample(
            model, x, schedule, steps=steps, eta=1.0, generator=torch.Generator().manual_seed(0)
        ),
    }
    lines = []
    for label, fn in cases.items():
        torch.cuda.synchronize(x.device)
        torch.cuda.set_sync_debug_mode("error")
        try:
            with torch.inference_mode():
                fn()
            lines.append(f"{label}: none")
        except RuntimeError as e:
            lines.append(f"{label}: SYNC: {str(e).splitlines()[0]}")
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--channels", type=int, default=3)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model = Trivial(args.channels).to(device)
    x = torch.randn(args.batch, args.channels, args.size, args.size, device=device)
    runs = contenders(args, model, x)

    for fn in runs.values():  # warm-up: allocator, kernels, lazy imports
        timed(fn, device)
    per_step: dict[str, list[float]] = {name: [] for name in runs}
    names = list(runs)
    for r in range(args.repeats):
        order = names[r % len(names) :] + names[: r % len(names)]  # rotate who goes first
        for name in order:
            per_step[name].append(timed(runs[name], device) / args.steps * 1e6)
    med = {name: statistics.median(v) for name, v in per_step.items()}

    model_us = med.pop("model call alone")
    anchors = [n for n in med if not n.startswith("ours")]
    fastest = min(anchors, key=med.get) if anchors else None
    print(
        f"\nDDIM eta=0, T={T}, {args.steps} steps, batch {args.batch}x{args.channels}x{args.size}"
        f"x{args.size}, {device.type}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, median of {args.repeats} interleaved repeats"
    )
    print(f"bare model call: {model_us:.1f} us/step; ratios are against {fastest or '-'}\n")
    print("| sampler | us/step | overhead us/step | per-step ratio | overhead ratio |")
    print("|---|---:|---:|---:|---:|")
    for name, us in med.items():
        over = us - model_us
        ratio = f"{us / med[fastest]:.2f}" if fastest else "-"
        o_ratio = f"{over / (med[fastest] - model_us):.2f}" if fastest else "-"
        print(f"| {name} | {us:.1f} | {over:.1f} | {ratio} | {o_ratio} |")
    if device.type == "cuda":
        print("\nhost-device syncs inside our loop (torch.cuda.set_sync_debug_mode('error')):")
        for line in check_no_sync(model, x, args.steps):
            print(f"  {line}")


if __name__ == "__main__":
    main()
