"""The images to score, read a batch at a time: a tensor, a folder of images, or an .npz.

`open_samples` checks the input and returns something that `embed` (`ddim.evaluation.features`)
reads in batches, so scoring 50,000 samples holds one batch of pixels at a time: a tensor as it
is, a folder as an `ImageFolder` (decoded on access), an .npz as `NpzImages`, which reads rows
straight from the array's member of the zip file. `load_samples` reads everything into one
tensor, for callers that want the pixels.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ddim.data import ImageFolder, load_images, normalize
from ddim.errors import BadFile, BadValue, MissingFile

NPZ_KEYS = ("images", "samples")  # `ddim sample --npz` writes "images"
_READ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile)


class NpzImages:
    """The images array of an .npz, read in slices without loading the rest: uint8 [N, H, W, C]
    or [N, H, W] (`ddim.data.to_uint8`'s layout), or floats [N, C, H, W] in [-1, 1]. The array
    is named "images" or "samples", or is the only one. `images[a:b]` is float32 [b - a, C, H, W]
    in [-1, 1]; slices read in order stream through the file once."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        try:
            with zipfile.ZipFile(self.path) as archive:
                names = [n[: -len(".npy")] for n in archive.namelist() if n.endswith(".npy")]
                chosen = [k for k in NPZ_KEYS if k in names] or names
                if len(chosen) != 1:
                    expected = "expected 'images', 'samples' or a single array"
                    raise BadFile(f"{self.path} holds {names}; {expected}")
                self.member = f"{chosen[0]}.npy"
                with archive.open(self.member) as f:
                    shape, fortran, dtype = _read_header(f)
                    self._data_offset = f.tell()
        except _READ_ERRORS as e:
            raise _unreadable(self.path, e) from e
        if fortran or dtype.hasobject:
            raise BadFile(f"{self.path}: its array is not a plain C-ordered array; save it with np.savez")
        self._uint8 = dtype == np.uint8
        if self._uint8 and len(shape) == 3:
            shape = (*shape, 1)
        if len(shape) != 4 or not (self._uint8 or dtype.kind == "f"):
            raise BadValue(f"samples must be images [N, C, H, W], got {dtype} of shape {shape}")
        self.dtype, self.stored_shape = dtype, shape
        self.shape = (shape[0], shape[3], shape[1], shape[2]) if self._uint8 else tuple(shape)
        self._archive = self._file = None
        self._row = 0

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: slice) -> Tensor:
        start, stop, step = rows.indices(len(self))
        if step != 1:
            raise ValueError("NpzImages reads contiguous slices only")
        row_bytes = int(np.prod(self.stored_shape[1:])) * self.dtype.itemsize
        try:
            if self._file is None or self._row != start:  # not where the last slice ended: seek
                self.close()
                self._archive = zipfile.ZipFile(self.path)
                self._file = self._archive.open(self.member)
                self._file.seek(self._data_offset + start * row_bytes)
            data = self._file.read((stop - start) * row_bytes)
            if len(data) != (stop - start) * row_bytes:
                raise EOFError(f"it ends before row {stop} of {len(self)}")
        except _READ_ERRORS as e:
            self.close()
            raise _unreadable(self.path, e) from e
        self._row = stop
        array = np.frombuffer(data, self.dtype).reshape(stop - start, *self.stored_shape[1:])
        x = torch.from_numpy(array.astype(self.dtype.newbyteorder("=")))  # a copy, in this CPU's byte order
        return normalize(x).movedim(-1, 1) if self._uint8 else x.float()

    def close(self) -> None:
        if self._archive is not None:
            self._file.close()
            self._archive.close()
        self._archive = self._file = None


def _read_header(f) -> tuple[tuple[int, ...], bool, np.dtype]:
    """(shape, fortran order, dtype) of an .npy stream, leaving it at the first byte of data."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    return np.lib.format.read_array_header_2_0(f)


def _unreadable(path: Path, e: BaseException) -> BadFile:
    if isinstance(e, BadFile):
        return e
    reason = " ".join(str(e).split()) or type(e).__name__
    return BadFile(f"cannot read {path} as an .npz ({reason}); pass one written by ddim sample --npz")


def open_samples(samples: Tensor | str | os.PathLike) -> Tensor | ImageFolder | NpzImages:
    """Samples to score, checked but not loaded: a float tensor [N, C, H, W] in [-1, 1] (on the
    CPU), a folder of images of one size (`ImageFolder`), or an .npz (`NpzImages`)."""
    if isinstance(samples, Tensor):
        x = samples.detach().cpu()
        if x.ndim != 4 or not x.is_floating_point():
            raise BadValue(f"samples must be images [N, C, H, W], got {x.dtype} of shape {tuple(x.shape)}")
        return x.float()
    if Path(samples).is_dir():
        return ImageFolder(samples)
    if not Path(samples).is_file():
        raise MissingFile(f"{samples} does not exist; pass an .npz (ddim sample --npz) or a folder of images")
    return NpzImages(samples)


def sample_shape(images: Tensor | ImageFolder | NpzImages) -> tuple[int, int, int]:
    """(C, H, W) of the images `open_samples` returned."""
    if isinstance(images, ImageFolder):
        return (images.channels, *images.stored_size)
    return tuple(images.shape[1:])


def load_samples(samples: Tensor | str | os.PathLike) -> Tensor:
    """Every sample in one float32 tensor [N, C, H, W] in [-1, 1] (see `open_samples`)."""
    if not isinstance(samples, Tensor) and Path(samples).is_dir():
        return load_images(samples)[0]
    images = open_samples(samples)
    if isinstance(images, Tensor):
        return images
    try:
        return images[0 : len(images)]
    finally:
        images.close()
