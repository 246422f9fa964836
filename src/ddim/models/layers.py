"""Building blocks of the UNet: timestep embedding, residual block, attention, resampling.

Design sources: Ho et al. 2020 (DDPM UNet: residual blocks, sinusoidal timestep embedding,
self-attention at low resolution); Dhariwal & Nichol 2021 (ADM: scale-shift norm, i.e. AdaGN,
multi-head attention, zero-initialised output layers). Every block works on [N, C, H, W].
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def timestep_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Sinusoidal embedding [N, dim] of (possibly fractional) timesteps t [N] (DDPM / ADM)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def zero_init(module: nn.Module) -> nn.Module:
    """Zero a layer's parameters so its residual branch starts as the identity (ADM)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """Residual block with the embedding applied as scale-shift after the second GroupNorm.

    h = conv1(SiLU(GN(x)));  h = GN(h) * (1 + scale) + shift  (ADM "use_scale_shift_norm");
    out = skip(x) + conv2(dropout(SiLU(h))).  The second GroupNorm has no affine parameters of
    its own: the per-example scale and shift take their place (as in DiT's adaLN).
    """

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, groups: int, dropout: float):
        super().__init__()
        self.groups = groups
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_init(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        """x [N, in_ch, H, W]; emb [N, emb_dim], already passed through SiLU by the caller."""
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
        h = torch.addcmul(shift, F.group_norm(h, self.groups), scale + 1)
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Multi-head self-attention over the H*W positions, with a residual connection (ADM)."""

    def __init__(self, channels: int, num_heads: int, groups: int):
        super().__init__()
        self.num_heads = num_heads
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = zero_init(nn.Linear(channels, channels))

    def forward(self, x: Tensor) -> Tensor:
        n, c, height, width = x.shape
        h = self.norm(x).flatten(2).transpose(1, 2)  # [N, L, C]
        q, k, v = self.qkv(h).view(n, -1, 3, self.num_heads, c // self.num_heads).unbind(2)
        h = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
        h = self.proj(h.transpose(1, 2).reshape(n, -1, c))  # [N, L, C]
        return x + h.transpose(1, 2).reshape(n, c, height, width)


class Downsample(nn.Module):
    """Halve H and W with a stride-2 3x3 convolution (DDPM / ADM conv_resample)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Double H and W: nearest-neighbour upsampling, then a 3x3 convolution (DDPM / ADM).

    The convolution may narrow the channels to the next level's width (as lucidrains'
    denoising-diffusion-pytorch does), which saves about a tenth of a CPU training step.
    """

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
