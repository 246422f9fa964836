"""Per-example noise streams: independent of batch size and of how indices are split."""

import torch

from ddim import PerSampleNoise


def test_streams_depend_on_index_not_batch():
    whole = PerSampleNoise.from_seed(3, 200).randn((5,))
    part = PerSampleNoise.from_seed(3, 70, start=100).randn((5,))
    assert torch.equal(whole[100:170], part)
    # second draws too (the per-step noise of a stochastic sampler)
    a, b = PerSampleNoise.from_seed(3, 200), PerSampleNoise.from_seed(3, 5, start=60)
    a.randn((5,)), b.randn((5,))
    assert torch.equal(a.randn((5,))[60:65], b.randn((5,)))
    assert not torch.equal(whole, PerSampleNoise.from_seed(4, 200).randn((5,)))


def test_split_of_one_generator_keeps_the_first_examples():
    small = PerSampleNoise.split(torch.Generator().manual_seed(0), 3).randn((4,))
    big = PerSampleNoise.split(torch.Generator().manual_seed(0), 150).randn((4,))
    assert torch.equal(small, big[:3])
    z = big.flatten()
    assert abs(z.mean().item()) < 0.15 and abs(z.std().item() - 1) < 0.1


def test_list_of_generators_is_used_per_example():
    gens = [torch.Generator().manual_seed(i) for i in range(3)]
    z = PerSampleNoise.split(gens, 3).randn((2,))
    assert torch.equal(z[1], torch.randn(2, generator=torch.Generator().manual_seed(1)))


def test_sample_seeded_does_not_depend_on_batching():
    import ddim

    sched = ddim.NoiseSchedule.linear(100)
    model = lambda x, t: 0.5 * x  # noqa: E731
    opts = dict(steps=10, eta=1.0)
    whole = ddim.sample_seeded(model, sched, (2, 3), seed=5, start=0, n=130, **opts)
    parts = [
        ddim.sample_seeded(model, sched, (2, 3), seed=5, start=s, n=k, **opts) for s, k in ((0, 7), (7, 123))
    ]
    assert torch.equal(whole, torch.cat(parts))
    other = ddim.sample_seeded(model, sched, (2, 3), seed=6, start=0, n=7, **opts)
    assert not torch.allclose(other, whole[:7])
