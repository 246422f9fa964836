"""Higher-order samplers (DPM-Solver++ 2M/3M, UniPC, Euler, Heun) against closed forms.

Two exact references: the integral of e^-(lambda_t - lambda) x0(lambda) over a step when x0 is a
polynomial in lambda (what a multistep update must reproduce up to its order), and the Gaussian
oracle, whose probability-flow ODE has the closed-form solution `GaussianOracle.flow`.

Convergence is measured on NoiseSchedule.linear(10000) with log-SNR-uniform grids, so that integer
grids can be refined; the error is taken against the exact flow down to the grid's last point
followed by the step every sampler ends with (x0 = the model's x0 estimate there), i.e. the exact
answer of the discretised problem, so no step-independent floor hides the order. Measured max
errors (16 draws, data mu = (0.5, -1), s = (0.5, 2)) and log2 of successive ratios:

    steps            10        20        40        80       orders (10->20->40->80)
    ddim, euler   1.05e+0   5.36e-1   2.70e-1   1.36e-1   0.97 0.99 0.99
    heun          1.01e+0   1.90e-1   4.15e-2   9.76e-3   2.42 2.19 2.09   (2 steps - 1 calls)
    dpmpp_2m      1.70e-1   7.15e-2   1.88e-2   4.69e-3   1.25 1.92 2.01
    dpmpp_3m      2.65e-1   2.18e-2   1.20e-3   6.51e-5   3.60 4.19 4.20
    unipc (p=1)   7.80e-1   2.25e-1   5.70e-2   1.41e-2   1.79 1.98 2.02
    unipc (p=2)   2.27e-1   5.15e-2   6.85e-3   8.49e-4   2.14 2.91 3.01
    unipc (p=3)   1.16e-1   5.28e-3   3.82e-4   4.28e-5   4.45 3.79 3.16

(With diffusers' third-order update, whose D2 is half of h^2 x0'', 3M measured 4.74e-2 7.81e-3
1.67e-3 3.97e-4 at 20, 40, 80, 160 steps, orders 2.60 2.22 2.08: second order; see dpm_solver.py.)

Default grid per sampler (`test_recommended_grids`): geometric mean over 6 problems (linear, cosine
and scaled-linear schedules, T = 1000, each with the narrow data of test_samplers and the wide data
above) of max |x - flow| over 16 draws; only grids that start at T - 1 compete (leading and
quadratic start lower, from another x_T):

    steps        5                          10                         20
    grid         trail  lin   logsnr karras trail  lin   logsnr karras trail  lin   logsnr karras
    ddim, euler  .87    1.0   1.5    1.5    .47    .51   .77    .84    .25    .25   .39    .43
    heun         4.9    8.7   4.4    3.4    1.7    1.6   .61    .61    .56    .39   .11    .12
    dpmpp_2m     .59    .91   .31    .42    .27    .49   .095   .24    .11    .21   .044   .13
    dpmpp_3m     .58    1.1   .55    .90    .27    .53   .24    .69    .11    .20   .016   .085
    unipc        .47    1.2   .29    .45    .21    .52   .13    .26    .084   .19   .031   .083

    steps        50
    ddim, euler  .11    .10   .16    .18
    heun         .14    .056  .018   .020
    dpmpp_2m     .032   .062  .0098  .022
    dpmpp_3m     .034   .042  .0020  .0066
    unipc        .025   .051  .0040  .0086

So: DDIM and Euler on "trailing" (tied with "linspace"); DPM-Solver++(2M), (3M) and UniPC on
"logsnr". The trailing grid's last step jumps from t = T/S - 1 to clean data, a first-order step
that caps any solver at order 1: on test_samplers' problem dpmpp_2m/trailing measured 0.33, 0.13,
0.053, 0.033, 0.014 at 10, 20, 40, 80, 160 steps, dpmpp_2m/logsnr 0.10, 0.041, 0.011, 0.0025, then
0.0016, the error of the final x0 estimate at t = 0 itself. Heun on "karras" (the paper's; tied
with "logsnr" from 10 steps, better at 5). Heun on "trailing" fails on the cosine schedule, whose
first step goes from sigma = 4096 (a_999 = 2.4e-9, read as 2^-24) to 13 (20 steps): the
trapezoidal rule over that interval is no approximation.
"""

import math

import pytest
import torch
from oracles import GaussianOracle

import ddim
from ddim import NoiseSchedule, make_predictor, make_timesteps
from ddim.samplers import SAMPLERS, dpm_solver_pp, model_calls, unipc
from ddim.samplers.dpm_solver import dpmpp_correction
from ddim.samplers.unipc import unipc_correction

NEW = ("dpmpp_2m", "dpmpp_3m", "unipc", "euler", "heun")
SCHED = NoiseSchedule.linear(1000)
MU = torch.tensor([0.5, -1.0, 2.0, 0.0], dtype=torch.float64)
S = torch.tensor([0.3, 1.0, 0.1, 0.05], dtype=torch.float64)
FINE = NoiseSchedule.linear(10000)
MU_W = torch.tensor([0.5, -1.0], dtype=torch.float64)
S_W = torch.tensor([0.5, 2.0], dtype=torch.float64)


def x_T(n=16, d=4, seed=0, dtype=torch.float64):  # noqa: N802
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def oracle(prediction="eps", schedule=SCHED, mu=MU, s=S):
    return GaussianOracle(schedule, mu, s, prediction)


def run(sampler, steps, spacing, schedule=SCHED, mu=MU, s=S, x=None, **options):
    x = x_T(16, len(mu)) if x is None else x
    return ddim.sample(
        oracle("eps", schedule, mu, s), x, schedule, steps, sampler=sampler, spacing=spacing, **options
    )


def flow_error(sampler, steps, spacing, schedule=SCHED, mu=MU, s=S, **options):
    x = x_T(16, len(mu))
    exact = oracle("eps", schedule, mu, s).flow(x, schedule.alphas_cumprod[-1].item())
    return (run(sampler, steps, spacing, schedule, mu, s, x, **options) - exact).abs().max().item()


# ---- the update rules against exact integrals -----------------------------------------------------
def test_multistep_updates_integrate_polynomials_exactly():
    """Over a step s -> t the data-prediction form needs I = int e^-(lambda_t - lambda) x0 dlambda;
    the DDIM part gives phi1 m0 and the correction the rest. With u = lambda - lambda_s,
    int_0^h e^-(h - u) u^k du = phi1, h - phi1, h^2 - 2h + 2 phi1, h^3 - 3h^2 + 6h - 6 phi1."""
    lams, lam_t = [-1.3, -0.9, -0.2], 0.35
    h = lam_t - lams[-1]
    phi1 = -math.expm1(-h)
    moments = [phi1, h - phi1, h * h - 2 * h + 2 * phi1, h**3 - 3 * h * h + 6 * h - 6 * phi1]

    def case(coef):
        def x0(lam):
            return torch.tensor(
                [sum(c * (lam - lams[-1]) ** k for k, c in enumerate(coef))], dtype=torch.float64
            )

        exact = sum(c * m for c, m in zip(coef, moments))
        return [x0(lam) for lam in lams], x0(lam_t), exact

    ms, m_t, exact = case([0.7, -1.1, 0.4])  # quadratic in lambda
    # third order: DPM-Solver++(3M), UniP-3 and UniC-2 are exact for quadratics
    assert (phi1 * ms[-1] + dpmpp_correction(ms, lams, lam_t)).item() == pytest.approx(exact, abs=1e-14)
    assert (phi1 * ms[-1] + unipc_correction(ms, lams, lam_t)).item() == pytest.approx(exact, abs=1e-14)
    assert (phi1 * ms[-1] + unipc_correction(ms[1:], lams[1:], lam_t, m_t)).item() == pytest.approx(
        exact, abs=1e-14
    )
    ms, m_t, exact = case([0.7, -1.1, 0.4, 0.9])  # cubic: UniC-3 is exact, and 3M = UniP-3 (one rule)
    assert (phi1 * ms[-1] + unipc_correction(ms, lams, lam_t, m_t)).item() == pytest.approx(exact, abs=1e-14)
    torch.testing.assert_close(dpmpp_correction(ms, lams, lam_t), unipc_correction(ms, lams, lam_t))
    # DPM-Solver++(2M) (Alg. 2) is second order, exact for no polynomial but constants
    ms, _, exact = case([0.7, -1.1])
    assert abs((phi1 * ms[-1] + dpmpp_correction(ms[1:], lams[1:], lam_t)).item() - exact) > 1e-3


def test_euler_in_the_karras_form_is_ddim():
    """x~' = x~ + (sigma' - sigma)(x~ - D)/sigma = D + sigma' eps, times sqrt(a') = DDIM eq. 12."""
    x = x_T(16)
    for schedule in (SCHED, NoiseSchedule.cosine(1000), SCHED.rescale_zero_terminal_snr()):
        for spacing in ("trailing", "karras", [999, 700, 31, 4]):
            for prediction in ("eps", "v"):
                args = (x, schedule, None if isinstance(spacing, list) else 12)
                kw = dict(spacing=spacing, prediction=prediction)
                a = ddim.sample(oracle(prediction, schedule), *args, sampler="euler", **kw)
                b = ddim.sample(oracle(prediction, schedule), *args, sampler="ddim", **kw)
                torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


# ---- convergence on the Gaussian oracle -----------------------------------------------------------
ORDERS = {  # sampler, options -> band for log2(error ratio) when steps double (measured in the docstring)
    ("ddim", ()): (0.9, 1.1),
    ("euler", ()): (0.9, 1.1),
    ("heun", ()): (1.9, 2.3),
    ("dpmpp_2m", ()): (1.85, 2.15),
    ("dpmpp_3m", ()): (2.8, 4.5),
    ("unipc", ()): (2.8, 3.2),
    ("unipc", (("order", 1),)): (1.85, 2.15),
    ("unipc", (("order", 3),)): (2.8, 4.2),
}


@pytest.mark.parametrize("sampler,options", ORDERS)
def test_convergence_order(sampler, options):
    x = x_T(16, 2)
    model = oracle("eps", FINE, MU_W, S_W)
    errors = []
    for steps in (20, 40, 80):
        grid = make_timesteps(FINE.T, steps, "logsnr", schedule=FINE)
        a = FINE.alphas_cumprod
        a_last = a[grid[-1]].reshape(1, 1)
        # the exact flow to the last grid point, then that point's exact x0 estimate
        x_last = model.encode(model.flow(x, a[grid[0]].item()), a_last.item())
        target = model.x0_mean(x_last, a_last)
        out = SAMPLERS[sampler](make_predictor(model, FINE), x, FINE, grid, **dict(options))
        errors.append((out - target).abs().max().item())
    lo, hi = ORDERS[sampler, options]
    orders = [math.log2(coarse / fine) for coarse, fine in zip(errors, errors[1:])]
    assert all(lo < p < hi for p in orders), (errors, orders)


def test_same_error_at_fewer_model_calls():
    """SCHED (T = 1000) and the narrow data of test_samplers; max |x - flow| over 16 draws (model
    calls in brackets), measured: ddim/trailing 20 [20]: 0.252, 80 [80]: 0.065; dpmpp_2m/logsnr
    10 [10]: 0.103; unipc/logsnr 10 [10]: 0.142; dpmpp_3m/logsnr 20 [20]: 0.010;
    heun/logsnr 40 [79]: 0.023."""
    ddim_20, ddim_80 = flow_error("ddim", 20, "trailing"), flow_error("ddim", 80, "trailing")
    assert flow_error("dpmpp_2m", 10, "logsnr") < 0.5 * ddim_20
    assert flow_error("unipc", 10, "logsnr") < 0.7 * ddim_20
    assert flow_error("dpmpp_3m", 20, "logsnr") < 0.25 * ddim_80
    assert flow_error("heun", 40, "logsnr") < 0.5 * ddim_80


@pytest.mark.parametrize("sampler", NEW)
@pytest.mark.parametrize("steps", [1, 2, 7])
def test_model_calls_are_counted_honestly(sampler, steps):
    model, seen = oracle(), []

    def counted(x, t):
        seen.append(int(t[0]))
        return model(x, t)

    grid = make_timesteps(SCHED.T, steps, "logsnr", schedule=SCHED)
    ddim.sample(counted, x_T(2), SCHED, spacing=grid, sampler=sampler)
    assert model.calls == model_calls(sampler, steps)
    assert set(seen) <= set(grid.tolist())  # Heun's second call is at the next grid point


# ---- the contract -------------------------------------------------------------------------------
@pytest.mark.parametrize("sampler", NEW)
def test_no_state_survives_a_call(sampler):
    x = x_T(8)
    first = run(sampler, 10, "logsnr", x=x)
    run(sampler, 7, "trailing", x=x_T(3, seed=1))  # another grid and batch in between
    assert torch.equal(first, run(sampler, 10, "logsnr", x=x))


@pytest.mark.parametrize("sampler", NEW)
def test_any_prediction_type_gives_the_same_result(sampler):
    x = x_T(8)
    outs = [
        ddim.sample(oracle(p), x, SCHED, 10, sampler=sampler, spacing="logsnr", prediction=p)
        for p in ("eps", "x0", "v")
    ]
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(outs[0], outs[2], rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("sampler", NEW)
def test_deterministic_and_eta_free(sampler):
    x = x_T(4)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    a = run(sampler, 6, "karras", x=x)
    b = run(sampler, 6, "karras", x=x, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and torch.equal(torch.get_rng_state(), before)
    with pytest.raises(ValueError, match="has no eta"):
        run(sampler, 6, "karras", x=x, eta=0.5)


@pytest.mark.parametrize("sampler", NEW)
def test_callback_sees_every_step_and_the_last_returns_x0(sampler):
    traj = ddim.sample(
        oracle(), x_T(4), SCHED, 6, sampler=sampler, spacing="logsnr", return_all_timesteps=True
    )
    assert traj.xs.shape == (7, 4, 4) and traj.x0s.shape == (6, 4, 4)
    assert torch.equal(traj.xs[-1], traj.samples)
    torch.testing.assert_close(traj.samples, traj.x0s[-1], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("sampler", NEW)
@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
def test_zero_terminal_snr_gives_finite_samples(sampler, prediction):
    z = SCHED.rescale_zero_terminal_snr()
    for spacing, dtype in (("trailing", torch.float32), ("logsnr", torch.float64), ("karras", torch.float64)):
        out = ddim.sample(
            oracle(prediction, z),
            x_T(64, dtype=dtype),
            z,
            30,
            sampler=sampler,
            spacing=spacing,
            prediction=prediction,
        )
        assert out.dtype == dtype and torch.isfinite(out).all()
        assert (out.double().mean(0) - MU).abs().max() < 0.15  # measured at most 0.04


@pytest.mark.parametrize("sampler", NEW)
def test_any_shape_and_dtype(sampler):
    img = torch.randn(3, 2, 5, 7, generator=torch.Generator().manual_seed(0))
    model = GaussianOracle(SCHED, torch.tensor(0.0), torch.tensor(0.5))
    # bfloat16 on "trailing": at t = 0 the oracle itself rounds a = 0.9999 to 1 in bfloat16
    for dtype, spacing in ((torch.float32, "logsnr"), (torch.bfloat16, "trailing")):
        out = ddim.sample(model, img.to(dtype), SCHED, 5, sampler=sampler, spacing=spacing)
        assert out.shape == img.shape and out.dtype == dtype and torch.isfinite(out.float()).all()


@pytest.mark.parametrize("sampler", [dpm_solver_pp, unipc])
def test_bad_order_is_refused(sampler):
    with pytest.raises(ValueError, match="order 1, 2 or 3"):
        sampler(make_predictor(oracle(), SCHED), x_T(2), SCHED, [999, 0], order=4)


# ---- which grid -----------------------------------------------------------------------------------
def test_recommended_grids():
    """The table in the module docstring, at 20 steps: each sampler's recommended grid is the best
    of those that start at T - 1, or within a few percent of it."""
    problems = [
        (NoiseSchedule.named(k), *data)
        for k in ("linear", "cosine", "scaled_linear")
        for data in ((MU, S), (MU_W, S_W))
    ]
    grids = ("trailing", "linspace", "logsnr", "karras")

    def score(sampler, spacing):
        logs = [math.log(flow_error(sampler, 20, spacing, sch, mu, s)) for sch, mu, s in problems]
        return math.exp(sum(logs) / len(logs))

    table = {(n, g): score(n, g) for n in ("ddim", "heun", "dpmpp_2m", "dpmpp_3m", "unipc") for g in grids}
    best = {n: min(grids, key=lambda g: table[n, g]) for n, _ in table}
    # DDIM: trailing and linspace tie (measured 0.248, 0.251), the log-SNR grids trail (0.39, 0.43)
    assert table["ddim", "trailing"] < 1.05 * table["ddim", best["ddim"]]
    assert table["ddim", "logsnr"] > 1.3 * table["ddim", "trailing"]
    assert best["dpmpp_2m"] == best["dpmpp_3m"] == best["unipc"] == best["heun"] == "logsnr"
    assert table["heun", "karras"] < 1.15 * table["heun", "logsnr"]  # measured 0.123, 0.115
