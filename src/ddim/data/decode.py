"""Image files: the one decoder every path uses (training's image folders, `ddim invert`, `edit`,
`inpaint`, `eval`), a folder as a dataset (`ImageFolder`), and `load_images` for a file or a
folder at once.

Decoding: transparency is composited on white; 16-bit grey is scaled to 8 bits (not clipped);
colour becomes luma for one channel (ITU-R 601-2, as PIL's convert("L")); grey is repeated for
three. Resizing covers the target keeping the aspect ratio, then centre-crops (`fit_size`).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageMode
from torch import Tensor
from torch.utils.data import Dataset

from ddim.data.pixels import Size, as_hw, finish, normalize
from ddim.errors import BadFile, BadValue, MissingFile

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
# what PIL raises for a file it cannot read: damaged, truncated, not an image, or too large
_PIL_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


def _bad(path: Path, what: str, e: BaseException) -> BadFile:
    reason = " ".join(str(e).split()) or type(e).__name__  # one line, whatever PIL says
    return BadFile(f"cannot {what} image {path} ({reason}); remove or replace the file")


def read_header(path: Path) -> tuple[str, tuple[int, int]]:
    """(mode, (width, height)) of an image, reading only its header."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                return im.mode, im.size
    except _PIL_ERRORS as e:
        raise _bad(path, "read", e) from e


def is_grey(mode: str) -> bool:
    """Whether an image of this PIL mode holds grey levels only (L, LA, 16-bit I;16, ...)."""
    return mode.startswith("I") or ImageMode.getmode(mode).basemode in ("L", "1")


def read_image(path: Path, channels: int) -> Tensor:
    """Decode an image to uint8 [channels, H, W]: transparency composited on white, 16-bit grey
    scaled to 8 bits (65535 -> 255)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if im.mode.startswith("I"):  # 16-bit grey, which convert("L") would clip at 255
                    im = Image.fromarray((np.asarray(im).clip(0, 65535) // 257).astype(np.uint8))
                if "A" in im.getbands() or "transparency" in im.info:
                    im = im.convert("RGBA")
                    im = Image.alpha_composite(Image.new("RGBA", im.size, "white"), im)
                pixels = np.asarray(im.convert("L" if channels == 1 else "RGB"))
    except _PIL_ERRORS as e:
        raise _bad(path, "decode", e) from e
    return torch.from_numpy(pixels.reshape(*pixels.shape[:2], channels).copy()).permute(2, 0, 1)


def scan_folder(root: Path) -> tuple[list[Path], list[int], list[str]]:
    """(files, labels, class names) of an image folder, hidden paths skipped; see `ImageFolder`."""
    files = sorted(
        p
        for p in root.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    tops = [f.relative_to(root).parts[0] for f in files]
    classes = sorted(set(tops)) if all(f.parent != root for f in files) else []
    if len(classes) < 2:
        return files, [-1] * len(files), []
    return files, [classes.index(t) for t in tops], classes


class ImageFolder(Dataset):
    """Images (png, jpg, jpeg, webp) found recursively under `root`, decoded on access.

    Labels: when `root` holds no images itself but two or more sub-folders with images, each
    sub-folder is a class (label = index in sorted order, names in `.classes`); otherwise every
    label is -1. `channels=None` takes 1 if the first image is greyscale, else 3. `size=None`
    keeps the stored size, which must then be the same for every image. Every file's header is
    read here, so an unreadable file fails now, naming it; a file whose header reads but whose
    pixels do not fails in `__getitem__`, also naming it.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        size: Size | None = None,
        channels: int | None = None,
        flip: bool = False,
    ) -> None:
        root = Path(root)
        if not root.is_dir():
            raise MissingFile(f"{root} does not exist or is not a folder")
        self.root = root
        self.files, labels, self.classes = scan_folder(root)
        if not self.files:
            raise MissingFile(
                f"no images found in {root}; supported: {', '.join(s[1:] for s in IMAGE_SUFFIXES)}"
            )
        self.labels = torch.tensor(labels)
        self.num_classes = len(self.classes) or None
        self.size = as_hw(size)
        self.flip = flip
        headers = [read_header(f) for f in self.files]
        self.channels = channels or (1 if is_grey(headers[0][0]) else 3)
        sizes = [f"{w}x{h}" for _, (w, h) in headers]
        self.stored_size = tuple(reversed(headers[0][1]))  # (height, width) of the first image
        if self.size is None and len(set(sizes)) > 1:
            i = next(i for i, wh in enumerate(sizes) if wh != sizes[0])
            raise BadFile(
                f"{self.files[i]} is {sizes[i]} but {self.files[0]} is {sizes[0]} (width x height);"
                " pass size=... to resize every image to one size"
            )

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        image = normalize(read_image(self.files[i], self.channels))
        return finish(image, self.size, None, self.flip), int(self.labels[i])


def load_images(
    path: str | os.PathLike, size: Size | None = None, channels: int | None = None
) -> tuple[Tensor, list[str]]:
    """Every image of a folder (recursively, as `ImageFolder`), or one image file, decoded the
    same way: (float32 [N, C, H, W] in [-1, 1], the file names: relative to the folder, or the
    file's own name). `size=None` keeps the stored size (one size for all); `channels=None`
    takes 1 if the first image is greyscale, else 3."""
    path = Path(path).expanduser()
    if channels not in (None, 1, 3):
        raise BadValue(f"channels must be 1, 3 or None (keep the images'), got {channels!r}")
    if path.is_dir():
        folder = ImageFolder(path, size, channels)
        images = torch.stack([folder[i][0] for i in range(len(folder))])
        return images, [f.relative_to(path).as_posix() for f in folder.files]
    if not path.exists():
        raise MissingFile(f"{path} does not exist; pass an image file or a folder of images")
    mode, _ = read_header(path)
    pixels = read_image(path, channels or (1 if is_grey(mode) else 3))
    return finish(normalize(pixels), as_hw(size), None, False).unsqueeze(0), [path.name]
