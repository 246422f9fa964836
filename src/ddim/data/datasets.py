"""The datasets: in-memory sets (the built-in digits, MNIST-style IDX folders, torchvision sets by
name), image folders, and any `torch.utils.data.Dataset`; `load_dataset` is the one entry point.
See the package docstring for the contract every dataset keeps."""

from __future__ import annotations

import gzip
import io
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ddim.data.decode import ImageFolder
from ddim.data.idx import is_idx_folder, load_idx_folder
from ddim.data.pixels import Size, as_hw, finish, fit_size, match_channels, normalize, random_flip
from ddim.errors import BadFile, BadValue, MissingFile

# name -> (torchvision class, number of classes); each stores its images as one uint8 array
TORCHVISION = {
    "mnist": ("MNIST", 10),
    "fashion-mnist": ("FashionMNIST", 10),
    "kmnist": ("KMNIST", 10),
    "cifar10": ("CIFAR10", 10),
    "cifar100": ("CIFAR100", 100),
}
DATASET_NAMES = ("digits", *TORCHVISION)  # "fashion_mnist" is read as "fashion-mnist"
TORCHVISION_EXTRA = 'pip install "ddim[torchvision]"'


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
        self.size = as_hw(self.size)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        item = self.dataset[i]
        item = item if isinstance(item, tuple | list) else (item,)
        image, label = torch.as_tensor(item[0]), item[1] if len(item) > 1 else -1
        image = normalize(image) if image.dtype == torch.uint8 else image.float()
        return finish(image, self.size, self.channels, self.flip), int(label)


def _digits() -> tuple[Tensor, Tensor]:
    """Digits [1797, 1, 8, 8] in [0, 1] and labels, from rows of 64 pixels (0..16) + label."""
    raw = resources.files("ddim").joinpath("assets/digits.csv.gz").read_bytes()
    table = torch.from_numpy(np.loadtxt(io.BytesIO(gzip.decompress(raw)), delimiter=",", dtype=int))
    return table[:, :64].reshape(-1, 1, 8, 8) / 16.0, table[:, 64]


def _torchvision(name: str, root: Path, split: str, download: bool) -> tuple[Tensor, Tensor]:
    """uint8 images [N, C, H, W] and labels of a torchvision dataset."""
    try:
        import torchvision.datasets as tvd
    except ImportError as e:
        raise BadValue(
            f"dataset {name!r} needs torchvision: {TORCHVISION_EXTRA}; without it use 'digits', "
            "a folder of images or a folder of MNIST-style IDX files"
        ) from e
    try:
        data = getattr(tvd, TORCHVISION[name][0])(root, train=split == "train", download=download)
    except (RuntimeError, OSError) as e:  # "Dataset not found ...", or a failed download
        reason = " ".join(str(e).split()) or type(e).__name__
        if download:
            raise BadFile(
                f"could not download {name} ({split}) into {root} ({reason}); check the network, "
                "or put the files there and drop --download"
            ) from e
        raise MissingFile(
            f"{name} ({split}) not found under {root} ({reason}); pass --download (download=True) "
            "to fetch it, or --root (root=) the folder that holds it"
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
    """The dataset named by `spec`, under the package's contract (see `ddim.data`).

    `spec`: "digits" (the built-in 8x8 digits, upsampled to `size`, default 16); a torchvision
    name (see `DATASET_NAMES`; needs the extra ddim[torchvision]), looked for under `root`
    (default "data"), fetched only with `download=True`; the path of a folder of MNIST-style IDX
    files or, otherwise, of images (names win over folders: write "./digits" for a folder called
    digits); or any `Dataset`, wrapped by `WrappedDataset`. `size=None` keeps the stored size (16
    for digits). `channels=None` keeps the stored channels. Digits and image folders have a
    single split, "train".
    """
    if channels not in (None, 1, 3):
        raise BadValue(f"channels must be 1, 3 or None (keep the dataset's), got {channels!r}")
    if split not in ("train", "test"):
        raise BadValue(f"split must be 'train' or 'test', got {split!r}")
    hw = as_hw(size)
    if isinstance(spec, Dataset):
        return WrappedDataset(spec, getattr(spec, "num_classes", None), hw, channels, flip)
    name = os.fspath(spec)
    path, key = Path(name).expanduser(), name.lower().replace("_", "-")
    if key == "digits":
        _single_split(name, split)
        images, labels, num_classes, hw = *_digits(), 10, hw or (16, 16)
    elif key in TORCHVISION:
        images, labels = _torchvision(key, Path(root or "data").expanduser(), split, download)
        num_classes = TORCHVISION[key][1]
    elif path.is_dir() and is_idx_folder(path):
        images, labels = load_idx_folder(path, split)
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
