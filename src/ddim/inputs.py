"""Images and inpainting masks as a user hands them to `ddim.load(...)`'s pipeline, read into what
the model takes: float32 [N, C, H, W] in [-1, 1] at the model's size and channels.

Images: a file or folder path (decoded by `ddim.data.load_images`, the one decoder), a PIL image,
a uint8 array [H, W], [H, W, C] or [N, H, W, C], a float tensor [C, H, W] or [N, C, H, W] in
[-1, 1], or a list of these. Masks (1 = generate, 0 = keep; white in a PNG = generate, as in
diffusers): a PNG of the images' stored size, a folder with one such PNG per image (same file
names), a uint8 array (255 = generate) or a tensor at the model's size.
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ddim.data import fit_size, load_images, match_channels, normalize, read_image
from ddim.data.decode import read_header
from ddim.errors import BadFile, BadValue, MissingFile

ImagesIn = str | os.PathLike | Tensor | np.ndarray | Image.Image | Sequence[Any]
Read = tuple[Tensor, list[str], list[tuple[int, int]]]  # images, names, stored (height, width)


def stored_size(file: Path) -> tuple[int, int]:
    """(height, width) of an image file, from its header."""
    width, height = read_header(file)[1]
    return height, width


def _from_tensor(x: Tensor, shape: tuple[int, int, int]) -> Read:
    if not torch.isfinite(x).all():
        raise BadValue("the images hold NaN or infinite values")
    c, h, w = shape
    sizes = [tuple(x.shape[-2:])] * len(x)
    return fit_size(match_channels(x, c), (h, w)), [f"image-{i}" for i in range(len(x))], sizes


def read_images(images: ImagesIn, shape: tuple[int, int, int]) -> Read:
    """(images [N, C, H, W] in [-1, 1] for a model of image shape (C, H, W), their names, their
    stored (height, width)); see the module docstring for the forms `images` may take."""
    c, h, w = shape
    if isinstance(images, (str, os.PathLike)):
        x, names = load_images(images, size=(h, w), channels=c)
        root = Path(images)
        files = [root / name for name in names] if root.is_dir() else [root]
        return x, names, [stored_size(f) for f in files]
    if isinstance(images, Image.Image):
        buffer = io.BytesIO()
        images.save(buffer, "PNG")  # through the one decoder: alpha on white, 16-bit grey scaled
        x = normalize(read_image(buffer, c)).unsqueeze(0)
        return fit_size(x, (h, w)), ["image-0"], [tuple(x.shape[-2:])]
    if isinstance(images, (list, tuple)):
        if not images:
            raise BadValue("no images given")
        parts = [read_images(item, shape) for item in images]
        names = [n for p in parts for n in p[1]]
        if len(set(names)) < len(names):
            names = [f"image-{i}" for i in range(len(names))]
        return torch.cat([p[0] for p in parts]), names, [s for p in parts for s in p[2]]
    if isinstance(images, np.ndarray):
        if images.dtype != np.uint8:
            raise BadValue(
                f"image arrays must be uint8 (0..255), got {images.dtype}; or pass a float tensor in [-1, 1]"
            )
        array = images[..., None] if images.ndim == 2 else images
        array = array[None] if array.ndim == 3 else array
        if array.ndim != 4:
            raise BadValue(f"image arrays are [H, W], [H, W, C] or [N, H, W, C], got {images.shape}")
        return _from_tensor(
            normalize(torch.from_numpy(np.ascontiguousarray(array))).permute(0, 3, 1, 2), shape
        )
    if isinstance(images, Tensor):
        x = images[None] if images.ndim == 3 else images
        if x.ndim != 4 or not x.is_floating_point():
            raise BadValue(
                f"image tensors are float [N, C, H, W] in [-1, 1], got {x.dtype} {tuple(images.shape)}"
            )
        return _from_tensor(x.detach().float().cpu(), shape)
    raise BadValue(
        f"cannot read images from a {type(images).__name__}; pass paths, PIL images, uint8 arrays or "
        "[-1, 1] tensors"
    )


def read_mask(
    mask: ImagesIn, shape: tuple[int, int, int], names: list[str], sizes: list[tuple[int, int]]
) -> Tensor:
    """The mask [N or 1, 1, H, W] (1.0 = generate, 0.0 = keep) for images with these names and
    stored sizes (from `read_images`); a mask file of another size than its image is refused."""
    _, h, w = shape
    if isinstance(mask, (str, os.PathLike)):
        path = Path(mask)
        if not path.exists():
            raise MissingFile(f"{path} does not exist; pass a mask PNG or a folder of masks")
        files = [path / name for name in names] if path.is_dir() else [path] * len(names)
        for file, name, size in zip(files, names, sizes):
            if not file.is_file():
                raise MissingFile(
                    f"{file} does not exist: a mask folder needs one mask per image, with its file name"
                )
            if stored_size(file) != size:
                mh, mw = stored_size(file)
                raise BadFile(
                    f"mask {file} is {mw}x{mh} but image {name} is {size[1]}x{size[0]} (width x height); "
                    "pass a mask of the image's size"
                )
        masks = torch.cat([load_images(f, size=(h, w), channels=1)[0] for f in dict.fromkeys(files)])
        return (masks > 0).float()  # white (255 -> 1.0) generates; resizing blurs edges, cut at mid-grey
    m = torch.from_numpy(np.asarray(mask)) if isinstance(mask, np.ndarray) else mask
    if not isinstance(m, Tensor):
        raise BadValue(
            f"cannot read a mask from a {type(mask).__name__}; pass a PNG, a folder, an array or a tensor"
        )
    m = (m.float() / 255 if m.dtype == torch.uint8 else m.float()) > 0.5
    m = m.reshape(-1, 1, *m.shape[-2:]) if m.ndim < 4 else m
    if tuple(m.shape[-2:]) != (h, w):
        raise BadValue(f"the mask is {m.shape[-1]}x{m.shape[-2]} but the model's images are {w}x{h}")
    return m.float()
