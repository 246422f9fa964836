"""Randomness keyed to each example's index, so that an example's noise depends on the seed, its
index and its draw number, never on the batch it happens to be in, and never on the global RNG.

Each example has its own stream, and each call of `randn` is the next draw (x_T, then a
sampler's per-step noise) of every example's stream:

    noise = PerSampleNoise.from_seed(seed, n, start=k)   # examples k..k+n-1 of a seeded run
    x_T = noise.randn(shape, device=..., dtype=...)        # [n, *shape]

Where the noise is drawn decides how (the same for every batch size and process count):
- on a GPU (any device but the CPU): the counter-based Philox-4x32-10 (Salmon et al. 2011,
  "Parallel random numbers: as easy as 1, 2, 3") keyed by the seed, with the counter
  (lane, draw, index, stream), then Box-Muller: computed on the device with integer tensor ops,
  with no generator objects, no host work per example and no host-device sync;
- on the CPU: one torch (mt19937) generator per example, seeded from (seed, stream, index),
  which is several times faster there than Philox in eager tensor ops. Only the rows of
  the examples asked for are drawn.
So a seed gives different (equally valid) noise on the CPU and on a GPU. Either way the draws are
made several draws at a time (a number that depends only on the shape: `chunk_sizes`), so a
stochastic sampler on small images makes a generator call per example every few steps.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from ddim.errors import BadValue

Generators = torch.Generator | Sequence[torch.Generator] | None

MASK = 0xFFFFFFFF
# Philox-4x32 multipliers and Weyl key increments (Salmon et al. 2011, sec. 4.2; Random123)
PHILOX_M = (0xD2511F53, 0xCD9E8D57)
PHILOX_W = (0x9E3779B9, 0xBB67AE85)
CHUNK_ELEMENTS = 2**14  # values per example drawn at a time (at least one draw)
MAX_CHUNK = 32  # draws made at a time at most


def seed_for(seed: int, *keys: int) -> int:
    """A well-mixed 63-bit seed for the stream named by `keys` of a run seeded with `seed`."""
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1, np.uint64)[0] >> 1)


def philox4x32(counter: Sequence[Tensor], key: tuple[int, int], rounds: int = 10) -> list[Tensor]:
    """Philox-4x32-`rounds` (Salmon et al. 2011, sec. 4.2) of the 4 x 32-bit counter words
    (int64 tensors holding values in [0, 2^32), broadcastable) under the 64-bit key (k0, k1):
    4 words of output. A 32 x 32 -> 64-bit product fits the int64 bits (it wraps to the same low
    64 bits), and the high word is read with a masked shift."""
    c0, c1, c2, c3 = counter
    k0, k1 = key
    for _ in range(rounds):
        p0, p1 = c0 * PHILOX_M[0], c2 * PHILOX_M[1]
        c0, c1, c2, c3 = (
            ((p1 >> 32) & MASK) ^ c1 ^ k0,
            p1 & MASK,
            ((p0 >> 32) & MASK) ^ c3 ^ k1,
            p0 & MASK,
        )
        k0, k1 = (k0 + PHILOX_W[0]) & MASK, (k1 + PHILOX_W[1]) & MASK
    return [c0, c1, c2, c3]


def box_muller(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Two independent standard normals from two uniform 32-bit words (Box and Muller 1958):
    r = sqrt(-2 log u1), theta = 2 pi u2, with u1 = (a + 1/2) / 2^32 in (0, 1). In float64, so that
    the CPU and a GPU round alike."""
    u1 = (a.double() + 0.5) * 2.0**-32
    theta = b.double() * (2 * math.pi * 2.0**-32)
    r = torch.sqrt(-2 * torch.log(u1))
    return r * torch.cos(theta), r * torch.sin(theta)


def philox_normal(seed: int, stream: int, index: Tensor, draw: int, count: int, m: int) -> Tensor:
    """Standard normals [len(index), count, m] (float64, on index's device): values 0..m-1 of draws
    draw..draw+count-1 of the streams of examples `index` under (seed, stream). Value j of one draw
    is word j % 4 of Philox at counter (j // 4, draw, index, stream), words 0, 1 and 2, 3 paired
    by Box-Muller; so any value depends only on (seed, stream, index, draw, j)."""
    if not 0 <= stream <= MASK or draw + count > MASK:
        raise BadValue(f"stream {stream} and draw {draw + count - 1} must lie in [0, 2^32)")
    device = index.device
    lanes = (m + 3) // 4
    c0 = torch.arange(lanes, device=device).view(1, 1, lanes)
    c1 = torch.arange(draw, draw + count, device=device).view(1, count, 1)
    c2 = index.view(-1, 1, 1).expand(-1, count, lanes)
    words = philox4x32((c0, c1, c2, torch.full_like(c2, stream)), (seed & MASK, (seed >> 32) & MASK))
    z0, z1 = box_muller(words[0], words[1])
    z2, z3 = box_muller(words[2], words[3])
    return torch.stack((z0, z1, z2, z3), dim=-1).view(len(index), count, 4 * lanes)[..., :m]


def chunk_sizes(m: int):
    """The numbers of draws made at a time for values of m elements: one first (x_T is one draw),
    then as many as fit in CHUNK_ELEMENTS (at most MAX_CHUNK, at least 1), so that small images
    cost a generator call per example every few steps rather than every step. Depends on m only,
    so the CPU streams are the same for any batch."""
    return itertools.chain([1], itertools.repeat(max(1, min(MAX_CHUNK, CHUNK_ELEMENTS // max(m, 1)))))


class PerSampleNoise:
    """Standard normal noise for n examples, each from the stream of its own index."""

    def __init__(
        self,
        seed: int,
        indices: Tensor | range,
        stream: int = 0,
        device: torch.device | str = "cpu",
        generators: Sequence[torch.Generator] | None = None,
        philox: bool | None = None,
    ):
        self.seed, self.stream, self.device = int(seed) & (2**64 - 1), stream, torch.device(device)
        self._range = indices if isinstance(indices, range) else None  # made on the device as needed
        self.indices = torch.as_tensor(list(indices) if isinstance(indices, range) else indices)
        if len(self.indices) and not 0 <= int(self.indices.min()) <= int(self.indices.max()) <= MASK:
            raise BadValue("example indices must lie in [0, 2^32)")
        self.generators = generators  # one per example, given by the caller: used as they are
        self.philox = philox  # None: Philox on a GPU, per-example mt19937 on the CPU
        self.draws = 0  # calls of randn so far
        self._views: Sequence[Tensor] = ()  # draws self._first.. made ahead, each [n, *shape]
        self._first, self._key = 0, None
        self._sizes = None  # the chunk sizes still to come (fixed by the first shape drawn)
        self._gens: list[torch.Generator] | None = None

    @classmethod
    def from_seed(
        cls,
        seed: int,
        n: int,
        start: int = 0,
        device: str = "cpu",
        stream: int = 0,
        philox: bool | None = None,
    ) -> PerSampleNoise:
        """Examples start..start+n-1 of a run seeded with `seed` (the same for any split of the
        indices into batches or processes); `stream` > 0 names another independent stream of
        the same examples (e.g. a sampler's per-step noise beside x_T). `device` is where
        `randn` draws when it is not told a device; `philox=True` draws a GPU's noise on the CPU
        too (slower there), False a CPU's on any device (then copied)."""
        return cls(seed, range(start, start + n), stream, device, philox=philox)

    @classmethod
    def from_generators(cls, generator: Generators | PerSampleNoise, n: int) -> PerSampleNoise:
        """The `generator` argument of a sampler, as the PerSampleNoise of its n examples. From one
        generator (one seed drawn from it, so example i's stream does not depend on n; a
        generator on a GPU costs one host sync here, before any sampling loop), a list of n
        generators (one per example, used as they are), a PerSampleNoise (used as it is), or
        None (fresh entropy, not the global RNG)."""
        if isinstance(generator, PerSampleNoise):
            return generator
        if generator is None:
            generator = torch.Generator()
            generator.seed()
        if isinstance(generator, torch.Generator):
            seed = torch.randint(0, 2**62, (), generator=generator, device=generator.device).item()
            return cls(seed, range(n), device=generator.device)
        if len(generator) != n:
            raise BadValue(f"got {len(generator)} generators for a batch of {n}: pass one per example")
        return cls(0, range(n), generators=list(generator))

    def randn(self, shape: Sequence[int], device=None, dtype=None) -> Tensor:
        """The next draw of every example's stream: noise [n, *shape] on `device`."""
        device = torch.device(device) if device is not None else self.device
        shape = tuple(shape)
        if self.generators is not None:
            return self._draw_from_generators(shape, device, dtype)
        views, key = self._views, (shape, device)
        if not self._first <= self.draws < self._first + len(views):
            views = self._refill(shape, device)
        elif key != self._key:
            self._sizes = itertools.repeat(1)  # the chunk layout was for another shape: one by one
            views = self._refill(shape, device)
        z = views[self.draws - self._first]
        self.draws += 1
        return z if dtype is None or dtype == z.dtype else z.to(dtype)  # a view of the chunk

    def _refill(self, shape: tuple[int, ...], device: torch.device) -> list[Tensor]:
        """Draw the next chunk of draws for every example, starting at draw self.draws."""
        m = math.prod(shape)
        if self._sizes is None:
            self._sizes = chunk_sizes(m)
        count, n = next(self._sizes), len(self.indices)
        if not (device.type != "cpu" if self.philox is None else self.philox):
            z = torch.empty((n, count, *shape))
            for i, g in enumerate(self._cpu_generators()):
                torch.randn((count, *shape), generator=g, out=z[i])
            z = z.to(device, non_blocking=True)
        else:
            r = self._range  # no host-to-device copy for a range of indices
            index = (
                torch.arange(r.start, r.stop, device=device)
                if r
                else self.indices.to(device, non_blocking=True)
            )
            z = philox_normal(self.seed, self.stream, index, self.draws, count, m)
            z = z.to(torch.float32).view(n, count, *shape)
        self._views, self._first, self._key = z.unbind(1), self.draws, (shape, device)
        return self._views

    def _cpu_generators(self) -> list[torch.Generator]:
        """One mt19937 generator per example (made once per PerSampleNoise), seeded by
        SplitMix64's finaliser (Steele et al. 2014) of the index under a key mixed from (seed,
        stream) by numpy's SeedSequence: vectorised, a few microseconds per example."""
        if self._gens is None:
            key = np.uint64(seed_for(self.seed, self.stream, 2**32))
            with np.errstate(over="ignore"):
                z = key + self.indices.numpy().astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
                z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
                z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
                z = z ^ (z >> np.uint64(31))
            self._gens = [torch.Generator().manual_seed(int(s)) for s in z.tolist()]
        return self._gens

    def _draw_from_generators(self, shape, device, dtype) -> Tensor:
        parts = [torch.randn((1, *shape), generator=g, device=g.device) for g in self.generators]
        z = torch.cat(parts)
        if z.device.type == "cpu" and device.type == "cuda":
            z = z.pin_memory()  # so the copy to the GPU does not block the host
            return z.to(device=device, dtype=dtype, non_blocking=True)
        return z.to(device=device, dtype=dtype)
