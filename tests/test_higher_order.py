"""Higher-order samplers (DPM-Solver++ 2M/3M, UniPC, Euler, Heun) against closed forms: the
exact integral of a polynomial x0(lambda) over a step, and the exact probability-flow solution of
the Gaussian oracle (tests/oracles.py). The measured errors, orders and grid comparisons that set
the bands below are in docs/samplers.md, "The measurements". The sampler contract is tested for
every sampler in test_sampler_contract.py."""

import math

import pytest
import torch
from oracles import MU, MU_W, S_W, SCHED, S, oracle, x_T

import ddim
from ddim import NoiseSchedule, make_predictor, make_timesteps
from ddim.cli import main
from ddim.errors import BadValue
from ddim.samplers import SAMPLERS, dpm_solver_pp, model_calls, unipc
from ddim.samplers.dpm_solver import dpmpp_correction
from ddim.samplers.unipc import unipc_correction

NEW = ("dpmpp_2m", "dpmpp_3m", "unipc", "euler", "heun")
FINE = NoiseSchedule.linear(10000)


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


@pytest.mark.parametrize("sampler", SAMPLERS)
@pytest.mark.parametrize("steps", [1, 7, 12])
def test_model_calls_are_counted_honestly(sampler, steps):
    """Each registry entry's declared count (samplers/registry.py) is the calls it makes."""
    model, seen = oracle(), []

    def counted(x, t):
        seen.append(int(t[0]))
        return model(x, t)

    grid = make_timesteps(SCHED.T, steps, "logsnr", schedule=SCHED)
    ddim.sample(counted, x_T(2), SCHED, spacing=grid, sampler=sampler)
    assert model.calls == model_calls(sampler, steps)
    assert set(seen) <= set(grid.tolist())  # Heun's second call is at the next grid point


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
def test_eta_is_refused(sampler):
    with pytest.raises(ValueError, match="has no eta"):
        run(sampler, 6, "karras", eta=0.5)


@pytest.mark.parametrize("sampler", [dpm_solver_pp, unipc])
def test_bad_order_is_refused(sampler):
    with pytest.raises(ValueError, match="order 1, 2 or 3"):
        sampler(make_predictor(oracle(), SCHED), x_T(2), SCHED, [999, 0], order=4)


# ---- too few steps (issue 10) --------------------------------------------------------------------
IMAGES = (torch.zeros(4, dtype=torch.float64), torch.full((4,), 0.5, dtype=torch.float64))  # [-1, 1]'s spread
COSINE = NoiseSchedule.cosine(1000)


def heun_spread(steps):
    """heun's output spread over the data's on its default grid, run without `ddim.sample`'s check."""
    grid = make_timesteps(SCHED.T, steps, "karras", schedule=SCHED)
    out = SAMPLERS["heun"](make_predictor(oracle("eps", SCHED, *IMAGES), SCHED), x_T(4000), SCHED, grid)
    return (out.std(0) / 0.5).mean().item()


def test_heun_on_too_few_steps_leaves_noise():
    """`--sampler heun --steps 3` gave pure noise. Why: a Heun step averages the slope at its start
    (d = eps, the noise) with the slope at its end, ~0 where the model takes its input for nearly
    clean (the last grid point, t = 0, sigma = 0.01), so it removes only about half of the noise
    it starts from (sigma = 5.9 at 3 steps), and the final Euler step from sigma = 0.01 removes no
    more. Measured spread over the data's: 6.5, 2.9, 2.7, 2.1 at 3 to 6 steps, 1.6 at 7, 1.25 at 10."""
    assert heun_spread(3) > 5 and heun_spread(6) > 2 > heun_spread(7) > heun_spread(10) > 1


def test_heun_refuses_a_grid_that_leaves_noise_and_names_the_fewest_steps_that_do_not():
    with pytest.raises(BadValue, match=r"3-step karras grid returns mostly noise \(6.5x.* steps >= 7,"):
        ddim.sample(oracle(), x_T(2), SCHED, 3, sampler="heun")
    assert torch.isfinite(ddim.sample(oracle(), x_T(2), SCHED, 7, sampler="heun")).all()
    with pytest.raises(BadValue, match="steps >= 11"):  # cosine's first step, from sigma = 4096, too
        ddim.sample(oracle(schedule=COSINE), x_T(2), COSINE, 10, sampler="heun")
    ddim.sample(oracle(), x_T(2), SCHED, 3, sampler="heun", spacing="trailing")  # ends at t = 332: fine
    # a custom grid is taken as given (`ddim tune` measures its grids): the 3-step karras grid
    ddim.sample(oracle(), x_T(2), SCHED, spacing=[999, 593, 0], sampler="heun")


def test_the_cli_and_ddim_load_refuse_it_too(trained_run, tmp_path, capsys):
    argv = ["sample", "--checkpoint", str(trained_run), "--sampler", "heun", "--steps", "3"]
    assert main([*argv, "--n", "2", "--out", str(tmp_path / "grid.png")]) == 2
    err = capsys.readouterr().err
    assert "steps >= 7" in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "grid.png").exists()
    with pytest.raises(BadValue, match="steps >= 7"):
        ddim.load(trained_run).sample(2, steps=3, sampler="heun")


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


# ---- against diffusers' schedulers ----------------------------------------------------------------
def diffusers_loop(scheduler, x):
    """Sample the oracle with a diffusers scheduler's own loop (set_timesteps already called)."""
    model = oracle()
    for t in scheduler.timesteps:
        x = scheduler.step(model(x, torch.full((len(x),), int(t))), t, x).prev_sample
    return x


DIFFUSERS_SCHEDULE = dict(
    num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
    prediction_type="epsilon", final_sigmas_type="zero",
)  # fmt: skip


@pytest.mark.parametrize("steps", [3, 5, 10, 20])
@pytest.mark.parametrize("spacing", ["logsnr", "trailing"])  # log-SNR steps equal, and unequal
def test_dpmpp_2m_equals_diffusers_dpm_solver_multistep(steps, spacing):
    """DPMSolverMultistepScheduler (dpmsolver++, order 2, lower-order final step to sigma = 0) on
    our grids, which it takes as custom timesteps. It keeps sigmas in float32: measured
    differences up to 1.2e-5. (3M differs by design: see dpm_solver.py on diffusers' D2.)"""
    diffusers = pytest.importorskip("diffusers")
    grid = make_timesteps(SCHED.T, steps, spacing, schedule=SCHED).tolist()
    scheduler = diffusers.DPMSolverMultistepScheduler(
        **DIFFUSERS_SCHEDULE, algorithm_type="dpmsolver++", solver_order=2
    )
    scheduler.set_timesteps(timesteps=grid)
    x = x_T(16)
    ours = ddim.sample(oracle(), x, SCHED, steps, sampler="dpmpp_2m", spacing=grid)
    torch.testing.assert_close(ours, diffusers_loop(scheduler, x.clone()), rtol=0, atol=5e-5)


@pytest.mark.parametrize("steps", [5, 10, 20])
@pytest.mark.parametrize("order", [2, 3])
def test_unipc_equals_diffusers_unipc_multistep(steps, order):
    """UniPCMultistepScheduler (bh2, data prediction, corrector on) takes no custom grid: both walk
    its "trailing" grid. Measured differences up to 8.3e-7."""
    diffusers = pytest.importorskip("diffusers")
    scheduler = diffusers.UniPCMultistepScheduler(
        **DIFFUSERS_SCHEDULE, timestep_spacing="trailing", solver_order=order, solver_type="bh2"
    )
    scheduler.set_timesteps(steps)
    grid = [int(t) for t in scheduler.timesteps]
    assert grid == make_timesteps(SCHED.T, steps, "trailing").tolist()
    x = x_T(16)
    ours = ddim.sample(oracle(), x, SCHED, steps, sampler="unipc", spacing=grid, order=order)
    torch.testing.assert_close(ours, diffusers_loop(scheduler, x.clone()), rtol=0, atol=5e-6)
