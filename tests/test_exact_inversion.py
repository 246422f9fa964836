"""Exactly invertible samplers (samplers/exact.py) and the library's entry points `sample` /
`invert`: exact round trips, the update formulas against closed forms, the latent's form,
interpolation, inference mode, non-finite results and the eta bound."""

import math

import pytest
import torch
from oracles import GaussianOracle

import ddim
from ddim.errors import BadValue, NonFinite
from ddim.models.unet import UNet, UNetConfig
from ddim.prediction import make_predictor
from ddim.samplers.exact import COEFS, exact_sample

SCHED = ddim.NoiseSchedule.linear(1000)
MU, S = torch.tensor([0.5, -1.0], dtype=torch.float64), torch.tensor([0.5, 2.0], dtype=torch.float64)
BOUND = {torch.float64: 1e-10, torch.float32: 1e-4}  # issue #8: relative error of the round trip


def oracle(prediction="eps", schedule=SCHED):
    return GaussianOracle(schedule, MU, S, prediction)


def data(n, dtype=torch.float64, seed=0):
    return (
        torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * S + MU
    ).to(dtype)


def tiny_unet():
    """An untrained UNet with random weights (not the zero-initialised output layer, which would
    make eps = 0): a deterministic non-linear function of (x_t, t)."""
    net = UNet(UNetConfig(in_channels=1, base_channels=4, channel_mult=(1,), groups=2, num_heads=1)).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return lambda x, t: net(x.float(), t).to(x.dtype)


def round_trip_error(model, x0, steps, sampler, **kw):
    z = ddim.invert(model, x0, SCHED, steps=steps, sampler=sampler, **kw)
    assert z.is_complex() and z.shape == x0.shape and z.real.dtype == x0.dtype
    out = ddim.sample(model, z, SCHED, steps=steps, sampler=sampler, **kw)
    assert out.dtype == x0.dtype and out.shape == x0.shape
    return ((out - x0).double().norm() / x0.double().norm()).item()


# ---- exactness -----------------------------------------------------------------------------------
@pytest.mark.parametrize("sampler", ddim.EXACT_INVERTIBLE)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_round_trip_on_the_oracle_is_exact(sampler, dtype, prediction):
    x0 = data(64, dtype)
    for steps in (1, 2, 10, 50, 1000) if prediction == "eps" else (1, 2, 10, 50):
        err = round_trip_error(oracle(prediction), x0, steps, sampler, prediction=prediction)
        assert err <= BOUND[dtype], (steps, err)  # measured <= 5e-15 (float64), 3e-6 (float32)


@pytest.mark.parametrize("sampler", ddim.EXACT_INVERTIBLE)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_round_trip_on_an_untrained_unet_is_exact(sampler, dtype):
    model = tiny_unet()
    x0 = (torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(1)) * 2 - 1).to(dtype)
    for steps in (1, 2, 10, 50):
        assert round_trip_error(model, x0, steps, sampler) <= BOUND[dtype]  # measured <= 7e-6 (f32)
    # DDIM inversion of the same model is far from exact: the exact one is not exact by accident
    z = ddim.invert(model, x0, SCHED, steps=10)
    assert (ddim.sample(model, z, SCHED, steps=10) - x0).norm() / x0.norm() > 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("sampler", ddim.EXACT_INVERTIBLE)
def test_round_trip_on_an_untrained_unet_at_1000_steps(sampler):
    # float32, where the bound is tight (measured 2.6e-6 bdia, 7.2e-6 belm); float64 measured
    # 1.9e-15 and 1.2e-14 here, and both dtypes run at 1000 steps on the oracle above (2,000
    # UNet calls each: ~12 s)
    x0 = torch.rand(1, 1, 4, 4, generator=torch.Generator().manual_seed(1)) * 2 - 1
    assert round_trip_error(tiny_unet(), x0, 1000, sampler) <= BOUND[torch.float32]


@pytest.mark.parametrize("sampler", ddim.EXACT_INVERTIBLE)
def test_round_trip_holds_with_clipping_and_any_grid(sampler):
    x0 = data(32).clamp(-1, 1)
    for spacing in ("logsnr", "karras", [900, 640, 333, 120, 7]):
        kw = dict(spacing=spacing, clip=1.0, prediction="v")
        assert (
            round_trip_error(oracle("v"), x0, None if isinstance(spacing, list) else 12, sampler, **kw)
            < 1e-12
        )


# ---- the update rules against closed forms -------------------------------------------------------
def run_on_path(method, path, a):
    """Run the update of `method` on states where ybar = y / sqrt(a) follows ybar = path(sbar),
    sbar = sqrt((1 - a)/a), with the model returning the exact derivative eps = dybar/dsbar
    (the probability-flow ODE in these coordinates, DDIM eq. 14); return the error at the end."""
    sbar = [((1 - ai) / ai) ** 0.5 for ai in a]
    f, df = path
    y = [torch.tensor([ai**0.5 * f(s)], dtype=torch.float64) for ai, s in zip(a, sbar)]
    for k in range(1, len(a) - 1):
        eps = torch.tensor([df(sbar[k])], dtype=torch.float64)
        x0 = y[k] / a[k] ** 0.5 - sbar[k] * eps  # DDIM eq. 12's predicted x0 in these coordinates
        c = COEFS[method](a[k - 1], a[k], a[k + 1])
        got = c[0] * y[k - 1] + c[1] * y[k] + c[2] * eps + c[3] * x0
        assert abs(got.item() - y[k + 1].item()) <= 1e-9 * max(1.0, abs(y[k + 1].item())), (method, k)


def test_belm_integrates_quadratics_exactly_on_any_grid():
    # O-BELM is the 2-step method of order 2 in (sbar, ybar) (Wang et al. 2024, Prop. 3.2)
    a = [SCHED.alphas_cumprod[t].item() for t in (999, 700, 650, 300, 120, 20)] + [1.0]
    run_on_path("belm", (lambda s: 0.3 - 1.7 * s + 0.05 * s * s, lambda s: -1.7 + 0.1 * s), a)
    with pytest.raises(AssertionError):  # but not cubics: the check has teeth
        run_on_path("belm", (lambda s: 0.01 * s**3, lambda s: 0.03 * s**2), a)


def test_bdia_is_exact_for_straight_paths_only():
    # BDIA, gamma = 0 (Zhang et al. 2023, eq. 23): y_n = D(y -> a_n) + y_p - D(y -> a_p), where
    # D(y -> a')/sqrt(a') = ybar + (sbar' - sbar) eps: exact where ybar is linear in sbar
    a = [SCHED.alphas_cumprod[t].item() for t in (999, 700, 650, 300, 120, 20)] + [1.0]
    run_on_path("bdia", (lambda s: 0.3 - 1.7 * s, lambda s: -1.7), a)
    with pytest.raises(AssertionError):
        run_on_path("bdia", (lambda s: 0.05 * s * s, lambda s: 0.1 * s), a)


@pytest.mark.parametrize("sampler", ddim.EXACT_INVERTIBLE)
def test_second_order_on_the_exact_flow(sampler):
    x_T = torch.randn(64, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    a_T = SCHED.alphas_cumprod[-1].item()
    err = [
        (ddim.sample(oracle(), x_T, SCHED, n, sampler=sampler) - oracle().flow(x_T, a_T)).abs().max()
        for n in (20, 40)
    ]
    ddim_err = (ddim.sample(oracle(), x_T, SCHED, 20) - oracle().flow(x_T, a_T)).abs().max()
    # measured (belm, bdia): 20 steps 0.063, 0.038 (ddim 0.45); 40 steps 0.016, 0.013
    assert err[0] < 0.2 * ddim_err and err[1] < 0.4 * err[0]


# ---- the latent ----------------------------------------------------------------------------------
@pytest.mark.parametrize("sampler", ddim.EXACT_INVERTIBLE)
def test_the_latent_is_the_flow_encoding_and_a_real_x_T_samples_fresh(sampler):
    x0, a_T = data(256), SCHED.alphas_cumprod[-1].item()
    z = ddim.invert(oracle(), x0, SCHED, steps=50, sampler=sampler)
    exact = oracle().encode(x0, a_T)  # the probability-flow map x0 -> x_T in closed form
    assert (z.real - exact).abs().max() < 0.05  # measured 0.011 (belm), 0.009 (bdia)
    assert z.imag.std() == pytest.approx(1.0, abs=0.1)  # the second state is near-Gaussian too
    fresh = ddim.sample(oracle(), z.real.clone(), SCHED, steps=50, sampler=sampler)
    assert (fresh - x0).abs().max() < 0.1  # a plain x_T takes one DDIM step first: close, not exact
    assert not torch.equal(fresh, ddim.sample(oracle(), z, SCHED, steps=50, sampler=sampler))


def test_a_latent_is_refused_where_it_cannot_be_used():
    z = ddim.invert(oracle(), data(4), SCHED, steps=5, sampler="belm")
    with pytest.raises(BadValue, match="complex x_T"):
        ddim.sample(oracle(), z, SCHED, steps=5)
    with pytest.raises(BadValue, match="float32 or float64"):
        ddim.invert(oracle(), data(4).bfloat16(), SCHED, steps=5, sampler="belm")
    with pytest.raises(BadValue, match="no encoder"):
        ddim.invert(oracle(), data(4), SCHED, steps=5, sampler="unipc")
    with pytest.raises(BadValue, match="refine"):
        ddim.invert(oracle(), data(4), SCHED, steps=5, sampler="belm", refine=2)
    zero = SCHED.rescale_zero_terminal_snr()
    with pytest.raises(BadValue, match="zero terminal SNR"):
        ddim.invert(oracle(schedule=zero), data(4), zero, steps=5, sampler="belm")


def test_bdia_inverts_exactly_at_zero_terminal_snr():
    zero = SCHED.rescale_zero_terminal_snr()
    x0 = data(16)
    z = ddim.invert(oracle("v", zero), x0, zero, steps=10, sampler="bdia", prediction="v")
    out = ddim.sample(oracle("v", zero), z, zero, steps=10, sampler="bdia", prediction="v")
    assert ((out - x0).norm() / x0.norm()).item() < 1e-12


@pytest.mark.parametrize("sampler", ddim.EXACT_INVERTIBLE)
def test_interpolation_ends_decode_to_the_inputs(sampler):
    a, b = data(1, seed=3), data(1, seed=4)
    za, zb = (ddim.invert(oracle(), x, SCHED, steps=20, sampler=sampler) for x in (a, b))
    z = ddim.interpolate_latents(za, zb, 5)
    assert z.shape == (5, 2) and z.dtype == za.dtype
    out = ddim.sample(oracle(), z, SCHED, steps=20, sampler=sampler)
    assert (out[0] - a[0]).abs().max() < 1e-12 and (out[-1] - b[0]).abs().max() < 1e-12
    # the middle is a proper sample on the way: between the ends, not off the data
    assert ((out[1:-1] - MU) / S).abs().max() < 4


def test_interpolation_of_plain_latents_is_slerp():
    za, zb = torch.randn(2, 3, 8), torch.randn(2, 3, 8)
    z = ddim.interpolate_latents(za, zb, 3)
    assert torch.equal(z[:2], za) and torch.equal(z[4:], zb)
    torch.testing.assert_close(z[2:4], ddim.slerp(za, zb, 0.5))
    with pytest.raises(BadValue, match="n >= 2"):
        ddim.interpolate_latents(za, zb, 1)


def test_trajectory_of_a_latent_pair():
    z = ddim.invert(oracle(), data(4), SCHED, steps=6, sampler="belm")
    traj = ddim.sample(oracle(), z, SCHED, 6, sampler="belm", return_all_timesteps=True)
    assert traj.xs.shape == (7, 4, 2) and traj.x0s.shape == (5, 4, 2)
    assert torch.equal(traj.xs[0], z.real) and torch.equal(traj.xs[-1], traj.samples)
    assert torch.equal(traj.x0s[-1], traj.samples)


# ---- the entry points: autograd, non-finite results, eta -----------------------------------------
class Linear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(0.5))

    def forward(self, x, t):
        return self.w * x


@pytest.mark.parametrize("sampler", ["ddim", "belm"])
def test_no_autograd_unless_asked(sampler):
    model, x = Linear(), torch.randn(3, 2)
    out = ddim.sample(model, x, SCHED, steps=4, sampler=sampler)
    assert not out.requires_grad and not out.is_inference()
    out.add_(1).numpy()  # an ordinary tensor: in place, to numpy
    z = ddim.invert(model, x, SCHED, steps=4, sampler=sampler)
    assert not z.requires_grad and not z.is_inference()
    ddim.sample(model, x, SCHED, steps=4, sampler=sampler, grad=True).sum().backward()
    assert model.w.grad is not None and model.w.grad != 0


def nan_after(calls):
    seen = []

    def model(x, t):
        seen.append(1)
        return torch.full_like(x, math.nan) if len(seen) > calls else 0.1 * x

    return model


@pytest.mark.parametrize("sampler", ["ddim", "belm", "dpmpp_2m"])
def test_non_finite_results_are_errors(sampler):
    with pytest.raises(NonFinite, match="NaN or infinity"):
        ddim.sample(nan_after(2), torch.randn(2, 3), SCHED, steps=5, sampler=sampler)
    with pytest.raises(NonFinite, match="latent"):
        ddim.invert(
            nan_after(2), torch.randn(2, 3), SCHED, steps=5, sampler="ddim" if sampler != "belm" else sampler
        )


def test_eta_beyond_ddims_bound_is_refused_with_the_largest_valid_value():
    # DDIM eq. 12 needs 1 - a_prev - sigma^2 >= 0 (sigma: eq. 16): eta^2 <= a_prev (1 - a_t) / (a_prev - a_t)
    grid = ddim.make_timesteps(1000, 10, "trailing")
    a = SCHED.alphas_cumprod.tolist()
    bound = min((a[p] * (1 - a[t]) / (a[p] - a[t])) ** 0.5 for t, p in zip(grid.tolist(), grid.tolist()[1:]))
    assert bound > 1
    x, g = torch.randn(2, 2), torch.Generator().manual_seed(0)
    assert torch.isfinite(
        ddim.sample(oracle(), x.double(), SCHED, 10, eta=bound * (1 - 1e-9), generator=g)
    ).all()
    with pytest.raises(BadValue, match=f"eta <= {bound:.6g}"):
        ddim.sample(oracle(), x, SCHED, 10, eta=bound * 1.001, generator=g)
    for bad in (math.inf, math.nan, -0.1):
        with pytest.raises(BadValue, match="eta"):
            ddim.sample(oracle(), x, SCHED, 10, eta=bad, generator=g)


def test_exact_samplers_are_deterministic_and_call_the_model_once_a_step():
    calls = []
    model = oracle()

    def counted(x, t):
        calls.append(int(t[0]))
        return model(x, t)

    x = torch.randn(3, 2, dtype=torch.float64)
    for sampler in ddim.EXACT_INVERTIBLE:
        calls.clear()
        out = exact_sample(make_predictor(counted, SCHED), x, SCHED, [999, 500, 10], method=sampler)
        assert calls == [999, 500, 10] and out.shape == x.shape
        calls.clear()
        z = ddim.invert(counted, x, SCHED, spacing=[999, 500, 10], sampler=sampler)
        assert calls == [10, 10, 500]  # DDIM's first move up from x0, then one per update
        calls.clear()
        ddim.sample(counted, z, SCHED, spacing=[999, 500, 10], sampler=sampler)
        assert calls == [500, 10]
