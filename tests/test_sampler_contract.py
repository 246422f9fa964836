"""The contract every registered sampler keeps (DESIGN.md, "A sampler is a pure function"), tested
for each entry of `ddim.SAMPLERS`, including any added later:

- finite at zero terminal SNR, with eps, x0 and v prediction, and still a sample of the data;
- the last step returns the x0 estimate (no residual noise) and the callback sees every step;
- the global RNG is never touched; randomness comes from `generator` alone;
- any float dtype (float32, float64) and any data shape ([N, D], [N, C, H, W]) in and out;
- no state kept between calls: the same call gives the same result after other calls;
- the registry's entry tells the truth about eta (its call count: test_higher_order.py).
"""

import inspect

import pytest
import torch
from oracles import MU, SCHED, GaussianOracle, S, oracle, x_T

import ddim
from ddim import SAMPLERS

ZERO_SNR = SCHED.rescale_zero_terminal_snr()


def draw(name: str, model, x, schedule=SCHED, steps=8, seed=0, **kw):
    """`ddim.sample` with a seeded generator (used by the stochastic samplers only); 8 steps, as heun
    refuses fewer on SCHED's karras grid (sampling.check_noise_left)."""
    gen = torch.Generator().manual_seed(seed)
    return ddim.sample(model, x, schedule, steps, sampler=name, generator=gen, **kw)


@pytest.mark.parametrize("name", SAMPLERS)
@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_zero_terminal_snr_gives_a_finite_sample_of_the_data(name, prediction):
    """At a_T = 0, x0 = (x - sqrt(1 - a) eps) / sqrt(a) is 0/0: a sampler must not divide by it."""
    n = 256
    for dtype in (torch.float32, torch.float64):
        out = draw(
            name, oracle(prediction, ZERO_SNR), x_T(n, dtype=dtype), ZERO_SNR, 30, prediction=prediction
        )
        assert out.dtype == dtype and torch.isfinite(out).all()
    # exact data: N(MU, S^2); the mean of n draws is within 4 standard errors (plus the 30-step
    # discretisation error, at most 0.04 measured) of MU, in every coordinate
    assert ((out.mean(0) - MU).abs() < 4 * S / n**0.5 + 0.05).all(), out.mean(0) - MU


@pytest.mark.parametrize("name", SAMPLERS)
def test_last_step_returns_the_x0_estimate_and_the_callback_sees_every_step(name):
    seen = []
    traj = draw(name, oracle(), x_T(4), steps=8, return_all_timesteps=True,
                callback=lambda i, t, x, x0: seen.append((i, t)))  # fmt: skip
    assert [i for i, _ in seen] == list(range(8)) and [t for _, t in seen] == traj.timesteps.tolist()
    assert torch.equal(traj.xs[-1], traj.samples)
    torch.testing.assert_close(traj.samples, traj.x0s[-1], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", SAMPLERS)
def test_the_global_rng_is_never_touched(name):
    torch.manual_seed(0)
    before = torch.get_rng_state()
    a = draw(name, oracle(), x_T(4), seed=3)
    assert torch.equal(torch.get_rng_state(), before)
    # randomness, if any, comes from the generator alone: the same seed gives the same sample
    assert torch.equal(a, draw(name, oracle(), x_T(4), seed=3))


@pytest.mark.parametrize("name", SAMPLERS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(5, 3), (3, 2, 5, 7)])
def test_any_dtype_and_shape(name, dtype, shape):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=dtype)
    model = GaussianOracle(SCHED, torch.tensor(0.5), torch.tensor(0.3))
    out = draw(name, model, x, spacing="logsnr")
    assert out.shape == x.shape and out.dtype == dtype and torch.isfinite(out).all()
    # each example is sampled on its own: the first example alone gives the same result
    alone = draw(name, model, x[:1], spacing="logsnr")
    deterministic = torch.equal(draw(name, model, x, seed=1, spacing="logsnr"), out)
    if deterministic:  # a stochastic sampler's noise is per example too, but drawn in batch order
        torch.testing.assert_close(alone, out[:1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", SAMPLERS)
def test_no_state_survives_a_call(name):
    first = draw(name, oracle(), x_T(8), steps=10, spacing="logsnr")
    draw(name, oracle("v"), x_T(3, seed=1), steps=7, spacing="trailing", prediction="v")  # in between
    assert torch.equal(first, draw(name, oracle(), x_T(8), steps=10, spacing="logsnr"))


@pytest.mark.parametrize("name", SAMPLERS)
def test_the_registry_says_which_samplers_take_eta(name):
    """`ddim.sample` passes eta by the registry's `takes_eta`: the entry agrees with the function,
    eta reaches a sampler that takes it, and one that does not refuses eta != 0."""
    entry = SAMPLERS[name]
    assert entry.takes_eta == ("eta" in inspect.signature(entry.fn).parameters)
    if entry.takes_eta:
        assert not torch.equal(draw(name, oracle(), x_T(4), eta=0.5), draw(name, oracle(), x_T(4)))
    else:
        with pytest.raises(ValueError, match="has no eta"):
            draw(name, oracle(), x_T(4), eta=0.5)
