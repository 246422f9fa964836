"""The IDX format of MNIST-style datasets, and a folder of IDX files as uint8 images and labels.

Format: big-endian int32 magic 0x0000080N (N = the number of dimensions; 0x803 images, 0x801
labels), then one int32 per dimension, then the bytes in row-major order; gzipped when *.gz.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ddim.errors import BadFile, MissingFile

IDX_STEMS = ("{}-images-idx3-ubyte", "{}-labels-idx1-ubyte")


def read_idx(path: str | os.PathLike, ndim: int) -> np.ndarray:
    """Read an IDX file of unsigned bytes with `ndim` dimensions (gzipped if named *.gz)."""
    path = Path(path)
    if not path.is_file():
        raise MissingFile(f"{path} does not exist; pass an MNIST-style IDX file")
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as e:
        reason = " ".join(str(e).split()) or type(e).__name__
        raise BadFile(f"cannot read {path} ({reason}); the file is damaged, download it again") from e
    magic, header = 0x800 | ndim, 4 + 4 * ndim
    if len(data) < header or int.from_bytes(data[:4], "big") != magic:
        raise BadFile(
            f"{path} is not an IDX file of {ndim}-D unsigned bytes: it starts with "
            f"{data[:4].hex()}, expected {magic:08x}; is it the right file?"
        )
    dims = tuple(int(d) for d in np.frombuffer(data, ">i4", ndim, offset=4))
    if len(data) - header != math.prod(dims):
        raise BadFile(
            f"{path}: header says shape {dims} ({math.prod(dims)} bytes) but the file holds "
            f"{len(data) - header}; the file is truncated or damaged, download it again"
        )
    return np.frombuffer(data, np.uint8, offset=header).reshape(dims).copy()


def _idx_path(root: Path, stem: str) -> Path | None:
    return next((p for p in (root / stem, root / f"{stem}.gz") if p.is_file()), None)


def is_idx_folder(root: Path) -> bool:
    """Whether `root` holds any {train,t10k}-{images,labels} IDX file."""
    return any(_idx_path(root, s.format(p)) for p in ("train", "t10k") for s in IDX_STEMS)


def load_idx_folder(root: Path, split: str) -> tuple[Tensor, Tensor]:
    """uint8 images [N, 1, H, W] and labels of an MNIST-style folder."""
    prefix = "train" if split == "train" else "t10k"
    files = [_idx_path(root, stem.format(prefix)) for stem in IDX_STEMS]
    if None in files:
        raise MissingFile(
            f"{root} has no {IDX_STEMS[files.index(None)].format(prefix)}[.gz]; an MNIST-style "
            "folder holds {train,t10k}-images-idx3-ubyte and {train,t10k}-labels-idx1-ubyte[.gz]"
        )
    images, labels = read_idx(files[0], 3), read_idx(files[1], 1)
    if len(images) != len(labels) or len(images) == 0:
        raise BadFile(
            f"{files[0]} holds {len(images)} images and {files[1]} {len(labels)} labels; "
            "use a non-empty pair from the same release"
        )
    return torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels)
