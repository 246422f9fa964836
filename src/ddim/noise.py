"""Randomness with one generator per example, so that an example's noise depends on its seed and
index, never on the batch it happens to be in or on the global RNG.

    noise = PerSampleNoise.from_seed(seed, n, start=k)   # examples k..k+n-1 of a seeded run
    x_T = noise.randn(shape, device=..., dtype=...)        # [n, *shape], one stream per example
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

Generators = torch.Generator | Sequence[torch.Generator] | None


def seed_for(seed: int, index: int) -> int:
    """A well-mixed 63-bit seed for example `index` of a run seeded with `seed`."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0] >> 1)


class PerSampleNoise:
    """One torch.Generator per example; `randn` draws each example's values from its own."""

    def __init__(self, generators: Sequence[torch.Generator]):
        self.generators = list(generators)

    @classmethod
    def from_seed(cls, seed: int, n: int, start: int = 0, device: str = "cpu") -> PerSampleNoise:
        return cls(
            [torch.Generator(device).manual_seed(seed_for(seed, start + i)) for i in range(n)]
        )

    @classmethod
    def split(cls, generator: Generators, n: int) -> PerSampleNoise:
        """From a list of n generators (used as they are), one generator (n seeds drawn from it:
        example i gets the i-th, whatever n is), or None (fresh entropy, not the global RNG)."""
        if generator is None:
            generator = torch.Generator()
            generator.seed()
        if isinstance(generator, torch.Generator):
            seeds = torch.randint(0, 2**62, (n,), generator=generator, device=generator.device)
            device = generator.device
            return cls([torch.Generator(device).manual_seed(int(s)) for s in seeds.tolist()])
        if len(generator) != n:
            raise ValueError(f"got {len(generator)} generators for a batch of {n}: pass one per example")
        return cls(generator)

    def randn(self, shape: Sequence[int], device=None, dtype=None) -> Tensor:
        """Standard normal noise [n, *shape] on `device`, example i from generator i."""
        z = torch.stack(
            [torch.randn(tuple(shape), generator=g, device=g.device) for g in self.generators]
        )
        return z.to(device=device, dtype=dtype)
