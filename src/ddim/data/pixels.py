"""Pixel conversion: stored pixels <-> the model's [-1, 1] range, resizing, channel conversion and
random flips. The only place that knows the [-1, 1] convention."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ddim.errors import BadValue

LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, as PIL's convert("L")

Size = int | tuple[int, int]


def normalize(x: Tensor | np.ndarray) -> Tensor:
    """uint8 pixels (0..255) or floats in [0, 1] -> float32 in [-1, 1]; 0 -> -1, 255 -> 1."""
    x = torch.as_tensor(x)
    if x.dtype == torch.uint8:
        return x.float() / 127.5 - 1.0
    return x.float() * 2.0 - 1.0


def denormalize(x: Tensor) -> Tensor:
    """Floats in [-1, 1] -> uint8 of the same shape (rounded, clipped); inverts `normalize`."""
    return ((x.detach().float() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)


def to_uint8(x: Tensor) -> np.ndarray:
    """Images [N, C, H, W] (or [C, H, W]) in [-1, 1] -> uint8 numpy [N, H, W, C] for saving."""
    return denormalize(x).movedim(-3, -1).cpu().numpy()


def random_flip(
    images: Tensor, generator: torch.Generator | None = None, rank_world: tuple[int, int] = (0, 1)
) -> Tensor:
    """Flip each image of a batch [N, ..., W] left-right with probability 1/2. With rank_world = (r, k)
    the batch is the r-th of k shares of a global batch, and the draws are the global batch's."""
    n, (rank, world) = images.shape[0], rank_world
    flip = torch.rand(n * world, generator=generator)[rank * n : (rank + 1) * n] < 0.5
    flip = flip.to(images.device).view(-1, *[1] * (images.ndim - 1))
    return torch.where(flip, images.flip(-1), images)


def as_hw(size: Size | None) -> tuple[int, int] | None:
    """A size given as one int or (height, width) -> (height, width); None stays None."""
    if size is None:
        return None
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if len(hw) != 2 or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in hw):
        raise BadValue(f"size must be a positive int or (height, width), got {size!r}")
    return hw


def fit_size(images: Tensor, size: tuple[int, int] | None) -> Tensor:
    """Resize [N, C, h, w] to cover `size` keeping the aspect ratio, then centre-crop to it
    (bilinear, antialiased)."""
    h, w = images.shape[-2:]
    if size is None or (h, w) == size:
        return images
    height, width = size
    scale = max(height / h, width / w)
    nh, nw = max(height, round(h * scale)), max(width, round(w * scale))
    images = F.interpolate(images, (nh, nw), mode="bilinear", antialias=True, align_corners=False)
    top, left = (nh - height) // 2, (nw - width) // 2
    return images[..., top : top + height, left : left + width].clamp(-1.0, 1.0)


def match_channels(images: Tensor, channels: int | None) -> Tensor:
    """Convert [..., C, H, W] in [-1, 1] to `channels` (1 or 3): grey is repeated, colour becomes
    luma (ITU-R 601-2)."""
    c = images.shape[-3]
    if channels is None or channels == c:
        return images
    if (c, channels) == (1, 3):
        return images.repeat_interleave(3, dim=-3)
    if (c, channels) == (3, 1):
        luma = torch.tensor(LUMA, dtype=images.dtype, device=images.device)
        return torch.einsum("...chw,c->...hw", images, luma).unsqueeze(-3)
    raise BadValue(f"cannot convert images with {c} channels to {channels}; use 1 or 3")


def finish(image: Tensor, size: tuple[int, int] | None, channels: int | None, flip: bool) -> Tensor:
    """One image [C, H, W] in [-1, 1] -> resized, channel-converted and maybe flipped."""
    image = fit_size(match_channels(image, channels).unsqueeze(0), size)
    return (random_flip(image) if flip else image)[0]
