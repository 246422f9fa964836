"""Schedules against their closed forms."""

import math

import pytest
import torch

from ddim import NoiseSchedule


def test_linear_matches_ho_et_al():
    s = NoiseSchedule.linear(1000)
    assert s.betas.dtype == torch.float64 and s.T == 1000
    assert s.betas[0].item() == pytest.approx(1e-4, abs=1e-15)
    assert s.betas[-1].item() == pytest.approx(0.02, abs=1e-15)
    expected = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)
    torch.testing.assert_close(s.alphas_cumprod, expected, rtol=0, atol=1e-15)


def test_linear_scales_endpoints_for_other_T():
    s = NoiseSchedule.linear(250)
    assert s.betas[0].item() == pytest.approx(4e-4) and s.betas[-1].item() == pytest.approx(0.08)
    assert NoiseSchedule.linear(10, 0.1, 0.2).betas[-1].item() == pytest.approx(0.2)


def test_cosine_closed_form():
    T, s_ = 1000, 0.008
    sched = NoiseSchedule.cosine(T)
    f = lambda t: math.cos((t / T + s_) / (1 + s_) * math.pi / 2) ** 2  # noqa: E731
    for t in (0, 10, 500, 900):  # where beta is below the 0.999 cap, a_t = f(t+1)/f(0)
        assert sched.alphas_cumprod[t].item() == pytest.approx(f(t + 1) / f(0), rel=1e-12)
    assert sched.betas.max().item() == pytest.approx(0.999)


def test_sigmoid_closed_form():
    T = 1000
    sched = NoiseSchedule.sigmoid(T)
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    f = lambda t: (sig(3) - sig(t / T * 6 - 3)) / (sig(3) - sig(-3))  # noqa: E731
    for t in (0, 100, 500):
        assert sched.alphas_cumprod[t].item() == pytest.approx(f(t + 1), rel=1e-10)
    assert bool((sched.alphas_cumprod[1:] < sched.alphas_cumprod[:-1]).all())


def test_scaled_linear_closed_form():
    s = NoiseSchedule.scaled_linear(1000)
    assert s.betas[0].item() == pytest.approx(0.00085) and s.betas[-1].item() == pytest.approx(0.012)
    mid = ((0.00085**0.5 + 0.012**0.5) / 2) ** 2
    assert ((s.betas[499] + s.betas[500]) / 2).item() == pytest.approx(mid, rel=1e-5)


@pytest.mark.parametrize("kind", ["linear", "cosine", "sigmoid", "scaled_linear"])
def test_zero_terminal_snr_rescale(kind):
    base = NoiseSchedule.named(kind, 1000)
    z = base.rescale_zero_terminal_snr()
    assert z.alphas_cumprod[-1].item() == 0.0
    assert z.alphas_cumprod[0].item() == pytest.approx(base.alphas_cumprod[0].item(), rel=1e-12)
    # Lin et al. Alg. 1 is affine in sqrt(a): the rescaled root is (root - last) * first/(first - last)
    r = base.alphas_cumprod.sqrt()
    expected = ((r - r[-1]) * r[0] / (r[0] - r[-1])) ** 2
    torch.testing.assert_close(z.alphas_cumprod, expected, rtol=1e-12, atol=1e-15)
    assert z.log_snr(999).item() == -math.inf


def test_lookups_and_config_round_trip():
    s = NoiseSchedule.cosine(100)
    t = torch.tensor([0, 50, 99])
    torch.testing.assert_close(s.alpha(t) ** 2 + s.sigma(t) ** 2, torch.ones(3, dtype=torch.float64))
    torch.testing.assert_close(s.log_snr(t), (s.alpha(t) / s.sigma(t)).log() * 2)
    again = NoiseSchedule.from_config(s.to_config())
    assert torch.equal(again.alphas_cumprod, s.alphas_cumprod)
    torch.testing.assert_close(NoiseSchedule.from_alphas_cumprod(s.alphas_cumprod).betas, s.betas)


def test_schedule_is_immutable_and_float64():
    s = NoiseSchedule(torch.tensor([0.1, 0.2], dtype=torch.float32))
    assert s.alphas_cumprod.dtype == torch.float64
    with pytest.raises(AttributeError):
        s.betas = torch.ones(2)


@pytest.mark.parametrize("betas", [[0.0, 0.1], [0.1, 1.5], []])
def test_bad_betas_are_refused(betas):
    with pytest.raises(ValueError, match="beta"):
        NoiseSchedule(torch.tensor(betas))


def test_unknown_schedule_name():
    with pytest.raises(ValueError, match="unknown schedule 'quad'.*linear"):
        NoiseSchedule.named("quad")
