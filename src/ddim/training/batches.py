"""What the trainer reads: the reproducible order of the examples (`IndexStream`), the
micro-batches in that order (`Batches`), the check of a dataset against the model
(`check_dataset`) and the data's fingerprint (`fingerprint`), stored in every checkpoint so that
a resume on other data is refused."""

from __future__ import annotations

import copy
import hashlib

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from ddim.config import RunConfig
from ddim.data import random_flip
from ddim.distributed import rank, share_bounds, world_size
from ddim.errors import BadValue
from ddim.noise import seed_for

FINGERPRINT_SAMPLES = 64  # examples hashed from a dataset that is not held in memory


class IndexStream:
    """An endless, reproducible order of the indices 0..n-1: one random permutation per epoch,
    epoch e's seeded by (seed, e). The examples at stream positions [p, p + k) are a function of
    p alone, so resuming needs only the position and batches may span epochs."""

    def __init__(self, n: int, seed: int):
        if n < 1:
            raise BadValue("the dataset is empty")
        self.n, self.seed = n, seed
        self._epoch, self._perm = -1, torch.empty(0, dtype=torch.int64)

    def permutation(self, epoch: int) -> Tensor:
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(seed_for(self.seed, epoch))
            self._epoch, self._perm = epoch, torch.randperm(self.n, generator=generator)
        return self._perm

    def take(self, position: int, count: int) -> Tensor:
        if position < 0 or count < 0:
            raise BadValue(f"a stream position and count must be >= 0, got {position} and {count}")
        parts = []
        while count > 0:
            epoch, offset = divmod(position, self.n)
            part = self.permutation(epoch)[offset : offset + count]
            parts.append(part)
            position, count = position + len(part), count - len(part)
        return torch.cat(parts)


class _StreamBatches(Sampler):
    """A DataLoader batch sampler reading an IndexStream from a position, forever: global batches
    of `batch` indices, of which it yields this process's share [lo, hi)."""

    def __init__(self, stream: IndexStream, position: int, batch: int, share: tuple[int, int]):
        self.stream, self.position, self.batch, self.share = stream, position, batch, share

    def __iter__(self):
        position, (lo, hi) = self.position, self.share
        while True:
            yield self.stream.take(position, self.batch)[lo:hi].tolist()
            position += self.batch


class Batches:
    """Micro-batches (images, labels) on the CPU, in the stream's order from `position`: this
    process's share of each global micro-batch of `batch` examples.

    In-memory datasets (`.images` and `.labels` tensors) are indexed directly; others go through
    a DataLoader. Flips (the dataset's `flip` flag) are drawn here, from `generator`, so they
    depend neither on worker processes nor on the global RNG."""

    def __init__(self, dataset: Dataset, seed: int, batch: int, position: int, num_workers: int = 0):
        self.stream = IndexStream(len(dataset), seed)
        self.batch, self.position = batch, position
        self.share = share_bounds(batch, "micro-batch (batch_size / grad_accum)")
        self.flip = bool(getattr(dataset, "flip", False))
        images, labels = getattr(dataset, "images", None), getattr(dataset, "labels", None)
        self.in_memory = isinstance(images, Tensor) and isinstance(labels, Tensor)
        if self.in_memory:
            self.images, self.labels = images, labels
        else:
            dataset = _plain(dataset)  # flips are drawn here, not by the dataset
            sampler = _StreamBatches(self.stream, position, batch, self.share)
            # a generator of its own, so that the loader never draws from torch's global RNG
            generator = torch.Generator().manual_seed(seed)
            loader = DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers, generator=generator)
            self.loader = iter(loader)

    def next(self, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        if self.in_memory:
            idx = self.stream.take(self.position, self.batch)[self.share[0] : self.share[1]]
            images, labels = self.images[idx], self.labels[idx]
        else:
            images, labels = next(self.loader)
        self.position += self.batch
        if self.flip:
            images = random_flip(images, generator, rank_world=(rank(), world_size()))
        return images, torch.as_tensor(labels)


def check_dataset(dataset: Dataset, run: RunConfig) -> tuple[int, ...]:
    """The shape [C, H, W] of the dataset's images, after checking them against the model."""
    images = getattr(dataset, "images", None)
    shape = tuple(images.shape[1:]) if isinstance(images, Tensor) else tuple(dataset[0][0].shape)
    cfg = run.model
    if len(shape) != 3 or shape[0] != cfg.in_channels:
        raise BadValue(
            f"the dataset's images have shape {shape} but the model takes {cfg.in_channels} channel(s); "
            "set model.in_channels (and out_channels) or data.channels to match"
        )
    data_classes = getattr(dataset, "num_classes", None)
    if cfg.num_classes is not None and (data_classes is None or data_classes > cfg.num_classes):
        raise BadValue(
            f"the model is class-conditional with num_classes={cfg.num_classes} but the dataset has "
            f"{'no labels' if data_classes is None else f'{data_classes} classes'}; set model.num_classes "
            "to the dataset's number of classes, or to None for an unconditional model"
        )
    return shape


def _plain(dataset: Dataset) -> Dataset:
    """The dataset with its random flips off (a copy; the caller's keeps its flag)."""
    if getattr(dataset, "flip", False):
        dataset = copy.copy(dataset)
        dataset.flip = False
    return dataset


def fingerprint(dataset: Dataset) -> dict:
    """{"count", "shape", "sha256"} of a dataset: the number of examples, the shape of one image,
    and a SHA-256 of the images and labels: all of them for a dataset held in memory (`.images`,
    `.labels` tensors), else of FINGERPRINT_SAMPLES examples spread evenly over it (decoding every
    file of a large folder would cost as much as an epoch)."""
    n, digest = len(dataset), hashlib.sha256()
    images, labels = getattr(dataset, "images", None), getattr(dataset, "labels", None)
    if isinstance(images, Tensor) and isinstance(labels, Tensor):
        shape = list(images.shape[1:])
        parts = [images, labels]
    else:
        plain = _plain(dataset)
        picks = sorted({i * n // FINGERPRINT_SAMPLES for i in range(min(n, FINGERPRINT_SAMPLES))})
        items = [plain[i] for i in picks]
        shape = list(items[0][0].shape) if items else []
        parts = [t for image, label in items for t in (torch.as_tensor(image), torch.as_tensor(label))]
    for part in parts:
        digest.update(str((part.dtype, tuple(part.shape))).encode())
        digest.update(part.detach().cpu().contiguous().numpy().tobytes())
    return {"count": n, "shape": shape, "sha256": digest.hexdigest()}
