"""Latents of real images as a file: what `ddim invert` writes and `ddim sample --latents` reads.

An npz holding `latents` (float32 [N, ...], complex64 for an exact sampler: what
`ddim.sample(..., sampler=sampler)` takes as x_T) and what decoding them needs, so that no
flag has to be repeated: `sampler`, `steps`, `spacing` (a grid name, or the timesteps joined
by commas), `checkpoint` (the folder that inverted them), `weights` (a hash of its weights),
`image_shape` and `sources` (the image file names, in order). Latents are refused, with one
line, by a model other than the one that made them or one whose images have another shape.
"""

from __future__ import annotations

import dataclasses
import os
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ddim.errors import BadFile, MissingFile

_KEYS = ("latents", "sampler", "steps", "spacing", "checkpoint", "weights", "image_shape", "sources")


def _dtype(array: np.ndarray) -> type:
    """float32, or complex64 for an exact sampler's latent pair (samplers/exact.py)."""
    return np.complex64 if np.iscomplexobj(array) else np.float32


@dataclasses.dataclass
class Latents:
    z: Tensor  # [N, ...] float32 (complex64: an exact sampler's pair of states)
    sampler: str
    steps: int
    spacing: str | Sequence[int]
    checkpoint: str  # the checkpoint folder that inverted them
    weights: str  # hash of that checkpoint's weights
    sources: list[str]  # the images' names
    image_shape: tuple[int, int, int]  # (C, H, W) of the model's images
    file: str | None = None  # where they were read from

    def __len__(self) -> int:
        return len(self.z)

    def __getitem__(self, index: int | slice) -> Latents:
        """The latents of some of the images (one image: an int), keeping the metadata."""
        part = slice(index, index + 1) if isinstance(index, int) else index
        return dataclasses.replace(self, z=self.z[part], sources=self.sources[part])

    def check(self, pipe: Any) -> None:
        """Refuse to be decoded by a pipeline whose model did not make these latents."""
        where = self.file or "the latents"
        if tuple(self.image_shape) != tuple(pipe.image_shape) or tuple(self.z.shape[-3:]) != tuple(
            pipe.image_shape
        ):
            raise BadFile(
                f"{where} holds latents {tuple(self.z.shape)} of {tuple(self.image_shape)} images but "
                f"the model {pipe.path} makes {tuple(pipe.image_shape)} images; decode them with "
                f"the checkpoint that inverted them ({self.checkpoint})"
            )
        if self.weights != pipe.fingerprint:
            raise BadFile(
                f"{where} was inverted by the checkpoint {self.checkpoint}, not by {pipe.path} (other "
                f"weights); decode it with --checkpoint {self.checkpoint}"
            )

    def save(self, path: str | os.PathLike) -> Path:
        spacing = self.spacing if isinstance(self.spacing, str) else ",".join(map(str, self.spacing))
        np.savez(
            path,
            latents=self.z.cpu().numpy(),
            sampler=self.sampler,
            steps=self.steps,
            spacing=spacing,
            checkpoint=self.checkpoint,
            weights=self.weights,
            image_shape=np.array(self.image_shape),
            sources=np.array(self.sources, dtype=str),
        )
        return Path(path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Latents:
        """Latents written by `save` (`ddim invert`); a damaged or foreign npz is one line."""
        file = Path(path)
        if not file.is_file():
            raise MissingFile(f"{file} does not exist; write latents with `ddim invert --out {file}`")
        try:
            with np.load(file, allow_pickle=False) as data:
                missing = [k for k in _KEYS if k not in data.files]
                if missing:
                    raise BadFile(
                        f"{file} lacks {', '.join(missing)}: it was not written by `ddim invert`; "
                        "invert the images again"
                    )
                d = {k: data[k] for k in _KEYS}
            spacing = str(d["spacing"])
            grid = [int(t) for t in spacing.split(",")] if spacing[:1].isdigit() else spacing
            return cls(
                torch.from_numpy(d["latents"].astype(_dtype(d["latents"]))),
                str(d["sampler"]),
                int(d["steps"]),
                grid,
                str(d["checkpoint"]),
                str(d["weights"]),
                [str(s) for s in d["sources"]],
                tuple(int(v) for v in d["image_shape"]),
                str(file),
            )
        except BadFile:
            raise
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
            reason = " ".join(str(e).split())
            raise BadFile(
                f"cannot read latents {file} ({reason}); write them again with `ddim invert`"
            ) from e
