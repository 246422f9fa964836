"""Writing images for people to look at: a grid of samples, and a strip of sampling trajectories.

Pixels go through `ddim.data.to_uint8` (the one place that knows the [-1, 1] range). Tiny images
are enlarged with nearest-neighbour upscaling so that a grid of 8x8 digits is visible.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ddim.data import to_uint8
from ddim.errors import BadValue

PAD = 1  # pixels between and around the tiles
PAD_VALUE = 255  # white
MIN_TILE = 64  # auto-upscaling enlarges tiles to at least this many pixels high
_MODES = {1: "L", 3: "RGB", 4: "RGBA"}


def auto_scale(height: int) -> int:
    """The nearest-neighbour factor that makes a tile at least MIN_TILE pixels high (1 if it is)."""
    return max(1, math.ceil(MIN_TILE / height))


def grid_array(images: Tensor, nrow: int | None = None, scale: int | None = None) -> np.ndarray:
    """Images [N, C, H, W] in [-1, 1] -> a uint8 array [rows, cols, C] tiling them `nrow` per row
    (default ceil(sqrt(N))), each enlarged `scale` times (default `auto_scale(H)`), PAD apart."""
    if images.ndim != 4 or images.shape[1] not in _MODES or len(images) == 0:
        raise BadValue(
            f"images must be a non-empty [N, C, H, W] batch with C in {sorted(_MODES)}, "
            f"got shape {tuple(images.shape)}"
        )
    n, c, h, w = images.shape
    scale = auto_scale(h) if scale is None else scale
    ncol = nrow or math.ceil(math.sqrt(n))
    if ncol < 1 or scale < 1:
        raise BadValue(f"nrow and scale must be at least 1, got nrow={nrow}, scale={scale}")
    nrows = math.ceil(n / ncol)
    tiles = to_uint8(images).repeat(scale, axis=1).repeat(scale, axis=2)  # [N, H s, W s, C]
    th, tw = h * scale, w * scale
    grid = np.full((nrows * (th + PAD) + PAD, ncol * (tw + PAD) + PAD, c), PAD_VALUE, np.uint8)
    for i, tile in enumerate(tiles):
        top, left = PAD + (i // ncol) * (th + PAD), PAD + (i % ncol) * (tw + PAD)
        grid[top : top + th, left : left + tw] = tile
    return grid


def check_image_path(path: str | os.PathLike) -> Path:
    """Refuse, before any work, an output path whose extension no image writer knows, or that is
    a folder; the error is one line naming the path and the fix."""
    path = Path(path)
    Image.init()
    if path.suffix.lower() not in Image.registered_extensions():
        raise BadValue(f"{path}: unknown image extension {path.suffix or '(none)'!r}; name it *.png")
    if path.is_dir():
        raise BadValue(f"{path} is a folder; pass a file name such as {path / 'grid.png'}")
    return path


def _write(grid: np.ndarray, path: str | os.PathLike) -> Path:
    path = check_image_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = _MODES[grid.shape[-1]]
    Image.fromarray(grid[..., 0] if mode == "L" else grid, mode).save(path)
    return path


def save_grid(
    images: Tensor, path: str | os.PathLike, nrow: int | None = None, scale: int | None = None
) -> Path:
    """Save images [N, C, H, W] in [-1, 1] (C = 1, 3 or 4) as one PNG grid; see `grid_array`.
    The file is (rows (H s + 1) + 1) x (nrow (W s + 1) + 1) pixels."""
    return _write(grid_array(images, nrow, scale), path)


def save_trajectory_strip(
    xs: Tensor,
    x0s: Tensor,
    path: str | os.PathLike,
    max_samples: int = 4,
    max_columns: int = 10,
    scale: int | None = None,
) -> Path:
    """Save how sampling went, from `ddim.sample(..., return_all_timesteps=True)`: xs [S+1, N, C, H, W]
    (x_T then x after each step) and x0s [S, N, C, H, W] (the x0 estimate at each step).

    For each of the first `max_samples` samples, two rows: x_t entering step i, and the x0
    estimate made from it, for up to `max_columns` steps i spread evenly from the first (pure
    noise) to the last (whose x0 estimate is the sample)."""
    steps = x0s.shape[0]
    if xs.ndim != 5 or x0s.ndim != 5 or xs.shape[0] != steps + 1 or xs.shape[1:] != x0s.shape[1:]:
        raise BadValue(
            "expected xs [S+1, N, C, H, W] and x0s [S, N, C, H, W], "
            f"got {tuple(xs.shape)} and {tuple(x0s.shape)}"
        )
    columns = min(max_columns, steps)
    idx = torch.linspace(0, steps - 1, columns).round().long()
    rows = []
    for j in range(min(max_samples, xs.shape[1])):
        rows += [xs[idx, j], x0s[idx, j]]
    return _write(grid_array(torch.cat(rows), nrow=columns, scale=scale), path)
