"""What `ddim.load`'s pipeline does to real images: invert them to latents, decode latents,
interpolate between two images (or latents, or seeds), edit them (SDEdit) and inpaint them, each
in batches under inference mode with image i's noise drawn from the seed and i alone.
`RealImages` is the pipeline's half that holds these methods (`ddim.pipeline.Pipeline`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from ddim.editing import edit, inpaint
from ddim.errors import BadValue
from ddim.generation import generate, running
from ddim.inputs import ImagesIn, read_images, read_mask
from ddim.latents import Latents
from ddim.noise import PerSampleNoise
from ddim.prediction import Clip
from ddim.samplers import DEFAULT_SPACINGS, EXACT_INVERTIBLE, interpolate_latents
from ddim.sampling import invert

DATA_CLIP = 1.0  # ddim and diffusers checkpoints model images in [-1, 1]: clamp x0 estimates to it
# The sampler `invert` uses unless told: exact round trips when an exact sampler exists.
INVERT_SAMPLER = EXACT_INVERTIBLE[0]


class _CheckpointClip:
    """The default of every `clip` argument that means "the clip the checkpoint's data range sets"."""

    def __repr__(self) -> str:
        return "checkpoint"


CHECKPOINT_CLIP: Any = _CheckpointClip()


class RealImages:
    """The pipeline's methods on real images; needs the attributes and helpers of `Pipeline`."""

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
            z = interpolate_latents(z0, z1, n)
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
