"""Per-example noise streams: Philox against its published answers, the statistics of both
backends, and independence of batch size, of how indices are split, and of the chunking."""

import pytest
import torch
from scipy import stats

import ddim
from ddim import PerSampleNoise
from ddim.noise import MASK, philox4x32, philox_normal

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.parametrize(
    "counter, key, expected",
    [  # Random123's known-answer vectors (kat_vectors, philox4x32 10)
        ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
        ((MASK,) * 4, (MASK, MASK), (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
        (
            (0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344),
            (0xA4093822, 0x299F31D0),
            (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1),
        ),
    ],
)
def test_philox_known_answers(counter, key, expected):
    words = philox4x32([torch.tensor([c]) for c in counter], key)
    assert tuple(int(w) for w in words) == expected


def _moments_and_ks(z):
    z = z.double().flatten()
    n = len(z)
    assert abs(z.mean().item()) < 4 / n**0.5
    assert abs(z.var().item() - 1) < 4 * (2 / n) ** 0.5
    assert stats.kstest(z.numpy(), "norm").pvalue > 1e-3


@pytest.mark.parametrize("philox", [True, False])
def test_statistics_and_independence(philox):
    noise = PerSampleNoise.from_seed(11, 64, start=1000, philox=philox)
    draws = torch.stack([noise.randn((2, 16)) for _ in range(8)])  # [draw, example, 2, 16]
    _moments_and_ks(draws)
    other_stream = PerSampleNoise.from_seed(11, 64, start=1000, stream=1, philox=philox).randn((2, 16))
    flat = draws.flatten(2)
    n = flat.shape[-1]
    pairs = {
        "examples": (flat[0, :-1], flat[0, 1:]),
        "draws": (flat[:-1], flat[1:]),
        "streams": (flat[0], other_stream.flatten(1)),
        "neighbours within an example": (flat[..., :-1], flat[..., 1:]),
    }
    for name, (a, b) in pairs.items():
        r = torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1].item()
        assert abs(r) < 4 / a.numel() ** 0.5, (name, r, n)


def test_box_muller_tails():
    z = philox_normal(0, 0, torch.arange(4), 0, 1, 250_000).flatten()
    _moments_and_ks(z)
    for k in (2, 3):  # two-sided tail mass P(|z| > k)
        p = 2 * stats.norm.sf(k)
        assert abs((z.abs() > k).double().mean().item() - p) < 5 * (p / len(z)) ** 0.5


def test_philox_value_depends_only_on_its_counter():
    index = torch.tensor([7, 3, 900])
    whole = philox_normal(5, 2, index, 4, 6, 10)  # draws 4..9
    assert torch.equal(whole[1:2, 2:5], philox_normal(5, 2, index[1:2], 6, 3, 10))
    assert torch.equal(whole[:, :, :7], philox_normal(5, 2, index, 4, 6, 7))  # a shorter draw
    assert not torch.equal(whole, philox_normal(6, 2, index, 4, 6, 10))
    assert not torch.equal(whole, philox_normal(5, 3, index, 4, 6, 10))


@pytest.mark.parametrize("philox", [True, False])
def test_streams_depend_on_index_not_batch(philox):
    def draws(seed, n, start, k, shape=(5,)):
        noise = PerSampleNoise.from_seed(seed, n, start=start, philox=philox)
        return torch.stack([noise.randn(shape) for _ in range(k)])

    whole, part = draws(3, 200, 0, 40), draws(3, 70, 100, 40)
    assert torch.equal(whole[:, 100:170], part)
    assert not torch.equal(whole[:, :70], draws(4, 70, 0, 40))
    # draws of each example are distinct (the chunks do not repeat)
    assert len(torch.unique(whole[:, 0, 0])) == 40


@pytest.mark.parametrize("philox", [True, False])
def test_a_change_of_shape_keeps_the_invariance(philox):
    def draws(n, start):
        noise = PerSampleNoise.from_seed(9, n, start=start, philox=philox)
        first = [noise.randn((3,)) for _ in range(3)]
        return torch.cat([*first, *(noise.randn((2, 2)).flatten(1) for _ in range(3))], 1)

    assert torch.equal(draws(10, 0)[4:9], draws(5, 4))


def test_philox_draw_on_the_cpu_is_the_gpu_draw():
    noise = PerSampleNoise.from_seed(1, 4, philox=True)
    z = noise.randn((3, 5))
    assert torch.equal(
        z.double(), philox_normal(1, 0, torch.arange(4), 0, 1, 15).view(4, 3, 5).float().double()
    )


def test_split_of_one_generator_keeps_the_first_examples():
    small = PerSampleNoise.from_generators(torch.Generator().manual_seed(0), 3).randn((4,))
    big = PerSampleNoise.from_generators(torch.Generator().manual_seed(0), 150).randn((4,))
    assert torch.equal(small, big[:3])
    again = PerSampleNoise.from_generators(torch.Generator().manual_seed(1), 3).randn((4,))
    assert not torch.equal(small, again)


def test_list_of_generators_is_used_per_example():
    gens = [torch.Generator().manual_seed(i) for i in range(3)]
    z = PerSampleNoise.from_generators(gens, 3).randn((2,))
    assert torch.equal(z[1], torch.randn(2, generator=torch.Generator().manual_seed(1)))


def test_global_rng_untouched():
    state = torch.get_rng_state()
    PerSampleNoise.from_seed(0, 5).randn((3,))
    PerSampleNoise.from_generators(None, 5).randn((3,))
    assert torch.equal(state, torch.get_rng_state())


@pytest.mark.parametrize("philox", [True, False])
def test_sample_seeded_does_not_depend_on_batching(philox, monkeypatch):
    sched = ddim.NoiseSchedule.linear(100)
    model = lambda x, t: 0.5 * x  # noqa: E731
    opts = dict(steps=10, eta=1.0)
    if philox:  # the GPU's noise, drawn on the CPU
        from_seed = PerSampleNoise.from_seed.__func__
        monkeypatch.setattr(
            PerSampleNoise,
            "from_seed",
            classmethod(lambda cls, *a, **k: from_seed(cls, *a, **k, philox=True)),
        )
    whole = ddim.sample_seeded(model, sched, (2, 3), seed=5, start=0, n=130, **opts)
    parts = [
        ddim.sample_seeded(model, sched, (2, 3), seed=5, start=s, n=k, **opts) for s, k in ((0, 7), (7, 123))
    ]
    assert torch.equal(whole, torch.cat(parts))
    other = ddim.sample_seeded(model, sched, (2, 3), seed=6, start=0, n=7, **opts)
    assert not torch.allclose(other, whole[:7])


@pytest.mark.cuda
@cuda
def test_cuda_philox_matches_the_cpu():
    index = torch.arange(1000, 1064)
    cpu = philox_normal(3, 1, index, 0, 4, 3 * 8 * 8)
    gpu = philox_normal(3, 1, index.cuda(), 0, 4, 3 * 8 * 8)
    assert torch.allclose(gpu.cpu(), cpu, rtol=0, atol=1e-12)
    z = PerSampleNoise.from_seed(3, 64, start=1000, stream=1).randn((3, 8, 8), device="cuda")
    assert z.device.type == "cuda" and torch.equal(z.cpu(), cpu[:, 0].float().view(64, 3, 8, 8))


@pytest.mark.cuda
@cuda
def test_cuda_generators_and_pinned_copies():
    gens = [torch.Generator("cuda").manual_seed(i) for i in range(3)]
    z = PerSampleNoise.from_generators(gens, 3).randn((4,), device="cuda")
    assert torch.equal(z[2], torch.randn(4, generator=torch.Generator("cuda").manual_seed(2), device="cuda"))
    one = PerSampleNoise.from_generators(torch.Generator("cuda").manual_seed(0), 5).randn((4,), device="cuda")
    assert one.device.type == "cuda" and one.shape == (5, 4)
    cpu_gens = [torch.Generator().manual_seed(i) for i in range(3)]
    z = PerSampleNoise.from_generators(cpu_gens, 3).randn((4,), device="cuda")  # a pinned, non-blocking copy
    torch.cuda.synchronize()
    assert torch.equal(z[1].cpu(), torch.randn(4, generator=torch.Generator().manual_seed(1)))
