"""DDIM / DDPM samplers and inversion against closed forms and an exact Gaussian oracle. What
every sampler promises (finite at zero SNR, x0 at the last step, no global RNG, any dtype and
shape, no state) is tested once for all in test_sampler_contract.py."""

import math

import pytest
import torch
from oracles import MU, SCHED, GaussianOracle, S, oracle, x_T

import ddim
from ddim import make_predictor, make_timesteps
from ddim.samplers import ddim as ddim_sampler
from ddim.samplers import ddim_sigma, ddpm, posterior_variance


def test_sigma_eta_one_is_the_posterior_std():
    a = SCHED.alphas_cumprod.tolist()
    for t, s in ((999, 979), (500, 400), (10, 0)):
        assert ddim_sigma(a[t], a[s], 1.0) ** 2 == pytest.approx(posterior_variance(a[t], a[s]), rel=1e-12)
        # beta-tilde = (1 - a_s)/(1 - a_t) (1 - a_t/a_s), Ho et al. eq. 7
        expected = (1 - a[s]) / (1 - a[t]) * (1 - a[t] / a[s])
        assert posterior_variance(a[t], a[s]) == pytest.approx(expected, rel=1e-14)
        assert ddim_sigma(a[t], a[s], 0.5) == pytest.approx(0.5 * expected**0.5)


def test_ddim_eta_one_full_grid_is_the_ddpm_ancestral_update():
    model = oracle()
    x = x_T(8)
    T = SCHED.T
    noise = torch.randn(T, *x.shape, generator=torch.Generator().manual_seed(1), dtype=x.dtype)
    grid = list(range(T - 1, -1, -1))
    predict = make_predictor(model, SCHED)
    a = ddim_sampler(predict, x, SCHED, grid, eta=1.0, noise=noise)
    b = ddpm(predict, x, SCHED, grid, noise=noise)
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    # one DDPM step by hand (Ho et al. Alg. 2): (x_t - beta/sqrt(1-a) eps)/sqrt(1-beta) + sigma z
    t = 600
    at, ap, beta = (
        SCHED.alphas_cumprod[t].item(),
        SCHED.alphas_cumprod[t - 1].item(),
        SCHED.betas[t].item(),
    )
    eps = model(x, torch.full((8,), t))
    by_hand = (x - beta / (1 - at) ** 0.5 * eps) / (1 - beta) ** 0.5 + posterior_variance(
        at, ap
    ) ** 0.5 * noise[0]
    one = ddpm(predict, x, SCHED, [t, t - 1], noise=noise[:2])
    step = []
    ddpm(
        predict,
        x,
        SCHED,
        [t, t - 1],
        noise=noise[:2],
        callback=lambda i, tt, xx, x0: step.append(xx),
    )
    torch.testing.assert_close(step[0], by_hand, rtol=1e-10, atol=1e-10)
    # the last step goes to clean data: no noise, the x0 estimate at t - 1 (DDIM eq. 12, a' = 1)
    eps_last = model(by_hand, torch.full((8,), t - 1))
    x0_last = (by_hand - (1 - ap) ** 0.5 * eps_last) / ap**0.5
    torch.testing.assert_close(one, x0_last, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_ddim_eta0_converges_to_the_exact_flow(prediction):
    """The oracle is exact, so the remaining error is DDIM's discretisation error: first order."""
    x = x_T(256)
    a_T = SCHED.alphas_cumprod[-1].item()
    exact = oracle().flow(x, a_T)
    errors = []
    for steps in (10, 20, 40, 80):
        out = ddim.sample(oracle(prediction), x, SCHED, steps=steps, prediction=prediction)
        errors.append((out - exact).abs().max().item())
    # measured (all three targets alike): 0.526, 0.273, 0.140, 0.0710 (max over 256 draws, the
    # narrow s = 0.05 coordinate dominating): the error halves as steps double, i.e. order 1
    for coarse, fine in zip(errors, errors[1:]):
        assert 0.45 < fine / coarse < 0.56
    assert errors[-1] < 0.08


def exact_moments(sampler: str, eta: float, mu, s, steps: int = 100):
    """Mean and variance of what a stochastic sampler returns from x_T ~ N(0, 1) with the exact
    oracle, in closed form: every step is affine in x plus Gaussian noise, x' = A x + B + sd z.
    x0 = mu + k (x - sqrt(a) mu), k = sqrt(a) s^2 / (a s^2 + 1 - a) (tests/oracles.py); DDIM eq. 12
    for "ddim"; Ho et al. eq. 7 (posterior mean) with variance beta-tilde ("ddpm") or beta
    ("ddpm_sigma_hat", DDIM Table 1's sigma-hat)."""
    a = SCHED.alphas_cumprod
    grid = make_timesteps(SCHED.T, steps, "trailing").tolist()
    m, v = torch.zeros_like(mu), torch.ones_like(mu)
    for i, t in enumerate(grid):
        at, ap = a[t].item(), a[grid[i + 1]].item() if i + 1 < len(grid) else 1.0
        k = at**0.5 * s**2 / (at * s**2 + 1 - at)
        if ap == 1.0:  # the last step returns the x0 estimate
            return mu + k * (m - at**0.5 * mu), k**2 * v
        tilde = (1 - ap) / (1 - at) * (1 - at / ap)  # beta-tilde, Ho et al. eq. 7
        if sampler == "ddim":
            var = eta**2 * tilde  # DDIM eq. 16
            c_x = ((1 - ap - var) / (1 - at)) ** 0.5
            c_x0 = ap**0.5 - c_x * at**0.5
        else:
            beta = 1 - at / ap
            c_x0, c_x = ap**0.5 * beta / (1 - at), (1 - beta) ** 0.5 * (1 - ap) / (1 - at)
            var = tilde if sampler == "ddpm" else beta
        A, B = c_x0 * k + c_x, c_x0 * (1 - k * at**0.5) * mu
        m, v = A * m + B, A**2 * v + var


@pytest.mark.parametrize(
    "eta,sampler", [(1.0, "ddim"), (0.5, "ddim"), (0.0, "ddpm"), (0.0, "ddpm_sigma_hat")]
)
def test_stochastic_samplers_have_the_exact_moments(eta, sampler):
    mu = torch.tensor([0.5, -1.0, 2.0, 0.0], dtype=torch.float64)
    s = torch.tensor([0.5, 1.0, 0.3, 2.0], dtype=torch.float64)
    n, g = 8000, torch.Generator().manual_seed(3)
    out = ddim.sample(GaussianOracle(SCHED, mu, s), x_T(n), SCHED, 100, eta, sampler, generator=g)
    mean, var = exact_moments(sampler, eta, mu, s)
    # sampling error with 8000 draws: the mean's standard error is sd / 89, the sd's 0.8%;
    # measured at most 2.1 standard errors and 0.85%
    assert ((out.mean(0) - mean) / (var / n).sqrt()).abs().max() < 4.5
    assert (out.std(0) / var.sqrt() - 1).abs().max() < 0.025


def test_the_sd_band_tells_the_two_ddpm_variances_apart():
    mu = torch.tensor([0.5, -1.0, 2.0, 0.0], dtype=torch.float64)
    s = torch.tensor([0.5, 1.0, 0.3, 2.0], dtype=torch.float64)
    tilde, hat = exact_moments("ddpm", 0.0, mu, s)[1], exact_moments("ddpm_sigma_hat", 0.0, mu, s)[1]
    assert ((hat / tilde).sqrt() - 1).max() > 4 * 0.025  # 13% in the third coordinate


def test_inversion_reconstructs_with_error_shrinking_in_steps():
    x0 = MU + S * torch.randn(128, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float64)

    def error(steps, refine=0):
        z = ddim.invert(oracle(), x0, SCHED, steps=steps, refine=refine)
        return (ddim.sample(oracle(), z, SCHED, steps=steps) - x0).abs().max().item()

    errors = [error(s) for s in (10, 20, 40, 80)]
    # measured: 0.405, 0.232, 0.153, 0.0886 (ratios 0.57, 0.66, 0.58)
    for coarse, fine in zip(errors, errors[1:]):
        assert fine < 0.75 * coarse
    assert errors[-1] < 0.1
    # fixed-point refinement makes each upward move the inverse of the decoder's step:
    # measured 0.0218 with 5 iterations at 40 steps, against 0.153 without
    assert error(40, refine=5) < 0.25 * errors[2]


def test_inversion_approaches_the_exact_encoder():
    x0 = MU + S * torch.randn(64, 4, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    a_T = SCHED.alphas_cumprod[-1].item()
    exact = oracle().encode(x0, a_T)
    err = [(ddim.invert(oracle(), x0, SCHED, steps=s) - exact).abs().max().item() for s in (20, 80)]
    assert err[1] < 0.45 * err[0]  # measured 1.87 -> 0.69


def test_trajectory_holds_every_step():
    x = x_T(4)
    traj = ddim.sample(oracle(), x, SCHED, steps=5, return_all_timesteps=True)
    assert traj.xs.shape == (6, 4, 4) and traj.x0s.shape == (5, 4, 4)
    assert torch.equal(traj.xs[0], x) and torch.equal(traj.xs[-1], traj.samples)
    assert traj.timesteps.tolist() == [999, 799, 599, 399, 199]
    torch.testing.assert_close(traj.samples, ddim.sample(oracle(), x, SCHED, steps=5), rtol=0, atol=0)


def test_model_calls_equal_steps_and_grid_is_respected():
    m = oracle()
    ts = []
    ddim.sample(lambda x, t: (ts.append(int(t[0])), m(x, t))[1], x_T(2), SCHED, spacing=[900, 450, 3])
    assert ts == [900, 450, 3]


def test_same_seed_same_image_whatever_the_batch_size():
    x = x_T(8)
    full = ddim.sample(oracle(), x, SCHED, steps=10, eta=1.0, generator=torch.Generator().manual_seed(7))
    part = ddim.sample(oracle(), x[:3], SCHED, steps=10, eta=1.0, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(full[:3], part, rtol=0, atol=0)
    again = ddim.sample(oracle(), x, SCHED, steps=10, eta=1.0, generator=torch.Generator().manual_seed(7))
    other = ddim.sample(oracle(), x, SCHED, steps=10, eta=1.0, generator=torch.Generator().manual_seed(8))
    assert torch.equal(full, again) and not torch.allclose(full, other)


@pytest.mark.parametrize("dtype", [torch.bfloat16])
def test_dtype_is_kept(dtype):
    out = ddim.sample(oracle(), x_T(4).to(dtype), SCHED, steps=5, eta=0.5, generator=torch.Generator())
    assert out.dtype == dtype and torch.isfinite(out.float()).all()


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_zero_terminal_snr_follows_the_exact_flow(prediction):
    """At a_T = 0 the exact flow is x0 = mu + s x_T (tests/oracles.py with a_T = 0)."""
    z = SCHED.rescale_zero_terminal_snr()
    x = x_T(16)
    out = ddim.sample(oracle(prediction, z), x, z, steps=100, prediction=prediction)
    # measured 0.052 (DDIM's first-order error at 100 steps; 0.065 at 80 on SCHED itself)
    assert (out - oracle(prediction, z).flow(x, 0.0)).abs().max() < 0.07
    z_T = ddim.invert(oracle(prediction, z), out, z, steps=20, prediction=prediction)
    assert torch.isfinite(z_T).all()


def test_slerp():
    z0, z1 = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(ddim.slerp(z0, z1, 0.0), z0)
    torch.testing.assert_close(ddim.slerp(z0, z1, 1.0), z1)
    assert ddim.slerp(z0, z1, 0.5).shape == z0.shape
    # on a sphere: slerp of two equal-norm vectors keeps that norm; a straight line would not
    u = torch.nn.functional.normalize(torch.randn(1, 64), dim=1)
    w = torch.nn.functional.normalize(torch.randn(1, 64), dim=1)
    assert ddim.slerp(u, w, 0.3).norm().item() == pytest.approx(1.0, rel=1e-6)
    assert ((u + w) / 2).norm().item() < 0.9
    torch.testing.assert_close(ddim.slerp(u, u, 0.4), u)  # parallel: no division by sin(0)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"eta": -0.1}, "eta must be >= 0"),
        ({"sampler": "heun2"}, "unknown sampler 'heun2'"),
        ({"spacing": "even"}, "unknown spacing"),
        ({"prediction": "score"}, "unknown prediction"),
        ({"steps": 0}, "steps must be"),
        ({"steps": 1001}, "steps must be"),
        ({"spacing": [5, 10]}, "strictly decreasing"),
        ({"sampler": "ddpm", "eta": 0.5}, "has no eta"),
    ],
)
def test_bad_input_is_refused_clearly(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ddim.sample(oracle(), x_T(2), SCHED, **kwargs)


def test_math_module_is_exact_for_known_step():
    # one DDIM eta=0 step from t to s with the oracle equals eq. 12 by hand
    x = x_T(3)
    a = SCHED.alphas_cumprod
    t, s = 999, 499
    eps = oracle()(x, torch.full((3,), t))
    x0 = (x - (1 - a[t]).sqrt() * eps) / a[t].sqrt()
    by_hand = a[s].sqrt() * x0 + (1 - a[s]).sqrt() * eps
    got = []
    ddim.sample(oracle(), x, SCHED, spacing=[t, s], callback=lambda i, tt, xx, x0: got.append(xx))
    torch.testing.assert_close(got[0], by_hand, rtol=1e-12, atol=1e-12)
    assert math.isfinite(got[0].sum().item())
