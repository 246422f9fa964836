"""One script for a GPU: the CUDA-marked tests, bf16 training throughput against diffusers'
UNet2DModel at (about) equal FLOPs per image, sampling time at batch 256, and a proof that no
sampling loop synchronises the host with the device. Under 8 minutes on one H100/H200.

1. `pytest -m cuda` (device generators, Philox on the device = on the CPU, pinned copies, bf16
   autocast, a one-GPU NCCL group), in a subprocess.
2. Training, bf16 autocast, fused AdamW (`ddim.training.optim`), eps-MSE loss, at 32x32x3 and
   64x64x3: our UNet against a diffusers UNet2DModel whose width is picked to match our forward
   FLOPs per image (counted with torch.utils.flop_counter); images/s and achieved TFLOP/s (3 x
   forward FLOPs per image).
3. Sampling with our UNet at batch 256, 32x32x3: ddim at eta 0 and 1, dpmpp_2m (deterministic:
   it has no eta) and ddpm (the eta = 1 ancestral sampler), with per-example seeded noise.
4. Each of those sampling loops once more (the sampler itself, on a predictor, without
   `ddim.sample`'s single finiteness check after the loop) under
   torch.cuda.set_sync_debug_mode("error"), which raises on any host-device synchronisation.

`--device cpu --tiny` runs the same code at tiny sizes in seconds (tests/test_gpu_check.py does,
so the script cannot rot); on the CPU the sync check has nothing to check and says so.

Run: python benchmarks/gpu_check.py                      # on the GPU
     python benchmarks/gpu_check.py --device cpu --tiny   # CI
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

import ddim
from ddim import SAMPLERS, PerSampleNoise, make_predictor, make_timesteps
from ddim.models import UNet, UNetConfig
from ddim.samplers import DEFAULT_SPACINGS
from ddim.training.optim import adamw

ROOT = Path(__file__).resolve().parents[1]
CUDA_TESTS = ["tests/test_noise.py", "tests/test_gpu_check.py"]
SAMPLING = [("ddim", 0.0), ("ddim", 1.0), ("dpmpp_2m", 0.0), ("ddpm", 1.0)]


def sizes(tiny: bool) -> dict:
    if tiny:
        return dict(resolutions=(8, 16), base=8, train_batch=4, train_steps=2, sample_batch=4,
                    sample_size=8, sample_steps=3, widths=(8, 16))  # fmt: skip
    return dict(resolutions=(32, 64), base=64, train_batch=128, train_steps=20, sample_batch=256,
                sample_size=32, sample_steps=50, widths=(32, 48, 64, 80, 96, 128))  # fmt: skip


def run_tests(device: torch.device) -> str:
    """The CUDA-marked tests (they skip without CUDA); returns pytest's summary line."""
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider", *CUDA_TESTS],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    lines = [line for line in out.stdout.splitlines() if line.strip()]
    if out.returncode not in (0, 5):  # 5: nothing collected
        print(out.stdout[-4000:], out.stderr[-2000:], sep="\n")
        raise SystemExit(f"CUDA tests failed: {lines[-1] if lines else out.returncode}")
    return lines[-1] if lines else "no output"


def ours(size: int, base: int) -> torch.nn.Module:
    return UNet(UNetConfig(in_channels=3, base_channels=base, channel_mult=(1, 2, 2, 2)))


def diffusers_unet(size: int, base: int) -> torch.nn.Module:
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=size,
        in_channels=3,
        out_channels=3,
        block_out_channels=(base, 2 * base, 2 * base, 2 * base),
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        layers_per_block=1,
        norm_num_groups=8,
    )


def forward_flops(model: torch.nn.Module, size: int) -> float:
    """Forward FLOPs per image (torch.utils.flop_counter: matmuls and convolutions)."""
    x, t = torch.randn(2, 3, size, size), torch.tensor([10, 500])
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x, t)
    return counter.get_total_flops() / 2


def call(model: torch.nn.Module) -> Callable:
    if type(model).__name__ == "UNet2DModel":
        return lambda x, t: model(x, t).sample
    return model


def train_rate(model: torch.nn.Module, size: int, batch: int, steps: int, device: torch.device) -> float:
    """Images per second of bf16-autocast training steps (eps-MSE loss, the AdamW ddim trains
    with, fused on CUDA, for both networks)."""
    model = model.to(device)
    opt = adamw(model.parameters(), 1e-4, 0.0, device)
    net = call(model)
    schedule = ddim.NoiseSchedule.linear(1000)
    x0 = torch.randn(batch, 3, size, size, device=device)
    g = torch.Generator(device).manual_seed(0)

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = ddim.diffusion_loss(net, x0, schedule, generator=g).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(2):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return batch * steps / (time.perf_counter() - start)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def sampling(model, sampler: str, eta: float, batch: int, size: int, steps: int, device, loop_only=False):
    """A seeded sampling run at batch `batch`; with `loop_only`, only the sampler's loop (the
    registry function on a predictor), without `ddim.sample`'s one finiteness check after it."""
    schedule = ddim.NoiseSchedule.linear(1000)
    x_T = PerSampleNoise.from_seed(0, batch).randn((3, size, size), device=device)
    extra = {"eta": eta} if sampler == "ddim" else {}
    grid = make_timesteps(schedule.T, steps, DEFAULT_SPACINGS[sampler], schedule=schedule)
    predict = make_predictor(model, schedule)

    def run():
        noise = PerSampleNoise.from_seed(0, batch, stream=1)
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16):
            if loop_only:
                return SAMPLERS[sampler](predict, x_T, schedule, grid, generator=noise, **extra)
            return ddim.sample(model, x_T, schedule, steps, sampler=sampler, generator=noise, **extra)

    return run


def no_sync(run: Callable, device: torch.device) -> str:
    """'none' if `run` makes no host-device sync (CUDA's sync debug mode set to raise)."""
    if device.type != "cuda":
        run()
        return "n/a (CPU)"
    sync(device)
    torch.cuda.set_sync_debug_mode("error")
    try:
        run()
        return "none"
    except RuntimeError as e:
        return f"SYNC: {str(e).splitlines()[0][:80]}"
    finally:
        torch.cuda.set_sync_debug_mode("default")


def main(argv: list[str] | None = None) -> list[str]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--tiny", action="store_true", help="tiny sizes: the same code paths in seconds")
    p.add_argument("--skip-tests", action="store_true", help="do not run the CUDA-marked tests")
    args = p.parse_args(argv)
    device = ddim.resolve_device(args.device)
    s = sizes(args.tiny)
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "CPU"
    lines = [f"# gpu_check on {card} ({device}), torch {torch.__version__}, tiny={args.tiny}"]
    started = time.perf_counter()
    if not args.skip_tests:
        lines.append(f"CUDA-marked tests: {run_tests(device)}")

    lines += ["", "| training (bf16) | size | fwd MFLOP/img | images/s | TFLOP/s | FLOP/s vs ours |",
              "|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for size in s["resolutions"]:
        net = ours(size, s["base"])
        flops = forward_flops(net, size)
        widths = {w: forward_flops(diffusers_unet(size, w), size) for w in s["widths"]}
        width = min(widths, key=lambda w: abs(widths[w] - flops))  # equal FLOPs per image
        anchor = f"diffusers (width {width})"
        models = {"ours": (net, flops), anchor: (diffusers_unet(size, width), widths[width])}
        achieved = {}
        for name, (model, f) in models.items():
            rate = train_rate(model, size, s["train_batch"], s["train_steps"], device)
            achieved[name] = 3 * f * rate  # forward + backward: about 3 forwards
            lines.append(
                f"| {name} | {size} | {f / 1e6:.1f} | {rate:.0f} | {achieved[name] / 1e12:.3f} | "
                f"{achieved[name] / achieved['ours']:.2f} |"
            )

    net = ours(s["sample_size"], s["base"]).to(device).eval()
    head = f"| sampling, batch {s['sample_batch']}, {s['sample_steps']} steps, bf16 | ms/step | images/s "
    lines += ["", head + "| host syncs in the loop |", "|---|---:|---:|---|"]
    for sampler, eta in SAMPLING:
        run = sampling(net, sampler, eta, s["sample_batch"], s["sample_size"], s["sample_steps"], device)
        run()
        sync(device)
        start = time.perf_counter()
        out = run()
        sync(device)
        seconds = time.perf_counter() - start
        if not torch.isfinite(out).all():
            raise SystemExit(f"{sampler} eta={eta}: non-finite samples")
        loop = sampling(net, sampler, eta, s["sample_batch"], s["sample_size"], 3, device, loop_only=True)
        syncs = no_sync(loop, device)
        lines.append(
            f"| {sampler}, eta={eta:g} | {seconds / s['sample_steps'] * 1e3:.1f} | "
            f"{s['sample_batch'] / seconds:.0f} | {syncs} |"
        )
    lines.append(f"\ntotal {time.perf_counter() - started:.0f} s")
    print("\n".join(lines))
    return lines


if __name__ == "__main__":
    main()
