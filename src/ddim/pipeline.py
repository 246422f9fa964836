"""`ddim.load(PATH)`: one object between a trained model and its users, the CLI included.

    pipe = ddim.load("runs/mnist16")            # a run folder, a checkpoint folder, a diffusers folder
    images = pipe.sample(16, steps=50, seed=0)  # uint8 [16, H, W, C]; output="tensor": [-1, 1]
    z = pipe.invert("digits/")                  # Latents: exact with ddim.EXACT_INVERTIBLE samplers
    back = pipe.decode(z)                       # the images again
    strip = pipe.interpolate("a.png", "b.png", 9)
    edited = pipe.edit("digits/", 0.6, seed=0)
    filled = pipe.inpaint("digits/", "mask.png", seed=0)

The pipeline owns what a user should not have to know: where the newest checkpoint is, the
model's schedule, prediction target and image shape, seeded per-example noise
(`ddim.generation`), batching, and the conversion of images in (uint8 arrays, PIL images, paths,
[-1, 1] tensors) and out. The math stays in the pure functions it calls.

**The data range.** Both ddim checkpoints and diffusers UNet2DModel checkpoints model images
normalised to [-1, 1] (`ddim.data.normalize`), so fresh samples and edits clamp each step's x0
estimate to [-1, 1] (`clip=1.0`) by default: `pipe.clip`, the one place this is decided (a
diffusers scheduler config with `clip_sample: false` turns it off). Decoding latents made by
`invert` does not clip by default, so that decode(invert(x)) is x.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Callable, Iterator, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ddim.data import to_uint8
from ddim.device import resolve_device
from ddim.diffusers_compat import diffusers_unet_config, is_diffusers_folder, load_diffusers
from ddim.errors import BadValue
from ddim.generation import Trajectory, generate, generate_batches, model_device
from ddim.models.compile import compile_model
from ddim.prediction import Clip
from ddim.real_images import CHECKPOINT_CLIP, DATA_CLIP, RealImages
from ddim.sampling import DEFAULT_STEPS
from ddim.schedule import NoiseSchedule
from ddim.training.checkpoint import EMA, MODEL, find_checkpoint, load_checkpoint, read_config
from ddim.tuning import tuned_grid

OUTPUTS = ("uint8", "tensor")


def _file_sha256(files: Sequence[Path]) -> str:
    digest = hashlib.sha256()
    for file in files:
        with file.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


@dataclasses.dataclass(eq=False)
class Pipeline(RealImages):
    """A loaded model with everything needed to sample it and to invert, decode, interpolate,
    edit and inpaint real images (`RealImages`); make one with `ddim.load`."""

    model: Callable[..., Tensor]  # eval mode, no gradients, on `device`
    schedule: NoiseSchedule
    prediction: str
    image_shape: tuple[int, int, int]  # (C, H, W)
    path: Path  # the checkpoint folder (or diffusers folder) it came from
    weight_files: tuple[Path, ...]  # what `fingerprint` hashes
    clip: Clip = DATA_CLIP
    self_condition: bool = False
    num_classes: int | None = None
    bf16: bool = False
    step: int | None = None  # the training step of a ddim checkpoint

    def __repr__(self) -> str:
        c, h, w = self.image_shape
        return (
            f"Pipeline({str(self.path)!r}, {c}x{h}x{w} images, prediction={self.prediction!r}, "
            f"clip={self.clip}, device={self.device})"
        )

    @property
    def device(self) -> torch.device:
        return model_device(self.model)

    @cached_property
    def fingerprint(self) -> str:
        """A hash of the weights: latents remember which model inverted them."""
        return _file_sha256(self.weight_files)

    # ---- options shared by every method ------------------------------------------------------
    def _options(self, steps: int | None, sampler: str, spacing, eta: float, clip) -> dict[str, Any]:
        steps = DEFAULT_STEPS if steps is None else steps
        if not 1 <= steps <= self.schedule.T:
            raise BadValue(
                f"steps {steps} is out of range: more than the model's {self.schedule.T} timesteps or "
                f"below 1; pass 1 to {self.schedule.T}"
            )
        if isinstance(spacing, str) and spacing == "tuned":  # `ddim tune`'s grid (docs/tuning.md)
            spacing = tuned_grid(self.path, sampler, steps)
        return dict(
            steps=steps,
            sampler=sampler,
            spacing=spacing,
            eta=eta,
            clip=self.clip if clip is CHECKPOINT_CLIP else clip,
            prediction=self.prediction,
            self_condition=self.self_condition,
        )

    def _labels(self, label: int | None, n: int) -> dict[str, Any]:
        if label is None:
            return {}
        if self.num_classes is None or not 0 <= label < self.num_classes:
            have = "is unconditional" if self.num_classes is None else f"has {self.num_classes} classes"
            raise BadValue(f"class {label}: the model {have}; train with --conditional, or drop the class")
        return {"labels": torch.full((n,), label, dtype=torch.int64), "null_class": self.num_classes}

    @staticmethod
    def _out(images: Tensor, output: str) -> np.ndarray | Tensor:
        if output not in OUTPUTS:
            raise BadValue(f"output must be one of {', '.join(OUTPUTS)}, got {output!r}")
        return to_uint8(images) if output == "uint8" else images

    # ---- sampling ----------------------------------------------------------------------------
    def sample_batches(
        self,
        n: int,
        *,
        steps: int | None = None,
        seed: int = 0,
        eta: float = 0.0,
        sampler: str = "ddim",
        spacing: str | Sequence[int] | None = None,
        clip: Clip = CHECKPOINT_CLIP,
        label: int | None = None,
        guidance: float = 1.0,
        batch_size: int = 256,
        start: int = 0,
        output: str = "uint8",
        progress: bool = True,
    ) -> Iterator[np.ndarray | Tensor]:
        """`sample`, one batch at a time (memory stays flat for any n)."""
        if n < 1:
            raise BadValue(f"n must be at least 1, got {n}")
        if guidance != 1.0 and label is None:
            raise BadValue("--guidance needs --class (label= in Python): guidance steers towards a class")
        self._out(torch.zeros(0, 1, 1, 1), output)
        for images in generate_batches(
            self.model,
            self.schedule,
            self.image_shape,
            n,
            seed=seed,
            start=start,
            batch_size=batch_size,
            bf16=self.bf16,
            progress=progress,
            guidance=guidance,
            **self._labels(label, n),
            **self._options(steps, sampler, spacing, eta, clip),
        ):
            yield self._out(images, output)

    def sample(self, n: int = 64, **options) -> np.ndarray | Tensor:
        """Images start..start+n-1 of the run seeded with `seed` (each image depends only on the
        seed and its index): uint8 [n, H, W, C], or with output="tensor" float32 [n, C, H, W] in
        [-1, 1]. Options: steps (default 50), seed, eta, sampler, spacing (default the sampler's),
        clip (default `pipe.clip`), label and guidance (class-conditional models), batch_size,
        start, output, progress."""
        parts = list(self.sample_batches(n, **options))
        return np.concatenate(parts) if isinstance(parts[0], np.ndarray) else torch.cat(parts)

    def trajectory(
        self,
        n: int = 4,
        *,
        steps: int | None = None,
        seed: int = 0,
        eta: float = 0.0,
        sampler: str = "ddim",
        spacing=None,
        clip: Clip = CHECKPOINT_CLIP,
        label: int | None = None,
        guidance: float = 1.0,
    ) -> Trajectory:
        """The whole run (x_t and the x0 estimate at every step) of the first n images of
        `sample` with the same options, as float tensors in [-1, 1]."""
        return generate(
            self.model,
            self.schedule,
            self.image_shape,
            n,
            seed=seed,
            bf16=self.bf16,
            progress=False,
            guidance=guidance,
            return_all_timesteps=True,
            **self._labels(label, n),
            **self._options(steps, sampler, spacing, eta, clip),
        )


def describe(path: str | os.PathLike) -> dict[str, Any]:
    """What `load(path)` would load, read from config files only (for --dry-run): the checkpoint
    folder, its image shape, and its step and run config (ddim) or {"diffusers": True}."""
    if is_diffusers_folder(path):
        config = diffusers_unet_config(path)
        size = config.get("sample_size", 32)
        hw = (size, size) if isinstance(size, int) else tuple(size)
        return {
            "checkpoint": Path(path),
            "diffusers": True,
            "image_shape": (config.get("in_channels", 3), *hw),
        }
    folder = find_checkpoint(path)
    run, step = read_config(folder)
    return {"checkpoint": folder, "step": step, "image_shape": run.image_shape(), "run": run.to_dict()}


def load(
    path: str | os.PathLike,
    *,
    device: str | torch.device = "auto",
    use_ema: bool = True,
    bf16: bool = False,
    compile: bool = False,
) -> Pipeline:
    """The pipeline of a run folder (its newest intact checkpoint), one checkpoint folder, or a
    diffusers UNet2DModel folder (`pip install "ddim[diffusers]"`). EMA weights unless
    use_ema=False; `device` "auto" takes CUDA when present; `bf16` runs the network under
    bfloat16 autocast; `compile` torch.compiles it (ddim.models.compile, docs/performance.md)."""
    device = resolve_device(device) if isinstance(device, str) else device
    if is_diffusers_folder(path):
        d = load_diffusers(path, device)
        return Pipeline(
            compile_model(d.model, compile),
            d.schedule,
            d.prediction,
            d.image_shape,
            d.path,
            d.weight_files,
            clip=d.clip,
            bf16=bf16,
        )
    ckpt = load_checkpoint(path, use_ema=use_ema, device=device)
    files = (ckpt.path / (EMA if use_ema else MODEL),)
    return Pipeline(
        compile_model(ckpt.model, compile),
        ckpt.schedule,
        ckpt.prediction,
        ckpt.image_shape,
        ckpt.path,
        files,
        self_condition=ckpt.self_condition,
        num_classes=ckpt.num_classes,
        bf16=bf16,
        step=ckpt.step,
    )
