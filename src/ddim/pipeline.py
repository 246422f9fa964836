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
from tqdm.auto import tqdm

from ddim.data import to_uint8
from ddim.device import resolve_device
from ddim.diffusers_compat import diffusers_unet_config, is_diffusers_folder, load_diffusers
from ddim.errors import BadValue
from ddim.generation import Trajectory, generate, generate_batches, model_device, running
from ddim.inputs import ImagesIn, read_images, read_mask
from ddim.latents import Latents
from ddim.noise import PerSampleNoise
from ddim.prediction import Clip
from ddim.samplers import DEFAULT_SPACINGS, slerp
from ddim.sampling import DEFAULT_STEPS, invert
from ddim.schedule import NoiseSchedule
from ddim.training.checkpoint import EMA, MODEL, find_checkpoint, load_checkpoint, read_config

try:  # engineer A's exact samplers (issue 8); until they land, plain DDIM inversion
    from ddim.samplers import EXACT_INVERTIBLE, interpolate_latents
except ImportError:  # pragma: no cover
    EXACT_INVERTIBLE = ()

    def interpolate_latents(z_a: Tensor, z_b: Tensor, n: int) -> Tensor:
        return torch.cat([slerp(z_a, z_b, float(w)) for w in torch.linspace(0, 1, n)])


DATA_CLIP = 1.0  # ddim and diffusers checkpoints model images in [-1, 1]: clamp x0 estimates to it
OUTPUTS = ("uint8", "tensor")
# The sampler `invert` uses unless told: exact round trips when an exact sampler exists.
INVERT_SAMPLER = EXACT_INVERTIBLE[0] if EXACT_INVERTIBLE else "ddim"


class _CheckpointClip:
    """The default of every `clip` argument that means "the clip the checkpoint's data range sets"."""

    def __repr__(self) -> str:
        return "checkpoint"


CHECKPOINT_CLIP: Any = _CheckpointClip()


def _file_sha256(files: Sequence[Path]) -> str:
    digest = hashlib.sha256()
    for file in files:
        with file.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


@dataclasses.dataclass(eq=False)
class Pipeline:
    """A loaded model with everything needed to sample it; make one with `ddim.load`."""

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

    # ---- latents -----------------------------------------------------------------------------
    def _batched(
        self, fn: Callable[..., Tensor], x: Tensor, batch_size: int, desc: str, progress: bool, *extra: Tensor
    ) -> Tensor:
        """fn(batch, start, *extra_batch) over batches of x, under inference mode, on the CPU."""
        out = []
        with tqdm(total=len(x), desc=desc, unit="image", disable=not progress, leave=False) as bar:
            for start in range(0, len(x), batch_size):
                part = slice(start, start + batch_size)
                batch = [e[part] if len(e) == len(x) else e for e in extra]
                with running(self.device, self.bf16):
                    y = fn(x[part].to(self.device), start, *(e.to(self.device) for e in batch))
                out.append(y.cpu() if y.is_complex() else y.float().cpu())  # exact latents are complex
                bar.update(len(x[part]))
        return torch.cat(out)

    def invert(
        self,
        images: ImagesIn,
        *,
        steps: int | None = None,
        sampler: str | None = None,
        spacing: str | Sequence[int] | None = None,
        refine: int = 0,
        batch_size: int = 256,
        progress: bool = True,
    ) -> Latents:
        """The latents of `images` (any form of `ddim.inputs`): `Latents`, whose `.z` is what
        `ddim.sample(..., sampler=...)` takes as x_T and which remember the sampler, steps, grid,
        model and source names, so `decode(latents)` needs no options. Default sampler: the
        first of `ddim.EXACT_INVERTIBLE` (an exact round trip)."""
        sampler = sampler or INVERT_SAMPLER
        spacing = spacing if spacing is not None else DEFAULT_SPACINGS[sampler]
        options = self._options(steps, sampler, spacing, 0.0, None)
        x, names, _ = read_images(images, self.image_shape)
        extra = {"refine": refine} if refine else {}

        def encode(batch: Tensor, start: int) -> Tensor:
            return invert(
                self.model,
                batch,
                self.schedule,
                options["steps"],
                sampler=sampler,
                spacing=spacing,
                prediction=self.prediction,
                self_condition=self.self_condition,
                **extra,
            )

        z = self._batched(encode, x, batch_size, "inverting", progress)
        return Latents(
            z,
            sampler,
            options["steps"],
            spacing,
            str(self.path),
            self.fingerprint,
            list(names),
            self.image_shape,
        )

    def decode(
        self,
        latents: Latents | Tensor,
        *,
        steps: int | None = None,
        sampler: str | None = None,
        spacing=None,
        clip: Clip = None,
        seed: int = 0,
        batch_size: int = 256,
        output: str = "uint8",
        progress: bool = True,
    ) -> np.ndarray | Tensor:
        """Images from latents: a `Latents` (its sampler, steps and grid unless given; refused if
        another model or image shape made it) or a tensor [N, ...] (sampler "ddim", 50 steps
        unless given). No clipping by default, so that decode(invert(x)) reconstructs x."""
        if isinstance(latents, Latents):
            latents.check(self)
            sampler, steps = sampler or latents.sampler, steps or latents.steps
            spacing, z = spacing if spacing is not None else latents.spacing, latents.z
        else:
            z, sampler = latents, sampler or "ddim"
        options = self._options(steps, sampler, spacing, 0.0, clip)
        out = generate(
            self.model,
            self.schedule,
            self.image_shape,
            len(z),
            x_T=z,
            seed=seed,
            batch_size=batch_size,
            bf16=self.bf16,
            progress=progress,
            **options,
        )
        return self._out(out, output)

    def interpolate(
        self,
        a: ImagesIn | Latents | int,
        b: ImagesIn | Latents | int,
        n: int = 9,
        *,
        steps: int | None = None,
        sampler: str | None = None,
        spacing=None,
        clip: Clip = CHECKPOINT_CLIP,
        output: str = "uint8",
    ) -> np.ndarray | Tensor:
        """n images from a to b, ends included (DDIM sec. 5.3). a and b are images (inverted,
        then interpolated with `ddim.interpolate_latents`: the ends decode to the inputs), one
        example each of `Latents`, or seeds (ints: slerp between their x_T, decoded with DDIM,
        eta = 0, clipped like samples)."""
        if n < 2:
            raise BadValue(f"n must be at least 2 (the two ends), got {n}")
        if isinstance(a, int) and isinstance(b, int):
            z0, z1 = (PerSampleNoise.from_seed(seed, 1).randn(self.image_shape) for seed in (a, b))
            z = torch.cat([slerp(z0, z1, float(w)) for w in torch.linspace(0, 1, n)])
            return self.decode(
                z,
                steps=steps,
                sampler="ddim",
                spacing=spacing,
                clip=self.clip if clip is CHECKPOINT_CLIP else clip,
                output=output,
                progress=False,
            )
        ends = [
            e
            if isinstance(e, Latents)
            else self.invert(e, steps=steps, sampler=sampler, spacing=spacing, progress=False)
            for e in (a, b)
        ]
        for e in ends:
            e.check(self)
            if len(e.z) != 1:
                raise BadValue(f"interpolate takes one image at each end, got {len(e.z)}")
        if (ends[0].sampler, ends[0].steps, ends[0].spacing) != (
            ends[1].sampler,
            ends[1].steps,
            ends[1].spacing,
        ):
            raise BadValue("the two ends were inverted with different samplers, steps or grids")
        z = interpolate_latents(ends[0].z, ends[1].z, n)
        mixed = dataclasses.replace(ends[0], z=z, sources=[f"{i}" for i in range(n)])
        return self.decode(
            mixed, clip=None if clip is CHECKPOINT_CLIP else clip, output=output, progress=False
        )

    # ---- editing -----------------------------------------------------------------------------
    def edit(
        self,
        images: ImagesIn,
        strength: float,
        *,
        steps: int | None = None,
        sampler: str = "ddim",
        eta: float = 0.0,
        spacing=None,
        seed: int = 0,
        clip: Clip = CHECKPOINT_CLIP,
        batch_size: int = 256,
        output: str = "uint8",
        progress: bool = True,
    ) -> np.ndarray | Tensor:
        """SDEdit (Meng et al. 2022) through `ddim.edit`: each image noised to the time that
        `strength` sets (0: returned unchanged; 1: a fresh sample) and sampled back. Image i's
        noise comes from the seed and i alone."""
        from ddim.editing import edit

        options = self._options(steps, sampler, spacing, eta, clip)
        x, _, _ = read_images(images, self.image_shape)

        def run(batch: Tensor, start: int) -> Tensor:
            noise = PerSampleNoise.from_seed(seed, len(batch), start)
            return edit(self.model, batch, self.schedule, strength, generator=noise, **options)

        return self._out(self._batched(run, x, batch_size, "editing", progress), output)

    def inpaint(
        self,
        images: ImagesIn,
        mask: ImagesIn,
        *,
        steps: int | None = None,
        seed: int = 0,
        spacing: str | Sequence[int] | None = None,
        clip: Clip = CHECKPOINT_CLIP,
        batch_size: int = 256,
        output: str = "uint8",
        progress: bool = True,
        **method_options,
    ) -> np.ndarray | Tensor:
        """Fill the pixels where `mask` is white (1) and keep the others exactly, through
        `ddim.inpaint`; see `ddim.inputs` for the forms of images and mask."""
        from ddim.editing import inpaint

        options = self._options(steps, "ddim", spacing, 0.0, clip)
        x, names, sizes = read_images(images, self.image_shape)
        m = read_mask(mask, self.image_shape, names, sizes)
        if len(m) not in (1, len(x)):
            raise BadValue(f"got {len(m)} masks for {len(x)} images; pass one mask, or one per image")
        keys = ("steps", "prediction", "clip", "self_condition") + (() if spacing is None else ("spacing",))

        def run(batch: Tensor, start: int, mask_batch: Tensor) -> Tensor:
            noise = PerSampleNoise.from_seed(seed, len(batch), start)
            return inpaint(
                self.model,
                batch,
                mask_batch,
                self.schedule,
                generator=noise,
                **{k: options[k] for k in keys},
                **method_options,
            )

        return self._out(self._batched(run, x, batch_size, "inpainting", progress, m), output)


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
    path: str | os.PathLike, *, device: str | torch.device = "auto", use_ema: bool = True, bf16: bool = False
) -> Pipeline:
    """The pipeline of a run folder (its newest intact checkpoint), one checkpoint folder, or a
    diffusers UNet2DModel folder (`pip install "ddim[diffusers]"`). EMA weights unless
    use_ema=False; `device` "auto" takes CUDA when present; `bf16` runs the network under
    bfloat16 autocast."""
    device = resolve_device(device) if isinstance(device, str) else device
    if is_diffusers_folder(path):
        d = load_diffusers(path, device)
        return Pipeline(
            d.model, d.schedule, d.prediction, d.image_shape, d.path, d.weight_files, clip=d.clip, bf16=bf16
        )
    ckpt = load_checkpoint(path, use_ema=use_ema, device=device)
    files = (ckpt.path / (EMA if use_ema else MODEL),)
    return Pipeline(
        ckpt.model,
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
