"""Datasets and pixel normalisation: the only place that knows how images are stored.

Owns the conversion between stored pixels and the model's range, `normalize` (uint8 or [0, 1]
-> [-1, 1]), `denormalize` (back to uint8) and `to_uint8` (for saving), and every dataset:
the built-in 8x8 digits, a folder of images, a folder of MNIST-style IDX files, torchvision sets
by name, and any `torch.utils.data.Dataset` through `WrappedDataset`. `load_dataset` is the one
entry point; `DataConfig` + `build_dataset` are its saved, JSON-round-trippable form.

The contract every dataset here keeps:

- `dataset[i]` is `(image, label)`: `image` a float32 tensor [C, H, W] with values in [-1, 1],
  `label` an int in [0, num_classes), or -1 when the dataset has no labels;
- `dataset.num_classes` is an int, or None when there are no labels;
- in-memory sets (`TensorImageDataset`: digits, IDX, torchvision) also expose `.images`
  [N, C, H, W] in [-1, 1] and `.labels` [N] int64, so a trainer can index whole batches; those
  are stored unflipped: with `dataset.flip` set, apply `random_flip` to each batch.

Resizing (`size`) scales an image, keeping its aspect ratio, until it covers the target, then
centre-crops it (bilinear, antialiased). Channels are converted to `channels` (1 or 3): grey
is repeated, colour becomes luma (ITU-R 601-2), and transparent images are composited on white.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import math
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageMode
from torch import Tensor
from torch.utils.data import Dataset

from ddim.errors import BadValue, MissingFile

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
# name -> (torchvision class, number of classes); each stores its images as one uint8 array
_TORCHVISION = {
    "mnist": ("MNIST", 10),
    "fashion-mnist": ("FashionMNIST", 10),
    "kmnist": ("KMNIST", 10),
    "cifar10": ("CIFAR10", 10),
    "cifar100": ("CIFAR100", 100),
}
DATASET_NAMES = ("digits", *_TORCHVISION)
_IDX_STEMS = ("{}-images-idx3-ubyte", "{}-labels-idx1-ubyte")
_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, as PIL's convert("L")

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
    images: Tensor, generator: torch.Generator | None = None, shard: tuple[int, int] = (0, 1)
) -> Tensor:
    """Flip each image of a batch [N, ..., W] left-right with probability 1/2. With shard = (r, k)
    the batch is the r-th of k shares of a global batch, and the draws are the global batch's."""
    n, (rank, world) = images.shape[0], shard
    flip = torch.rand(n * world, generator=generator)[rank * n : (rank + 1) * n] < 0.5
    flip = flip.to(images.device).view(-1, *[1] * (images.ndim - 1))
    return torch.where(flip, images.flip(-1), images)


def _as_hw(size: Size | None) -> tuple[int, int] | None:
    if size is None:
        return None
    hw = (size, size) if isinstance(size, int) else tuple(size)
    if len(hw) != 2 or not all(isinstance(s, int) and s > 0 for s in hw):
        raise BadValue(f"size must be a positive int or (height, width), got {size!r}")
    return hw


def fit_size(images: Tensor, size: tuple[int, int] | None) -> Tensor:
    """Resize [N, C, h, w] to cover `size` keeping the aspect ratio, then centre-crop to it."""
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
    """Convert [..., C, H, W] in [-1, 1] to `channels` (1 or 3) channels."""
    c = images.shape[-3]
    if channels is None or channels == c:
        return images
    if (c, channels) == (1, 3):
        return images.repeat_interleave(3, dim=-3)
    if (c, channels) == (3, 1):
        luma = torch.tensor(_LUMA, dtype=images.dtype, device=images.device)
        return torch.einsum("...chw,c->...hw", images, luma).unsqueeze(-3)
    raise BadValue(f"cannot convert images with {c} channels to {channels}")


@dataclass(eq=False)
class TensorImageDataset(Dataset):
    """A dataset held in memory: `images` [N, C, H, W] in [-1, 1], `labels` [N] (-1: none)."""

    images: Tensor
    labels: Tensor | None = None
    num_classes: int | None = None
    flip: bool = False

    def __post_init__(self) -> None:
        if self.images.ndim != 4:
            raise BadValue(f"images must be [N, C, H, W], got shape {tuple(self.images.shape)}")
        n = len(self.images)
        labels = torch.full((n,), -1) if self.labels is None else self.labels
        if labels.shape != (n,):
            raise BadValue(f"{n} images but labels of shape {tuple(labels.shape)}")
        self.images, self.labels = self.images.float(), labels.long()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        image = self.images[i]
        if self.flip:
            image = random_flip(image.unsqueeze(0))[0]
        return image, int(self.labels[i])


@dataclass(eq=False)
class WrappedDataset(Dataset):
    """Any map-style dataset under the contract, resized, converted and flipped like the rest.

    Its items may be an image, or a tuple (image,) or (image, label, ...); an image is
    a tensor or array [C, H, W], uint8 (normalised here) or float (taken to be in [-1, 1]).
    """

    dataset: Dataset
    num_classes: int | None = None
    size: Size | None = None
    channels: int | None = None
    flip: bool = False

    def __post_init__(self) -> None:
        self.size = _as_hw(self.size)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        item = self.dataset[i]
        item = item if isinstance(item, tuple | list) else (item,)
        image, label = torch.as_tensor(item[0]), item[1] if len(item) > 1 else -1
        image = normalize(image) if image.dtype == torch.uint8 else image.float()
        return _finish(image, self.size, self.channels, self.flip), int(label)


def _finish(image: Tensor, size: tuple[int, int] | None, channels: int | None, flip: bool) -> Tensor:
    """One image [C, H, W] in [-1, 1] -> resized, channel-converted and maybe flipped."""
    image = fit_size(match_channels(image, channels).unsqueeze(0), size)
    return (random_flip(image) if flip else image)[0]


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
        self.files, labels, self.classes = _scan(root)
        if not self.files:
            raise MissingFile(
                f"no images found in {root}; supported: {', '.join(s[1:] for s in IMAGE_SUFFIXES)}"
            )
        self.labels = torch.tensor(labels)
        self.num_classes = len(self.classes) or None
        self.size = _as_hw(size)
        self.flip = flip
        headers = [_read_header(f) for f in self.files]
        grey = ImageMode.getmode(headers[0][0]).basemode == "L"
        self.channels = channels or (1 if grey else 3)
        sizes = [f"{w}x{h}" for _, (w, h) in headers]
        if self.size is None and len(set(sizes)) > 1:
            i = next(i for i, wh in enumerate(sizes) if wh != sizes[0])
            raise BadValue(
                f"{self.files[i]} is {sizes[i]} but {self.files[0]} is {sizes[0]} (width x height);"
                " pass size=... to resize every image to one size"
            )

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        image = normalize(_read_image(self.files[i], self.channels))
        return _finish(image, self.size, None, self.flip), int(self.labels[i])


def _scan(root: Path) -> tuple[list[Path], list[int], list[str]]:
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


def _read_header(path: Path) -> tuple[str, tuple[int, int]]:
    """(mode, (width, height)) of an image, reading only its header."""
    try:
        with Image.open(path) as im:
            return im.mode, im.size
    except (OSError, SyntaxError, ValueError) as e:
        raise BadValue(f"cannot read image {path} ({e}); remove or replace the file") from e


def _read_image(path: Path, channels: int) -> Tensor:
    """Decode an image to uint8 [channels, H, W]; transparency is composited on white, 16-bit
    grey is scaled to 8 bits."""
    try:
        with Image.open(path) as im:
            if im.mode.startswith("I"):  # 16-bit grey, which convert("L") would clip at 255
                im = Image.fromarray((np.asarray(im).clip(0, 65535) // 257).astype(np.uint8))
            if "A" in im.getbands() or "transparency" in im.info:
                im = im.convert("RGBA")
                im = Image.alpha_composite(Image.new("RGBA", im.size, "white"), im)
            pixels = np.asarray(im.convert("L" if channels == 1 else "RGB"))
    except (OSError, SyntaxError, ValueError) as e:
        raise BadValue(f"cannot decode image {path} ({e}); remove or replace the file") from e
    return torch.from_numpy(pixels.reshape(*pixels.shape[:2], channels).copy()).permute(2, 0, 1)


def read_idx(path: str | os.PathLike, ndim: int) -> np.ndarray:
    """Read an IDX file of unsigned bytes with `ndim` dimensions (gzipped if named *.gz).

    Format: big-endian int32 magic 0x0000080N (N = ndim; 0x803 images, 0x801 labels), then one
    int32 per dimension, then the bytes in row-major order.
    """
    path = Path(path)
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise
    except (OSError, EOFError) as e:
        raise BadValue(f"cannot read {path} ({e}); the file is corrupt, download it again") from e
    magic, header = 0x800 | ndim, 4 + 4 * ndim
    if len(data) < header or int.from_bytes(data[:4], "big") != magic:
        raise BadValue(
            f"{path} is not an IDX file of {ndim}-D unsigned bytes: it starts with "
            f"{data[:4].hex()}, expected {magic:08x}; is it the right file?"
        )
    dims = tuple(int(d) for d in np.frombuffer(data, ">i4", ndim, offset=4))
    if len(data) - header != math.prod(dims):
        raise BadValue(
            f"{path}: header says shape {dims} ({math.prod(dims)} bytes) but the file holds "
            f"{len(data) - header}; the file is truncated or corrupt, download it again"
        )
    return np.frombuffer(data, np.uint8, offset=header).reshape(dims).copy()


def _idx_path(root: Path, stem: str) -> Path | None:
    return next((p for p in (root / stem, root / f"{stem}.gz") if p.is_file()), None)


def _is_idx_folder(root: Path) -> bool:
    return any(_idx_path(root, s.format(p)) for p in ("train", "t10k") for s in _IDX_STEMS)


def _digits() -> tuple[Tensor, Tensor]:
    """Digits [1797, 1, 8, 8] in [0, 1] and labels, from rows of 64 pixels (0..16) + label."""
    raw = resources.files("ddim").joinpath("assets/digits.csv.gz").read_bytes()
    table = torch.from_numpy(np.loadtxt(io.BytesIO(gzip.decompress(raw)), delimiter=",", dtype=int))
    return table[:, :64].reshape(-1, 1, 8, 8) / 16.0, table[:, 64]


def _idx_folder(root: Path, split: str) -> tuple[Tensor, Tensor]:
    """uint8 images [N, 1, H, W] and labels of an MNIST-style folder."""
    prefix = "train" if split == "train" else "t10k"
    files = [_idx_path(root, stem.format(prefix)) for stem in _IDX_STEMS]
    if None in files:
        raise MissingFile(
            f"{root} has no {_IDX_STEMS[files.index(None)].format(prefix)}[.gz]; an MNIST-style "
            "folder holds {train,t10k}-images-idx3-ubyte and {train,t10k}-labels-idx1-ubyte[.gz]"
        )
    images, labels = read_idx(files[0], 3), read_idx(files[1], 1)
    if len(images) != len(labels) or len(images) == 0:
        raise BadValue(
            f"{files[0]} holds {len(images)} images and {files[1]} {len(labels)} labels; "
            "use a non-empty pair from the same release"
        )
    return torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels)


def _torchvision(name: str, root: Path, split: str, download: bool) -> tuple[Tensor, Tensor]:
    """uint8 images [N, C, H, W] and labels of a torchvision dataset."""
    try:
        import torchvision.datasets as tvd
    except ImportError as e:
        raise ImportError(
            f"dataset {name!r} needs torchvision (pip install torchvision); without it use "
            "'digits', a folder of images or a folder of MNIST-style IDX files"
        ) from e
    try:
        data = getattr(tvd, _TORCHVISION[name][0])(root, train=split == "train", download=download)
    except RuntimeError as e:  # torchvision's "Dataset not found ..."
        raise MissingFile(
            f"{name} ({split}) not found under {root} ({e}); pass download=True, or root= the "
            "folder that holds it"
        ) from e
    images = torch.as_tensor(np.asarray(data.data))
    images = images.unsqueeze(1) if images.ndim == 3 else images.permute(0, 3, 1, 2)
    return images, torch.as_tensor(data.targets)


def _single_split(name: str, split: str) -> None:
    if split != "train":
        raise BadValue(f"{name} has a single split; pass split='train'")


def load_dataset(
    spec: str | os.PathLike | Dataset,
    *,
    size: Size | None = None,
    channels: int | None = None,
    split: str = "train",
    flip: bool = False,
    root: str | os.PathLike | None = None,
    download: bool = False,
) -> Dataset:
    """The dataset named by `spec`, under the module's contract (see the module docstring).

    `spec`: "digits" (the built-in 8x8 digits, upsampled to `size`, default 16); a torchvision
    name (see `DATASET_NAMES`), looked for under `root` (default "data"), fetched only with
    `download=True`; the path of a folder of MNIST-style IDX files or, otherwise, of images
    (names win over folders: write "./digits" for a folder called digits); or any `Dataset`,
    wrapped by `WrappedDataset`. `size=None` keeps the stored size (16 for digits). `channels=None`
    keeps the stored channels. Digits and image folders have a single split, "train".
    """
    if channels not in (None, 1, 3):
        raise BadValue(f"channels must be 1, 3 or None (keep the dataset's), got {channels!r}")
    if split not in ("train", "test"):
        raise BadValue(f"split must be 'train' or 'test', got {split!r}")
    hw = _as_hw(size)
    if isinstance(spec, Dataset):
        return WrappedDataset(spec, getattr(spec, "num_classes", None), hw, channels, flip)
    name = os.fspath(spec)
    path, key = Path(name).expanduser(), name.lower()
    if key == "digits":
        _single_split(name, split)
        images, labels, num_classes, hw = *_digits(), 10, hw or (16, 16)
    elif key in _TORCHVISION:
        images, labels = _torchvision(key, Path(root or "data").expanduser(), split, download)
        num_classes = _TORCHVISION[key][1]
    elif path.is_dir() and _is_idx_folder(path):
        images, labels = _idx_folder(path, split)
        num_classes = int(labels.max()) + 1
    elif path.is_dir():
        _single_split(name, split)
        return ImageFolder(path, hw, channels, flip)
    elif path.exists():
        raise BadValue(f"{path} is a file; pass the folder that holds the images or IDX files")
    elif os.sep in name or "/" in name or name.startswith((".", "~")):
        raise MissingFile(f"{path} does not exist; pass an existing folder")
    else:
        raise BadValue(
            f"unknown dataset {name!r}; known: {', '.join(DATASET_NAMES)}, or the path of a "
            "folder of images or MNIST-style IDX files"
        )
    images = match_channels(fit_size(normalize(images), hw), channels)
    return TensorImageDataset(images, labels, num_classes, flip)


@dataclass(frozen=True)
class DataConfig:
    """What `build_dataset` loads; the fields are `load_dataset`'s arguments.

    Round-trips through JSON: `DataConfig(**json.loads(json.dumps(asdict(config))))`.
    """

    dataset: str = "digits"  # a name in DATASET_NAMES or a folder path
    size: Size | None = None
    channels: int | None = None
    split: str = "train"
    flip: bool = False
    root: str | None = None  # where torchvision sets live
    download: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.size, list):  # JSON has no tuples
            object.__setattr__(self, "size", tuple(self.size))


def build_dataset(config: DataConfig) -> Dataset:
    """The dataset a `DataConfig` describes."""
    options = dataclasses.asdict(config)
    return load_dataset(options.pop("dataset"), **options)
