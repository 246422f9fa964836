"""Training-step throughput of our UNet against the anchor libraries, in one run.

One step = UNet forward + eps-MSE loss + backward + AdamW step, on a batch of grayscale images.
Anchors: lucidrains' `denoising_diffusion_pytorch` (Unet + GaussianDiffusion, whose forward is
the loss) and diffusers' `UNet2DModel` (with the same inline loss as ours), each at 0.7-0.8M
parameters with full self-attention only at the lowest resolution (lucidrains adds linear
attention elsewhere), plus diffusers at our default widths, which separates the choice of widths
from the implementation. Steps are interleaved across libraries so that load from other
processes hits all alike; the table uses the median step time, and each ratio is the median of
the ratios within a round.

Each entry's FLOPs per step (forward + backward, `torch.utils.flop_counter`) give its achieved
GFLOP/s, set against two references trained the same way: our UNet's own convolutions alone, at
the shapes a step gives them (`OwnConvs`: the ceiling if all else took no time), and 128-channel
3x3 convolutions at 32x32, where this CPU's convolutions do well (the good case). Images/s
at equal FLOPs per image is GFLOP/s. `--compile` adds our UNet under torch.compile.
Run: python benchmarks/train_throughput.py --batch 64 --size 16 --steps 20
     python benchmarks/train_throughput.py --batch 64 --size 32 --channels 3 --steps 20
"""

import argparse
import functools
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from ddim.models import UNet, UNetConfig
from ddim.training.optim import adamw
from ddim.training.parts import backward_in_parts, parts_for

T = 1000
OURS = "ddim (ours), default config"
ONE_PART = "ddim (ours), one part: each op split across the threads"
CONVS = "ddim's own convolutions alone, in parts (its ceiling)"
WIDE = "3x3 convolutions, 128 channels at 32x32 (the CPU's good case)"
WIDE_PARTS = "the same, the batch in parts as ours"
Step = Callable[[Tensor], float]


def train_step(model: nn.Module, loss_fn: Callable[[Tensor], Tensor]) -> Step:
    """A closure doing one step of torch's default AdamW on loss_fn(x0), as the anchors train."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step(x0: Tensor) -> float:
        loss = loss_fn(x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    return step


def eps_mse(call: Callable[[Tensor, Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """DDPM eps-prediction loss (Ho et al. 2020, Alg. 1) with linear betas, made inline."""
    alphas_cumprod = torch.cumprod(1 - torch.linspace(1e-4, 0.02, T, dtype=torch.float64), 0)

    def loss(x0: Tensor) -> Tensor:
        t = torch.randint(0, T, (x0.shape[0],))
        a = alphas_cumprod[t].float().view(-1, 1, 1, 1)
        eps = torch.randn_like(x0)
        return F.mse_loss(call(a.sqrt() * x0 + (1 - a).sqrt() * eps, t), eps)

    return loss


def ddim_step(net: nn.Module, loss_fn: Callable[[Tensor], Tensor], split: bool) -> Step:
    """A closure doing one training step as ddim does: the batch in parts, a thread each, where
    `ddim.training.parts` chooses (split=False: one part), then ddim's fused AdamW."""
    opt = adamw(net.parameters(), 1e-4, 0.0, torch.device("cpu"))
    params = list(net.parameters())

    def part_loss(j: int, _: torch.Generator, x0: Tensor, parts: int) -> Tensor:
        return loss_fn(x0.chunk(parts)[j]) / parts

    def step(x0: Tensor) -> float:
        parts = parts_for(torch.device("cpu"), len(x0), whole=False) if split else 1
        opt.zero_grad(set_to_none=True)
        loss_of = functools.partial(part_loss, x0=x0, parts=parts)
        loss = backward_in_parts(loss_of, parts, torch.Generator(), params)
        opt.step()
        return loss.item()

    return step


def ours(config: UNetConfig, split: bool = True, compiled: bool = False) -> tuple[nn.Module, Step]:
    net = UNet(config)
    call = torch.compile(net, dynamic=False) if compiled else net
    return net, ddim_step(net, eps_mse(call), split and not compiled)


class OwnConvs(nn.Module):
    """A UNet's convolutions alone: forward(n) runs each on an input of n examples of the shape it
    sees in the UNet (ones, times a gain so that input gradients are taken too) and sums their
    outputs' mean squares. A step of it is what a step of the UNet would be if all else took no
    time: the most its convolutions allow on this CPU."""

    def __init__(self, config: UNetConfig, size: int):
        super().__init__()
        net, found = UNet(config), []
        hooks = [
            m.register_forward_hook(lambda m, args, _: found.append((m, args[0].shape[1:])))
            for m in net.modules()
            if isinstance(m, nn.Conv2d)
        ]
        net(torch.zeros(1, config.in_channels, size, size), torch.zeros(1, dtype=torch.long))
        for hook in hooks:
            hook.remove()
        self.convs = nn.ModuleList(m for m, _ in found)
        self.shapes = [shape for _, shape in found]
        self.gains = nn.Parameter(torch.ones(len(found)))

    def forward(self, n: int) -> Tensor:
        ones = [self.gains.new_ones(n, *shape) for shape in self.shapes]
        return sum(conv(x * g).square().mean() for conv, x, g in zip(self.convs, ones, self.gains))


def own_convs(config: UNetConfig, size: int) -> tuple[nn.Module, Step]:
    net = OwnConvs(config, size)
    return net, ddim_step(net, lambda x0: net(len(x0)), split=True)


def convs(widths: list[int], size: int, split: bool) -> tuple[nn.Module, Step]:
    """Two 3x3 convolutions per width, at size, size / 2, ... (a level each)."""
    layers = []
    for width in widths:
        layers.append(
            nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.Conv2d(width, width, 3, padding=1))
        )
    net = nn.ModuleList(layers)

    def loss(x0: Tensor) -> Tensor:
        total = 0
        for level, block in enumerate(net):
            side = size >> level
            x = x0.new_ones(x0.shape[0], widths[level], side, side)
            total = total + block(x).square().mean()
        return total

    return net, ddim_step(net, loss, split)


def lucidrains(size: int, channels: int) -> tuple[nn.Module, Step]:
    from denoising_diffusion_pytorch import GaussianDiffusion, Unet

    net = Unet(dim=16, dim_mults=(1, 2, 4), channels=channels)
    diffusion = GaussianDiffusion(
        net, image_size=size, timesteps=T, objective="pred_noise", beta_schedule="linear"
    )
    # It normalises [0, 1] images to [-1, 1] itself.
    return net, train_step(diffusion, lambda x0: diffusion((x0 + 1) / 2))


def diffusers(size: int, channels: int, widths: tuple[int, ...], groups: int) -> tuple[nn.Module, Step]:
    from diffusers import UNet2DModel

    net = UNet2DModel(
        sample_size=size,
        in_channels=channels,
        out_channels=channels,
        block_out_channels=widths,
        layers_per_block=1,
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        norm_num_groups=groups,
    )
    return net, train_step(net, eps_mse(lambda x, t: net(x, t).sample))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=16, help="height = width, divisible by 4")
    parser.add_argument("--channels", type=int, default=1, choices=(1, 3))
    parser.add_argument("--compile", action="store_true", help="also time our UNet under torch.compile")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per library")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per library")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    c = args.channels
    config = UNetConfig(in_channels=c)
    our_widths = tuple(config.base_channels * m for m in config.channel_mult)
    entries = {
        OURS: ours(config),
        ONE_PART: ours(config, split=False),
        "denoising-diffusion-pytorch, dim 16, mults (1, 2, 4)": lucidrains(args.size, c),
        "diffusers, widths (32, 32, 64)": diffusers(args.size, c, (32, 32, 64), 32),
        f"diffusers, widths {our_widths} as ours": diffusers(args.size, c, our_widths, config.groups),
        CONVS: own_convs(config, args.size),
        WIDE: convs([128], 32, split=False),
        WIDE_PARTS: convs([128], 32, split=True),
    }
    if args.compile:
        entries["ddim (ours), torch.compile"] = ours(config, compiled=True)
    x0 = torch.rand(args.batch, c, args.size, args.size) * 2 - 1
    flops = {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # so the parts run on this thread, where the counter is
    for name, (_, step) in entries.items():  # counted on an extra step, outside the timing
        with FlopCounterMode(display=False) as counter:
            step(x0)
        flops[name] = counter.get_total_flops()
    torch.set_num_threads(threads)
    parts = parts_for(torch.device("cpu"), args.batch, whole=False)
    times: dict[str, list[float]] = {name: [] for name in entries}
    for i in range(args.warmup + args.steps):
        for name, (_, step) in entries.items():
            start = time.perf_counter()
            step(x0)
            if i >= args.warmup:
                times[name].append(time.perf_counter() - start)

    rate = {name: args.batch / statistics.median(ts) for name, ts in times.items()}
    gflops = {name: flops[name] / 1e9 * rate[name] / args.batch for name in entries}

    def against(name: str, *references: str) -> float:
        """name's FLOP rate over the fastest reference's, the median over rounds: each round times
        every entry once, so a change in the machine's speed between rounds cancels out."""
        return statistics.median(
            flops[name] / mine / max(flops[ref] / times[ref][i] for ref in references)
            for i, mine in enumerate(times[name])
        )

    print(
        f"batch {args.batch}, {args.size}x{args.size}x{c}, median of {args.steps} steps, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, ddim's batches in {parts} parts; "
        "the good case is the faster of its two ways per round\n"
    )
    print(
        "| library | params (M) | MFLOP / image | images/s | vs ours | GFLOP/s | of ddim's own convs "
        "| of 128-channel convs |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, (net, _) in entries.items():
        params = sum(p.numel() for p in net.parameters()) / 1e6
        images = against(name, OURS) * flops[OURS] / flops[name]  # images/s over ours, per round
        print(
            f"| {name} | {params:.3f} | {flops[name] / args.batch / 1e6:.1f} | {rate[name]:.0f} | "
            f"{images:.2f} | {gflops[name]:.0f} | {against(name, CONVS):.0%} | "
            f"{against(name, WIDE, WIDE_PARTS):.0%} |"
        )


if __name__ == "__main__":
    main()
