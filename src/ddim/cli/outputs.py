"""What the image commands write, and the checks made before any work: each output's extension
is known (an image format for pictures, .npz for data) and its folder writable, or the command stops with
one line naming the flag. Data is written before pictures, and `NpzWriter` streams a uint8
array into an npz batch by batch, so memory stays flat for any number of images."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from ddim.errors import BadValue, PathError
from ddim.images import check_image_path


def _writable_folder(path: Path, flag: str) -> None:
    folder = path
    while not folder.exists():  # the first folder that exists is where the new ones will go
        folder = folder.parent
    if not folder.is_dir():
        raise PathError(f"{flag} {path}: {folder} is a file, not a folder; choose another path")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PathError(f"{flag} {path}: cannot write in {folder}; choose a writable folder")


def check_file(path: str | os.PathLike | None, flag: str, suffix: str) -> Path | None:
    """`path` (None stays None) once its extension is known (".png": any image format PIL writes,
    by `ddim.images.check_image_path`; else `suffix`), it is not a folder, and its folder is
    writable; otherwise one line naming `flag`."""
    if path is None:
        return None
    path = Path(path)
    try:
        if suffix == ".png":
            check_image_path(path)
        elif path.suffix.lower() != suffix:
            raise BadValue(f"{path}: expected a file name ending in {suffix} (an {suffix} array file)")
        elif path.is_dir():
            raise BadValue(f"{path} is a folder; pass a file name")
    except BadValue as e:
        raise BadValue(f"{flag} {e}") from None
    _writable_folder(path.parent.resolve(), flag)
    return path


def check_folder(path: str | os.PathLike | None, flag: str) -> Path | None:
    """`path` (None stays None) once it is known to be, or to be creatable as, a writable folder."""
    if path is None:
        return None
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise PathError(f"{flag} {path} is a file; pass a folder")
    _writable_folder(path.resolve(), flag)
    return path


class NpzWriter:
    """An npz holding one array `name` of known shape, written in order batch by batch (the npy
    header first, then each batch's bytes, in an uncompressed zip member), under a temporary
    name renamed into place once every row is in: `np.load(path)[name]` reads it back."""

    def __init__(self, path: str | os.PathLike, shape: tuple[int, ...], dtype=np.uint8, name: str = "images"):
        self.path, self.shape, self.dtype = Path(path), tuple(shape), np.dtype(dtype)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.partial = self.path.with_name(f".{self.path.name}.partial")
        self.zip = zipfile.ZipFile(self.partial, "w", zipfile.ZIP_STORED, allowZip64=True)
        self.member = self.zip.open(f"{name}.npy", "w", force_zip64=True)
        header = {
            "descr": np.lib.format.dtype_to_descr(self.dtype),
            "fortran_order": False,
            "shape": self.shape,
        }
        np.lib.format.write_array_header_2_0(self.member, header)
        self.rows = 0

    def write(self, batch: np.ndarray) -> None:
        if batch.dtype != self.dtype or batch.shape[1:] != self.shape[1:]:
            raise ValueError(f"batch {batch.dtype} {batch.shape} does not fit {self.dtype} {self.shape}")
        self.member.write(np.ascontiguousarray(batch).tobytes())
        self.rows += len(batch)

    def close(self) -> Path:
        if self.rows != self.shape[0]:
            raise ValueError(f"wrote {self.rows} rows of {self.shape[0]}")
        self.member.close()
        self.zip.close()
        os.replace(self.partial, self.path)
        return self.path

    def abort(self) -> None:
        self.member.close()
        self.zip.close()
        self.partial.unlink(missing_ok=True)

    def __enter__(self) -> NpzWriter:
        return self

    def __exit__(self, kind, error, trace) -> None:
        if kind is not None:
            self.abort()


def png_name(seed: int, index: int) -> str:
    """The file of sample `index` of the run seeded with `seed` in `ddim sample --out-dir`."""
    return f"seed{seed}-{index:06d}.png"


def write_pngs(images: np.ndarray, folder: Path, seed: int, start: int) -> None:
    """uint8 images [N, H, W, C] as folder/seed{seed}-{start + i:06d}.png, one per image."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(
            folder / png_name(seed, start + i)
        )
