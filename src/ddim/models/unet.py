"""The denoising UNet and its frozen config; the network maps (x_t, t) to an image-shaped output.

Architecture after Ho et al. 2020 (DDPM UNet) with the refinements of Dhariwal & Nichol 2021
(ADM): scale-shift norm, multi-head attention, an extra residual block per up-sampling level.
The model knows nothing of noise schedules or of what its output means (eps, x0 or v).
"""

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ddim.errors import BadValue
from ddim.models.layers import (
    AttentionBlock,
    Downsample,
    ResBlock,
    Upsample,
    timestep_embedding,
    zero_init,
)


@dataclass(frozen=True)
class UNetConfig:
    """Hyper-parameters of `UNet`; JSON-safe through `dataclasses.asdict` and `from_dict`.

    channel_mult: channels at each resolution level are base_channels * mult; there are
        len(channel_mult) levels, so H and W must be divisible by 2 ** (len(channel_mult) - 1).
    attention_resolutions: the levels that get self-attention, given as downsampling factors
        relative to the input (1 = full resolution, 2 = half, ...), so one config fits any image
        size. None (the default) means the lowest resolution only. The middle block always
        has attention.
    num_heads / head_channels: heads per attention block; head_channels, when set, wins and
        the head count becomes channels // head_channels (ADM's num_head_channels).
    num_classes: when set, `forward` takes labels y in [0, num_classes); the extra index
        num_classes is the null label used for classifier-free guidance (and when y is None).
    self_condition: the input gets in_channels more channels for a previous x0 estimate.

    The defaults (0.68M parameters) suit 16x16 or 28x28 grayscale digits on a CPU: few channels
    at full resolution, where the convolutions cost the most, and more where the image is small.
    """

    in_channels: int = 1
    out_channels: int | None = None  # None: same as in_channels
    base_channels: int = 16
    channel_mult: tuple[int, ...] = (1, 2, 4)
    num_res_blocks: int = 1
    attention_resolutions: tuple[int, ...] | None = None
    num_heads: int = 4
    head_channels: int | None = None
    dropout: float = 0.0
    self_condition: bool = False
    num_classes: int | None = None
    groups: int = 8

    def __post_init__(self) -> None:
        # JSON turns tuples into lists; a frozen dataclass must set fields via object.__setattr__.
        object.__setattr__(self, "channel_mult", tuple(self.channel_mult))
        if self.attention_resolutions is not None:
            object.__setattr__(self, "attention_resolutions", tuple(self.attention_resolutions))
        if self.out_channels is None:
            object.__setattr__(self, "out_channels", self.in_channels)
        if not self.channel_mult or self.num_res_blocks < 1:
            raise BadValue("channel_mult must be non-empty and num_res_blocks >= 1")
        sizes = (self.in_channels, self.base_channels, self.groups, self.num_heads, self.head_channels or 1)
        if min(sizes) < 1:
            raise BadValue("in_channels, base_channels, groups, num_heads and head_channels must be >= 1")
        for mult in self.channel_mult:
            ch = self.base_channels * mult
            if ch % self.groups:
                raise BadValue(f"channels {ch} are not divisible by groups={self.groups}")
            if ch % self.heads(ch):
                raise BadValue(f"channels {ch} are not divisible by {self.heads(ch)} heads")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "UNetConfig":
        """Inverse of `dataclasses.asdict`, also after a JSON round trip."""
        return cls(**d)

    @property
    def downsample_factor(self) -> int:
        """The number H and W must be divisible by."""
        return 2 ** (len(self.channel_mult) - 1)

    def heads(self, channels: int) -> int:
        """Number of attention heads for a block with this many channels."""
        return channels // self.head_channels if self.head_channels else self.num_heads

    def has_attention(self, factor: int) -> bool:
        """Whether the level at this downsampling factor gets self-attention."""
        if self.attention_resolutions is None:
            return factor == self.downsample_factor
        return factor in self.attention_resolutions


class ResAttn(nn.Module):
    """A residual block, optionally followed by self-attention: one step of a UNet level."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, cfg: UNetConfig, attn: bool):
        super().__init__()
        self.res = ResBlock(in_ch, out_ch, emb_dim, cfg.groups, cfg.dropout)
        self.attn = AttentionBlock(out_ch, cfg.heads(out_ch), cfg.groups) if attn else None

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        x = self.res(x, emb)
        return x if self.attn is None else self.attn(x)


class Level(nn.Module):
    """The blocks at one resolution and the resampling that leaves it (None at the ends)."""

    def __init__(self, blocks: list[ResAttn], resample: nn.Module | None):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.resample = resample


class UNet(nn.Module):
    """DDPM / ADM UNet: `forward(x, t, x_self_cond=None, y=None)` -> tensor shaped like x
    (with out_channels channels). x [N, C, H, W]; t [N] (or one value for the whole batch) of
    int64 or float timesteps; x_self_cond like x; y [N] int64 labels."""

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = cfg = config
        base = cfg.base_channels
        emb_dim = 4 * base
        # Sinusoidal embedding, then a 2-layer MLP (DDPM); labels add a learned vector (ADM).
        self.time_mlp = nn.Sequential(nn.Linear(base, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.label_emb = nn.Embedding(cfg.num_classes + 1, emb_dim) if cfg.num_classes is not None else None
        in_ch = cfg.in_channels * (2 if cfg.self_condition else 1)
        self.conv_in = nn.Conv2d(in_ch, base, 3, padding=1)

        ch, factor, skips = base, 1, [base]
        self.down = nn.ModuleList()
        for i, mult in enumerate(cfg.channel_mult):
            blocks = []
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResAttn(ch, base * mult, emb_dim, cfg, cfg.has_attention(factor)))
                ch = base * mult
                skips.append(ch)
            last = i == len(cfg.channel_mult) - 1
            self.down.append(Level(blocks, None if last else Downsample(ch)))
            if not last:
                skips.append(ch)
                factor *= 2

        self.mid = nn.ModuleList(
            [ResAttn(ch, ch, emb_dim, cfg, attn=True), ResAttn(ch, ch, emb_dim, cfg, attn=False)]
        )

        self.up = nn.ModuleList()
        for i, mult in reversed(list(enumerate(cfg.channel_mult))):
            blocks = []
            attn = cfg.has_attention(factor)
            for _ in range(cfg.num_res_blocks + 1):  # one more than down, for the resample skip
                blocks.append(ResAttn(ch + skips.pop(), base * mult, emb_dim, cfg, attn))
                ch = base * mult
            out = base * cfg.channel_mult[i - 1] if i else ch  # narrow while upsampling
            self.up.append(Level(blocks, Upsample(ch, out) if i else None))
            ch = out
            factor //= 2

        self.norm_out = nn.GroupNorm(cfg.groups, ch)
        self.conv_out = zero_init(nn.Conv2d(ch, cfg.out_channels, 3, padding=1))

    def forward(
        self, x: Tensor, t: Tensor, x_self_cond: Tensor | None = None, y: Tensor | None = None
    ) -> Tensor:
        cfg = self.config
        height, width = x.shape[-2:]
        div = cfg.downsample_factor
        if height % div or width % div:
            raise BadValue(
                f"input of spatial shape {height}x{width} (H x W): H and W must be divisible "
                f"by {div} = 2**(len(channel_mult) - 1)"
            )
        if y is not None and self.label_emb is None:
            raise BadValue("labels y were given but the model has num_classes=None")
        if x_self_cond is not None and not cfg.self_condition:
            raise BadValue("x_self_cond was given but the model has self_condition=False")
        t = t.reshape(-1).expand(x.shape[0])
        emb = self.time_mlp(timestep_embedding(t, cfg.base_channels))
        if self.label_emb is not None:
            if y is None:
                y = torch.full((x.shape[0],), cfg.num_classes, dtype=torch.long, device=x.device)
            emb = emb + self.label_emb(y)
        emb = F.silu(emb)  # shared by every block's scale-shift projection (ADM emb_layers)
        if cfg.self_condition:
            x = torch.cat([x, torch.zeros_like(x) if x_self_cond is None else x_self_cond], 1)

        h = self.conv_in(x)
        hs = [h]
        for level in self.down:
            for block in level.blocks:
                h = block(h, emb)
                hs.append(h)
            if level.resample is not None:
                h = level.resample(h)
                hs.append(h)
        for block in self.mid:
            h = block(h, emb)
        for level in self.up:
            for block in level.blocks:
                h = block(torch.cat([h, hs.pop()], dim=1), emb)
            if level.resample is not None:
                h = level.resample(h)
        return self.conv_out(F.silu(self.norm_out(h)))
