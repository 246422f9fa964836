"""The per-example DDPM loss, timestep draws, min-SNR weighting and offset noise."""

import pytest
import torch

from ddim import NoiseSchedule, diffusion_loss
from ddim.objectives import min_snr_weight, sample_timesteps

SCHED = NoiseSchedule.linear(100)


def test_loss_is_per_example_and_zero_for_the_exact_target():
    x0 = torch.randn(6, 2, 3, 3, generator=torch.Generator().manual_seed(0))
    noise = torch.randn_like(x0)
    t = torch.tensor([0, 10, 50, 99, 3, 70])
    a = SCHED.alphas_cumprod[t].float().view(-1, 1, 1, 1)
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
    targets = {"eps": noise, "x0": x0, "v": a.sqrt() * noise - (1 - a).sqrt() * x0}
    for kind, target in targets.items():

        def perfect(x, tt, target=target):
            torch.testing.assert_close(x, x_t)  # the model sees x_t = sqrt(a) x0 + sqrt(1-a) eps
            assert torch.equal(tt, t)
            return target

        loss = diffusion_loss(perfect, x0, SCHED, prediction=kind, t=t, noise=noise)
        assert loss.shape == (6,) and loss.abs().max() < 1e-10
    # a model off by 1 everywhere has loss exactly 1 per example
    loss = diffusion_loss(lambda x, tt: noise + 1, x0, SCHED, t=t, noise=noise)
    torch.testing.assert_close(loss, torch.ones(6))


def test_min_snr_weights_match_hang_et_al():
    snr = torch.tensor([0.0, 0.5, 5.0, 50.0], dtype=torch.float64)
    torch.testing.assert_close(
        min_snr_weight(snr, "x0"), torch.tensor([0.0, 0.5, 5.0, 5.0], dtype=torch.float64)
    )
    torch.testing.assert_close(
        min_snr_weight(snr, "eps"), torch.tensor([1.0, 1.0, 1.0, 0.1], dtype=torch.float64)
    )
    torch.testing.assert_close(
        min_snr_weight(snr, "v"), torch.tensor([0.0, 0.5 / 1.5, 5 / 6, 5 / 51], dtype=torch.float64)
    )
    x0, noise, t = torch.randn(4, 3), torch.randn(4, 3), torch.tensor([0, 1, 50, 99])
    plain = diffusion_loss(lambda x, tt: torch.zeros_like(x), x0, SCHED, t=t, noise=noise)
    weighted = diffusion_loss(
        lambda x, tt: torch.zeros_like(x), x0, SCHED, t=t, noise=noise, weighting="min_snr"
    )
    a = SCHED.alphas_cumprod[t]
    torch.testing.assert_close(weighted, plain * min_snr_weight(a / (1 - a), "eps").float())


def test_zero_terminal_snr_loss_is_finite():
    z = SCHED.rescale_zero_terminal_snr()
    for kind in ("eps", "x0", "v"):
        loss = diffusion_loss(
            lambda x, t: x,
            torch.randn(3, 2),
            z,
            prediction=kind,
            t=torch.tensor([99, 99, 0]),
            weighting="min_snr",
        )
        assert torch.isfinite(loss).all()


def test_timesteps_are_uniform_and_seeded():
    g = torch.Generator().manual_seed(0)
    t = sample_timesteps(100000, 10, g)
    counts = torch.bincount(t, minlength=10).double() / 100000
    assert t.min() == 0 and t.max() == 9 and (counts - 0.1).abs().max() < 0.005
    assert torch.equal(
        sample_timesteps(5, 10, torch.Generator().manual_seed(1)),
        sample_timesteps(5, 10, torch.Generator().manual_seed(1)),
    )


def test_offset_noise_shifts_each_channel_by_a_constant():
    x0 = torch.zeros(4000, 2, 4, 4)
    seen = {}

    def model(x, t):
        seen["x"] = x
        return torch.zeros_like(x)

    t = torch.full((4000,), 99)
    diffusion_loss(model, x0, SCHED, t=t, offset_noise=1.0, generator=torch.Generator().manual_seed(0))
    per_channel_mean = seen["x"].mean((2, 3))
    # noise + offset * N(0,1) per (example, channel): the channel means vary with variance ~ 1 + 1/16
    a = SCHED.alphas_cumprod[99].item()
    assert per_channel_mean.var().item() == pytest.approx((1 - a) * (1 + 1 / 16), rel=0.1)
    # one offset per (example, channel), independent across channels: the two channel means of an
    # example are uncorrelated (a per-example offset would correlate them at 1 / (1 + 1/16) = 0.94)
    corr = torch.corrcoef(per_channel_mean.T)[0, 1].item()
    assert abs(corr) < 0.1  # 4000 examples: standard error 0.016
    # and constant over the pixels: within a channel, what is left is the white noise of variance 1
    within = seen["x"] - seen["x"].mean((2, 3), keepdim=True)
    assert within.var().item() == pytest.approx((1 - a) * 15 / 16, rel=0.02)


@pytest.mark.parametrize("prediction", ["x0", "eps", "v"])
def test_self_conditioning_feeds_the_models_own_estimate_to_half_the_batch(prediction):
    """The estimate fed back is x0, converted from the model's output (prediction.to_eps_x0)."""
    calls = []

    def model(x, t, cond):
        calls.append((x.clone(), t.clone(), cond.clone()))
        return torch.full_like(x, 0.25)

    x0 = torch.randn(400, 3, generator=torch.Generator().manual_seed(1))
    diffusion_loss(
        model,
        x0,
        SCHED,
        prediction=prediction,
        self_condition=True,
        generator=torch.Generator().manual_seed(0),
    )
    (x_t, t, first), (x_t2, t2, second) = calls
    assert torch.equal(first, torch.zeros_like(first))  # the estimate is made without conditioning
    assert torch.equal(x_t, x_t2) and torch.equal(t, t2)  # both calls see the same x_t
    used = (second != 0).all(1)
    assert 0.4 < used.float().mean() < 0.6 and torch.equal(second[~used], torch.zeros_like(second[~used]))
    a = SCHED.alphas_cumprod[t].float().view(-1, 1)
    out = torch.full_like(x_t, 0.25)
    x0_hat = {  # Ho et al. eq. 4 solved for x0 (DDIM eq. 12); Salimans & Ho 2022, sec. 4, for v
        "x0": out,
        "eps": (x_t - (1 - a).sqrt() * out) / a.sqrt(),
        "v": a.sqrt() * x_t - (1 - a).sqrt() * out,
    }[prediction]
    torch.testing.assert_close(second[used], x0_hat[used], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "kwargs,match",
    [({"prediction": "score"}, "unknown prediction"), ({"weighting": "p2"}, "unknown weighting")],
)
def test_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        diffusion_loss(lambda x, t: x, torch.randn(2, 2), SCHED, **kwargs)
