"""Datasets and pixel normalisation: the only place that knows how images are stored.

One job per module: `pixels` (stored pixels <-> [-1, 1], resizing, channels, flips), `decode`
(image files: the one decoder, image folders, `load_images`), `idx` (the MNIST IDX format),
`datasets` (every dataset and `load_dataset`, the one entry point) and `config` (`DataConfig` +
`build_dataset`, its saved, JSON-round-trippable form).

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

from ddim.data.config import DataConfig, build_dataset
from ddim.data.datasets import (
    DATASET_NAMES,
    TORCHVISION_EXTRA,
    TensorImageDataset,
    WrappedDataset,
    load_dataset,
)
from ddim.data.decode import IMAGE_SUFFIXES, ImageFolder, load_images, read_image
from ddim.data.idx import read_idx
from ddim.data.pixels import (
    denormalize,
    fit_size,
    match_channels,
    normalize,
    random_flip,
    to_uint8,
)

__all__ = [
    "DATASET_NAMES",
    "IMAGE_SUFFIXES",
    "TORCHVISION_EXTRA",
    "DataConfig",
    "ImageFolder",
    "TensorImageDataset",
    "WrappedDataset",
    "build_dataset",
    "denormalize",
    "fit_size",
    "load_dataset",
    "load_images",
    "match_channels",
    "normalize",
    "random_flip",
    "read_idx",
    "read_image",
    "to_uint8",
]
