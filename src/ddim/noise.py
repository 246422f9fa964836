"""Randomness keyed to each example's index, so that an example's noise depends on the seed and
its index, never on the batch it happens to be in, and never on the global RNG.

Examples are grouped in aligned blocks of BLOCK indices, one torch.Generator per block: a draw
makes the whole block's noise and keeps the rows it needs, so a batch of N costs about N / BLOCK
generator calls instead of N.

    noise = PerSampleNoise.from_seed(seed, n, start=k)   # examples k..k+n-1 of a seeded run
    x_T = noise.randn(shape, device=..., dtype=...)        # [n, *shape]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from ddim.errors import BadValue

Generators = torch.Generator | Sequence[torch.Generator] | None
BLOCK = 64


class _Block(NamedTuple):
    generator: torch.Generator
    size: int  # rows this generator draws each time
    lo: int  # first row kept
    hi: int  # one past the last row kept


def seed_for(seed: int, *keys: int) -> int:
    """A well-mixed 63-bit seed for the stream named by `keys` (e.g. a block index) of a run
    seeded with `seed`."""
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1, np.uint64)[0] >> 1)


def _blocks(make_generator, n: int, start: int) -> list[_Block]:
    first, last = start // BLOCK, (start + n - 1) // BLOCK
    return [
        _Block(make_generator(b), BLOCK, max(start - b * BLOCK, 0), min(start + n - b * BLOCK, BLOCK))
        for b in range(first, last + 1)
    ]


class PerSampleNoise:
    """Standard normal noise for n examples, each from the stream of its own index."""

    def __init__(self, blocks: list[_Block]):
        self.blocks = blocks

    @classmethod
    def from_seed(
        cls, seed: int, n: int, start: int = 0, device: str = "cpu", stream: int = 0
    ) -> PerSampleNoise:
        """Examples start..start+n-1 of a run seeded with `seed` (the same for any split of the
        indices into batches or processes); `stream` > 0 names another independent stream of
        the same examples (e.g. a sampler's per-step noise beside x_T)."""
        keys = (lambda b: (b,)) if stream == 0 else (lambda b: (b, stream))
        return cls(_blocks(lambda b: torch.Generator(device).manual_seed(seed_for(seed, *keys(b))), n, start))

    @classmethod
    def split(cls, generator: Generators | PerSampleNoise, n: int) -> PerSampleNoise:
        """From one generator (block seeds drawn from it in order, so example i's stream does not
        depend on n), a list of n generators (one per example, used as they are), a
        PerSampleNoise (used as it is), or None (fresh entropy, not the global RNG)."""
        if isinstance(generator, PerSampleNoise):
            return generator
        if generator is None:
            generator = torch.Generator()
            generator.seed()
        if isinstance(generator, torch.Generator):
            count = (n + BLOCK - 1) // BLOCK
            seeds = torch.randint(0, 2**62, (count,), generator=generator, device=generator.device)
            seeds = seeds.tolist()  # once per run, not per step
            device = generator.device
            return cls(_blocks(lambda b: torch.Generator(device).manual_seed(seeds[b]), n, 0))
        if len(generator) != n:
            raise BadValue(f"got {len(generator)} generators for a batch of {n}: pass one per example")
        return cls([_Block(g, 1, 0, 1) for g in generator])

    def randn(self, shape: Sequence[int], device=None, dtype=None) -> Tensor:
        """Noise [n, *shape] on `device`, each example's rows from its own stream."""
        parts = [
            torch.randn((b.size, *shape), generator=b.generator, device=b.generator.device)[b.lo : b.hi]
            for b in self.blocks
        ]
        z = parts[0] if len(parts) == 1 else torch.cat(parts)
        if z.device.type == "cpu" and torch.device(device or "cpu").type == "cuda":
            z = z.pin_memory()  # so the copy to the GPU does not block the host
            return z.to(device=device, dtype=dtype, non_blocking=True)
        return z.to(device=device, dtype=dtype)
