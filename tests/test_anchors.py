"""Agreement with independent implementations: diffusers' DDIMScheduler / DDPMScheduler and
lucidrains' denoising_diffusion_pytorch (test-only dependencies, skipped when absent).

Every comparison runs in float32 with a tiny fixed random model (`TinyNet`: channel mixing, a
t-dependent gain and a t-dependent bias), so that a wrong timestep, coefficient or prediction
target shows at once. Where an anchor keeps its schedule in float32, ours is built from the
anchor's own float32 alphas_cumprod, so that what is measured is the sampler alone; the
schedules themselves are compared separately. Errors are max |ours - theirs| / max |theirs|;
each tolerance sits beside the error measured when it was set (torch 2.14, diffusers 0.42.1,
denoising-diffusion-pytorch 2.3.4, CPU).
"""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch
from torch import Tensor, nn

import ddim
from ddim import NoiseSchedule, make_predictor, make_timesteps
from ddim.samplers import ddim as ddim_sampler
from ddim.samplers import ddpm as ddpm_sampler

T = 1000
SHAPE = (4, 3, 8, 8)  # lucidrains samples images: [N, C, H, W] with H = W
PREDICTIONS = {  # ours -> (diffusers' prediction_type, lucidrains' objective)
    "eps": ("epsilon", "pred_noise"),
    "v": ("v_prediction", "pred_v"),
    "x0": ("sample", "pred_x0"),
}


def _diffusers():
    return pytest.importorskip("diffusers")


def _lucidrains():
    return pytest.importorskip("denoising_diffusion_pytorch")


class TinyNet(nn.Module):
    """A fixed random float32 model out = g(t) x + c(t) W x + b(t), with W a random channel mix.
    It carries the attributes lucidrains' GaussianDiffusion reads from its Unet."""

    def __init__(self, channels: int = SHAPE[1], num_timesteps: int = T, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.channels = self.out_dim = channels
        self.self_condition = False
        self.random_or_learned_sinusoidal_cond = False
        self.num_timesteps = num_timesteps
        self.register_buffer("w", torch.randn(channels, channels, generator=g) / channels**0.5)
        self.register_buffer("phase", torch.rand(channels, 1, 1, generator=g) * 2 * math.pi)

    def forward(self, x: Tensor, t: Tensor, x_self_cond: Tensor | None = None) -> Tensor:
        s = (t.to(x.dtype) / self.num_timesteps).reshape(-1, 1, 1, 1)
        mixed = (self.w.to(x.dtype) @ x.flatten(2)).view_as(x)  # W mixes the channels
        return (
            (0.9 - 0.4 * s) * x
            + 0.3 * torch.cos(3 * s) * mixed
            + 0.1 * torch.sin(2 * math.pi * s + self.phase.to(x.dtype))
        )


def x_T(seed: int = 0) -> Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed))


def noise_for(steps: int, seed: int = 1) -> Tensor:
    return torch.randn(steps, *SHAPE, generator=torch.Generator().manual_seed(seed))


def rel_err(ours: Tensor, theirs: Tensor) -> float:
    assert ours.shape == theirs.shape and ours.dtype == theirs.dtype == torch.float32
    assert torch.isfinite(ours).all() and torch.isfinite(theirs).all()
    return float((ours - theirs).abs().max() / theirs.abs().max())


def ddim_scheduler(
    prediction: str = "eps",
    spacing: str = "leading",
    num_train_timesteps: int = T,
    betas=(1e-4, 0.02),
):
    return _diffusers().DDIMScheduler(
        num_train_timesteps=num_train_timesteps,
        beta_start=betas[0],
        beta_end=betas[1],
        beta_schedule="linear",
        clip_sample=False,
        set_alpha_to_one=True,
        steps_offset=0,
        prediction_type=PREDICTIONS[prediction][0],
        timestep_spacing=spacing,
    )


def ours_from(scheduler) -> NoiseSchedule:
    """Our schedule from the anchor's float32 alphas_cumprod, so only the sampler differs."""
    return NoiseSchedule.from_alphas_cumprod(scheduler.alphas_cumprod.double())


def diffusers_ddim_loop(scheduler, model, x: Tensor, steps: int, eta: float = 0.0, noise=None):
    scheduler.set_timesteps(steps)
    for i, t in enumerate(scheduler.timesteps):
        out = model(x, torch.full((len(x),), int(t)))
        z = noise[i] if noise is not None and eta > 0 else None
        x = scheduler.step(out, t, x, eta=eta, variance_noise=z).prev_sample
    return x


# ---- schedules -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind, ours",
    [
        ("linear", NoiseSchedule.linear(T)),
        ("scaled_linear", NoiseSchedule.scaled_linear(T)),
        ("squaredcos_cap_v2", NoiseSchedule.cosine(T)),
    ],
)
def test_schedules_match_diffusers_betas(kind, ours):
    """Our float64 betas equal diffusers' float32 ones to float32 rounding, for each of its
    named schedules (defaults: linear 1e-4..0.02, scaled_linear 0.00085..0.012)."""
    d = _diffusers()
    start, end = (1e-4, 0.02) if kind == "linear" else (0.00085, 0.012)
    theirs = d.DDIMScheduler(num_train_timesteps=T, beta_schedule=kind, beta_start=start, beta_end=end).betas
    err = float(((ours.betas - theirs.double()).abs() / theirs.double()).max())
    print(f"schedule {kind}: max rel err betas {err:.2e}")
    assert err < 1e-6  # measured 1.1e-7 linear, 2.2e-7 scaled_linear, 5.9e-8 cosine


def test_zero_terminal_snr_rescale_matches_diffusers():
    """Lin et al. 2023, Alg. 1: diffusers' rescale_zero_terminal_snr run in float64 gives our
    betas to float64 rounding (cancellation near a = 0 costs a few digits); its float32
    scheduler (rescale_betas_zero_snr=True) gives our alphas_cumprod to float32 rounding, with
    the last one exactly 0 in both."""
    d = _diffusers()
    from diffusers.schedulers.scheduling_ddim import rescale_zero_terminal_snr

    for base in (NoiseSchedule.linear(T), NoiseSchedule.scaled_linear(T)):
        ours = base.rescale_zero_terminal_snr()
        theirs64 = rescale_zero_terminal_snr(base.betas.clone())
        err64 = float(((ours.betas - theirs64).abs() / theirs64).max())
        print(f"zsnr float64: max rel err betas {err64:.2e}")
        assert err64 < 1e-10  # measured 2.2e-12 (the last betas: sqrt(a) - sqrt(a_T-1) cancels)
    kinds = {"linear": (1e-4, 0.02), "scaled_linear": (0.00085, 0.012)}
    for kind, (start, end) in kinds.items():
        sched = d.DDIMScheduler(
            num_train_timesteps=T,
            beta_schedule=kind,
            beta_start=start,
            beta_end=end,
            rescale_betas_zero_snr=True,
        )
        ours = NoiseSchedule.named(kind, T).rescale_zero_terminal_snr()
        a32 = sched.alphas_cumprod.double()
        err = float((ours.alphas_cumprod - a32).abs().max())
        print(f"zsnr {kind} float32 scheduler: max abs err alphas_cumprod {err:.2e}")
        assert err < 1e-6  # measured 4.2e-7 linear, 3.9e-7 scaled_linear
        assert ours.alphas_cumprod[-1] == 0 and a32[-1] == 0


# ---- DDIM against diffusers' DDIMScheduler --------------------------------------------------


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("steps", [50, 7])
def test_ddim_matches_diffusers_ddim_scheduler_leading(prediction, eta, steps):
    """On diffusers' default "leading" grid (the one where its previous-timestep arithmetic
    t - T // S is the next grid point), `ddim.sample` equals a DDIMScheduler loop for each
    prediction target and eta, fed the same x_T and, for eta > 0, the same per-step noise.
    steps = 7 does not divide T = 1000: leading then stops at 852 and still agrees."""
    scheduler = ddim_scheduler(prediction, "leading")
    schedule = ours_from(scheduler)
    model, x = TinyNet(), x_T()
    noise = noise_for(steps)
    theirs = diffusers_ddim_loop(scheduler, model, x, steps, eta, noise)
    assert make_timesteps(T, steps, "leading").tolist() == scheduler.timesteps.tolist()
    if eta == 0:
        ours = ddim.sample(model, x, schedule, steps=steps, eta=eta, spacing="leading", prediction=prediction)
    else:
        predict = make_predictor(model, schedule, prediction)
        grid = make_timesteps(T, steps, "leading")
        ours = ddim_sampler(predict, x, schedule, grid, eta=eta, noise=noise)
    err = rel_err(ours, theirs)
    print(f"ddim vs diffusers DDIM leading S={steps} {prediction} eta={eta}: {err:.2e}")
    assert err < 4e-6  # measured max 8.0e-7 (v, S = 50, eta = 0) over the 18 cases


# ---- diffusers' grids, and its DDIM previous-timestep bug (diffusers issue 12633) ------------


def _exact_grid(T: int, steps: int, spacing: str) -> list[Fraction]:
    """The real-valued points that trailing / linspace round to integers (before the - 1)."""
    if spacing == "trailing":
        return [Fraction(T * k, steps) for k in range(steps, 0, -1)]
    return [Fraction((T - 1) * i, steps - 1) for i in range(steps - 1, -1, -1)]


@pytest.mark.parametrize(
    "spacing, T_, steps",
    [
        ("trailing", 1000, 50),
        ("trailing", 1000, 7),  # 1000 / 7 is not an integer
        ("trailing", 100, 30),
        ("linspace", 1000, 50),
        ("linspace", 1000, 10),
        ("linspace", 100, 10),
    ],
)
def test_grids_match_diffusers(spacing, T_, steps):
    """Our trailing and linspace grids equal diffusers' `scheduler.timesteps`, also where T is
    not divisible by S (cases chosen free of rounding ties; see the sweep below)."""
    scheduler = ddim_scheduler("eps", spacing, num_train_timesteps=T_)
    scheduler.set_timesteps(steps)
    assert make_timesteps(T_, steps, spacing).tolist() == scheduler.timesteps.tolist()


@pytest.mark.parametrize("spacing", ["trailing", "linspace"])
def test_grid_sweep_against_diffusers_differs_only_at_ties_and_its_extra_step(spacing):
    """For every S at T in (10, 100, 1000), diffusers' grid equals ours except in two ways,
    pinned here: (i) a convention: at an exact half-integer numpy rounds half to even, we round
    half up (trailing T = 10, S = 4: 7.5 -> 8 in both, 2.5 -> 2 vs our 3); (ii) a diffusers bug:
    trailing builds the grid with a float np.arange, which for some S (T = 1000, S = 61) yields
    S + 1 timesteps, the extra one -1, which then indexes alphas_cumprod[-1] (the noisiest)."""
    ties = extra = 0
    for T_ in (10, 100, 1000):
        scheduler = ddim_scheduler("eps", spacing, num_train_timesteps=T_)
        for steps in range(2, T_ + 1):
            scheduler.set_timesteps(steps)
            theirs = scheduler.timesteps.tolist()
            ours = make_timesteps(T_, steps, spacing).tolist()
            if len(theirs) == steps + 1:
                assert spacing == "trailing" and theirs[-1] == -1, (T_, steps, theirs[-3:])
                theirs = theirs[:-1]
                extra += 1
            assert len(theirs) == steps
            for a, b, e in zip(theirs, ours, _exact_grid(T_, steps, spacing)):
                if a != b:
                    assert e.denominator == 2 and abs(a - b) == 1, (T_, steps, a, b, e)
                    ties += 1
    print(f"{spacing}: {ties} tie differences, {extra} grids with an extra -1")
    assert ties > 0  # the sweep does reach the ties it documents
    assert (extra > 0) == (spacing == "trailing")


@pytest.mark.parametrize(
    "spacing, steps, buggy",
    [
        ("trailing", 50, False),  # S divides T: t - T // S is the next grid point, no bug
        ("trailing", 7, True),
        ("linspace", 10, True),
        ("linspace", 50, True),
    ],
)
def test_diffusers_ddim_prev_timestep_bug(spacing, steps, buggy):
    """diffusers' DDIMScheduler.step takes the previous timestep as t - T // S, which is the next
    grid point only on "leading" grids (and trailing grids with S dividing T). On the same grid
    (asserted equal) our sampler therefore differs from diffusers where that arithmetic is
    wrong, and the difference is exactly that: an eq.-12 loop using our predictor but
    diffusers' pairs (t, t - T // S), with a = 1 below 0, reproduces diffusers' output."""
    scheduler = ddim_scheduler("eps", spacing)
    schedule = ours_from(scheduler)
    model, x = TinyNet(), x_T()
    theirs = diffusers_ddim_loop(scheduler, model, x, steps)
    grid = make_timesteps(T, steps, spacing)
    assert grid.tolist() == scheduler.timesteps.tolist()

    ours = ddim.sample(model, x, schedule, steps=steps, spacing=spacing)
    predict = make_predictor(model, schedule, "eps")
    a = schedule.alphas_cumprod.tolist()
    y = x
    for t in grid.tolist():
        eps, x0 = predict(y, t)
        prev = t - T // steps  # diffusers' previous timestep
        a_prev = a[prev] if prev >= 0 else 1.0
        y = a_prev**0.5 * x0 + (1 - a_prev) ** 0.5 * eps  # DDIM eq. 12, eta = 0
    pairs_wrong = any(p != t - T // steps for t, p in zip(grid.tolist(), grid.tolist()[1:]))
    assert pairs_wrong == buggy

    err_buggy_loop, err_ours = rel_err(y, theirs), rel_err(ours, theirs)
    print(f"{spacing} S={steps}: buggy loop {err_buggy_loop:.2e}, ours {err_ours:.2e}")
    assert err_buggy_loop < 4e-6  # measured max 6.3e-7
    if buggy:
        assert err_ours > 1e-3  # measured 3.8e-3 trailing S=7, 3.2e-2 and 0.20 linspace
    else:
        assert err_ours < 4e-6  # measured 6.3e-7


# ---- DDPM against diffusers' DDPMScheduler -----------------------------------------------------

T_DDPM = 100  # full-grid DDPM takes T model calls; linear(100) has betas 1e-3 .. 0.2


def ddpm_scheduler(prediction: str, variance_type: str):
    return _diffusers().DDPMScheduler(
        num_train_timesteps=T_DDPM,
        beta_start=1e-3,
        beta_end=0.2,
        beta_schedule="linear",
        variance_type=variance_type,
        clip_sample=False,
        prediction_type=PREDICTIONS[prediction][0],
    )


def diffusers_ddpm_loop(monkeypatch, scheduler, model, x: Tensor, grid: list[int], noise: Tensor):
    """DDPMScheduler draws its noise inside `step` (for every t > 0); hand it ours, in order."""
    import diffusers.schedulers.scheduling_ddpm as mod

    draws = iter(noise)
    monkeypatch.setattr(mod, "randn_tensor", lambda shape, **kw: next(draws).reshape(shape))
    scheduler.set_timesteps(timesteps=grid)
    for t in scheduler.timesteps:
        out = model(x, torch.full((len(x),), int(t)))
        x = scheduler.step(out, t, x).prev_sample
    return x


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
@pytest.mark.parametrize(
    "variance_type, variance, steps",
    [
        ("fixed_small", "posterior", T_DDPM),
        ("fixed_large", "beta", T_DDPM),
        ("fixed_small", "posterior", 20),  # leading grid: ends at t = 0
        ("fixed_large", "beta", 20),
    ],
)
def test_ddpm_matches_diffusers_ddpm_scheduler(monkeypatch, prediction, variance_type, variance, steps):
    """Ancestral sampling (Ho et al. 2020, Alg. 2) equals diffusers' DDPMScheduler with the same
    noise: "fixed_small" is our posterior variance beta-tilde, "fixed_large" our variance beta,
    on the full grid and on a leading sub-grid (diffusers' custom timesteps; its DDPM looks the
    previous timestep up in the grid, so sub-grids are right).

    diffusers computes each step's beta = 1 - a_t / a_prev in float32, which cancels where beta
    is small (relative error ~ 6e-8 / beta), so on the full grid its float32 run is itself
    ~1e-5 off. The reference is therefore diffusers run in float64 (its alphas_cumprod cast):
    ours in float64 equals it to float64 rounding, ours in float32 to float32 rounding."""
    scheduler = ddpm_scheduler(prediction, variance_type)
    schedule = ours_from(scheduler)
    model, x = TinyNet(num_timesteps=T_DDPM), x_T()
    grid = make_timesteps(T_DDPM, steps, "leading")
    assert int(grid[-1]) == 0
    noise = noise_for(steps)
    theirs = diffusers_ddpm_loop(monkeypatch, scheduler, model, x, grid.tolist(), noise)
    scheduler.alphas_cumprod, scheduler.one = (
        scheduler.alphas_cumprod.double(),
        scheduler.one.double(),
    )
    theirs64 = diffusers_ddpm_loop(monkeypatch, scheduler, model, x.double(), grid.tolist(), noise.double())
    predict = make_predictor(model, schedule, prediction)
    ours = ddpm_sampler(predict, x, schedule, grid, variance=variance, noise=noise)
    ours64 = ddpm_sampler(predict, x.double(), schedule, grid, variance=variance, noise=noise.double())
    err64 = float((ours64 - theirs64).abs().max() / theirs64.abs().max())
    err = rel_err(ours, theirs64.float())
    err_theirs = rel_err(theirs, theirs64.float())
    err_both = rel_err(ours, theirs)
    print(
        f"ddpm vs diffusers DDPM {variance_type} S={steps} {prediction}: float64 {err64:.1e}, "
        f"ours32 {err:.1e}, theirs32 {err_theirs:.1e}, ours32 vs theirs32 {err_both:.1e}"
    )
    assert err64 < 1e-14  # measured max 7.8e-16
    assert err < 4e-6  # measured max 7.1e-7
    assert err_both < 4e-5  # measured max 1.2e-5 (full grid), diffusers' own float32 error


@pytest.mark.parametrize("variance_type, variance", [("fixed_small", "posterior"), ("fixed_large", "beta")])
def test_diffusers_ddpm_adds_noise_at_the_last_step_of_a_grid_ending_above_zero(
    monkeypatch, variance_type, variance
):
    """On a grid whose last timestep t_1 > 0 (trailing), DDPMScheduler still adds noise at the
    last step (it tests t > 0, not "last step"): with variance "fixed_small" its clamp floor
    1e-20 (std 1e-10), with "fixed_large" beta = 1 - a_{t_1}, a full-size perturbation of the
    final sample. Ours returns the x0 estimate, as Ho et al. Alg. 2 does (z = 0 at the end).
    Adding that one noise term to our output reproduces diffusers'."""
    steps = 20
    scheduler = ddpm_scheduler("eps", variance_type)
    schedule = ours_from(scheduler)
    model, x = TinyNet(num_timesteps=T_DDPM), x_T()
    grid = make_timesteps(T_DDPM, steps, "trailing")
    t_last = int(grid[-1])
    assert t_last == 4
    noise = noise_for(steps)
    theirs = diffusers_ddpm_loop(monkeypatch, scheduler, model, x, grid.tolist(), noise)
    predict = make_predictor(model, schedule, "eps")
    ours = ddpm_sampler(predict, x, schedule, grid, variance=variance, noise=noise)
    a_last = float(scheduler.alphas_cumprod[t_last])
    std = 1e-10 if variance_type == "fixed_small" else (1 - a_last) ** 0.5
    err = rel_err(ours + std * noise[-1], theirs)
    err_plain = rel_err(ours, theirs)
    print(f"ddpm trailing {variance_type}: with last noise {err:.2e}, without {err_plain:.2e}")
    assert err < 4e-6  # measured 2.5e-7 fixed_small, 3.1e-7 fixed_large
    if variance_type == "fixed_large":
        assert err_plain > 1e-2  # measured 0.12


@pytest.mark.parametrize("steps", [T_DDPM, 20])
def test_ddim_eta_one_is_ddpm_posterior(steps):
    """DDIM eq. 16 at eta = 1 is the DDPM posterior (DDIM sec. 4.1): our ddim(eta=1), our
    ddpm(variance="posterior") and diffusers' DDIMScheduler(eta=1) on a leading grid agree, with
    the same noise, in float32."""
    scheduler = ddim_scheduler("eps", "leading", num_train_timesteps=T_DDPM, betas=(1e-3, 0.2))
    schedule = ours_from(scheduler)
    model, x = TinyNet(num_timesteps=T_DDPM), x_T()
    grid = make_timesteps(T_DDPM, steps, "leading")
    noise = noise_for(steps)
    predict = make_predictor(model, schedule, "eps")
    a = ddim_sampler(predict, x, schedule, grid, eta=1.0, noise=noise)
    b = ddpm_sampler(predict, x, schedule, grid, variance="posterior", noise=noise)
    c = diffusers_ddim_loop(scheduler, model, x, steps, eta=1.0, noise=noise)
    err_ab, err_ac = rel_err(a, b), rel_err(a, c)
    print(f"S={steps}: ddim(eta=1) vs ddpm {err_ab:.2e}, vs diffusers DDIM(eta=1) {err_ac:.2e}")
    assert err_ab < 4e-6  # measured 5.3e-7 (S = 100), 2.4e-7 (S = 20)
    assert err_ac < 4e-6  # measured 6.8e-7 (S = 100), 4.2e-7 (S = 20)


# ---- lucidrains' GaussianDiffusion ----------------------------------------------------------


class Recorder(nn.Module):
    """TinyNet that records the timesteps it is called at (to read lucidrains' grid)."""

    def __init__(self, net: TinyNet):
        super().__init__()
        self.net = net
        self.channels = self.out_dim = net.channels
        self.self_condition = False
        self.random_or_learned_sinusoidal_cond = False
        self.seen: list[int] = []

    def forward(self, x: Tensor, t: Tensor, x_self_cond: Tensor | None = None) -> Tensor:
        self.seen.append(int(t[0]))
        return self.net(x, t)


def lucidrains(model: nn.Module, num_train: int, steps: int, prediction: str, eta: float = 0.0):
    return _lucidrains().GaussianDiffusion(
        model,
        image_size=SHAPE[-1],
        timesteps=num_train,
        sampling_timesteps=steps,
        objective=PREDICTIONS[prediction][1],
        beta_schedule="linear",
        ddim_sampling_eta=eta,
        auto_normalize=False,
    )


def lucidrains_draws(seed: int, n_noise: int) -> tuple[Tensor, Tensor]:
    """x_T and then n_noise noise tensors, in the order lucidrains draws them from the global RNG
    (x_T = torch.randn(shape), then one torch.randn_like(img) per step before the last); a
    zero row is appended for the last step, where neither sampler adds noise."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        x = torch.randn(SHAPE)
        z = [torch.randn(SHAPE) for _ in range(n_noise)]
    return x, torch.stack([*z, torch.zeros(SHAPE)])


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
@pytest.mark.parametrize("eta", [0.0, 0.5])
@pytest.mark.parametrize("steps", [50, 7])
def test_ddim_matches_lucidrains_ddim_sample(prediction, eta, steps):
    """lucidrains' `ddim_sample` (clip x0 to [-1, 1], eps re-derived from it) equals ours with
    clip=1.0 on its grid, for each objective, fed the same x_T and noise (seeded global RNG).
    Its grid int(linspace(-1, T - 1, S + 1)) is our "trailing" when S divides T (asserted for
    S = 50); otherwise it floors T k / S where we round (S = 7 below), so we pass ours its grid,
    read from the timesteps its model was called at. Ours runs on its float32 alphas_cumprod."""
    seed = 3
    rec = Recorder(TinyNet())
    diffusion = lucidrains(rec, T, steps, prediction, eta)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        theirs = diffusion.ddim_sample(SHAPE)
    grid = rec.seen
    assert len(grid) == steps and grid[0] == T - 1
    if T % steps == 0:
        assert grid == make_timesteps(T, steps, "trailing").tolist()
    else:
        assert grid == [999, 856, 713, 570, 427, 284, 141]
        assert make_timesteps(T, steps, "trailing").tolist() == [999, 856, 713, 570, 428, 285, 142]
    schedule = NoiseSchedule.from_alphas_cumprod(diffusion.alphas_cumprod.double())
    x, noise = lucidrains_draws(seed, steps - 1)
    if eta == 0:
        ours = ddim.sample(rec.net, x, schedule, steps=None, spacing=grid, clip=1.0, prediction=prediction)
    else:
        predict = make_predictor(rec.net, schedule, prediction, clip=1.0)
        ours = ddim_sampler(predict, x, schedule, grid, eta=eta, noise=noise)
    err = rel_err(ours, theirs)
    predict = make_predictor(rec.net, schedule, prediction)  # no clip: shows clipping acts
    err_unclipped = rel_err(ddim_sampler(predict, x, schedule, grid, eta=eta, noise=noise), theirs)
    print(
        f"ddim vs lucidrains ddim_sample S={steps} {prediction} eta={eta}: {err:.2e}"
        f" (without clip {err_unclipped:.2e})"
    )
    # measured max 2.2e-6 (x0, S = 50, eta = 0); our own float32 run is 1.2e-6 from our float64
    # run there, so this is float32 rounding along the trajectory
    assert err < 1e-5
    assert err_unclipped > 1e-2  # measured min 5.1e-2 (v, S = 7, eta = 0.5): clipping acts


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_ddpm_matches_lucidrains_p_sample_loop(prediction):
    """lucidrains' full-grid ancestral sampler `p_sample_loop` (posterior variance, x0 clipped
    to [-1, 1]) equals our ddpm(variance="posterior") with clip=1.0 and the same noise."""
    seed = 4
    net = TinyNet(num_timesteps=T_DDPM)
    diffusion = lucidrains(net, T_DDPM, T_DDPM, prediction)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        theirs = diffusion.p_sample_loop(SHAPE)
    schedule = NoiseSchedule.from_alphas_cumprod(diffusion.alphas_cumprod.double())
    x, noise = lucidrains_draws(seed, T_DDPM - 1)
    predict = make_predictor(net, schedule, prediction, clip=1.0)
    grid = make_timesteps(T_DDPM, T_DDPM, "trailing")
    ours = ddpm_sampler(predict, x, schedule, grid, variance="posterior", noise=noise)
    err = rel_err(ours, theirs)
    unclipped = ddpm_sampler(make_predictor(net, schedule, prediction), x, schedule, grid, noise=noise)
    err_unclipped = rel_err(unclipped, theirs)
    print(f"ddpm vs lucidrains p_sample_loop {prediction}: {err:.2e} (without clip {err_unclipped:.2e})")
    assert err < 1e-5  # measured 8.9e-7 eps, 8.3e-7 v, 2.2e-6 x0
    assert err_unclipped > 1e-2  # measured min 0.34 (v): the clipping does act
