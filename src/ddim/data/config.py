"""`DataConfig`: what `build_dataset` loads, saved beside every checkpoint as JSON."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from torch.utils.data import Dataset

from ddim.data.datasets import load_dataset
from ddim.data.pixels import Size


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
