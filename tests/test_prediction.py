"""eps <-> x0 <-> v conversions, the predictor adapter, clipping and thresholding."""

import pytest
import torch

from ddim import NoiseSchedule, make_predictor
from ddim.prediction import (
    clip_x0,
    dynamic_threshold,
    eps_from_v,
    eps_from_x0,
    target_of,
    to_eps_x0,
    v_from,
    x0_from_eps,
    x0_from_v,
)


@pytest.fixture(autouse=True)
def float64_by_default():
    """This module's tensors are float64 (the round trips are checked to 1e-12)."""
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(5, 3, 4, 4, generator=g), torch.randn(5, 3, 4, 4, generator=g)
    a = torch.tensor([0.9999, 0.7, 0.3, 0.01, 1e-4])
    x_t = a.sqrt().view(-1, 1, 1, 1) * x0 + (1 - a).sqrt().view(-1, 1, 1, 1) * eps
    return x_t, x0, eps, a


def test_round_trips_float64(batch):
    x_t, x0, eps, a = batch
    torch.testing.assert_close(x0_from_eps(x_t, eps, a), x0, rtol=0, atol=1e-12)
    torch.testing.assert_close(eps_from_x0(x_t, x0, a), eps, rtol=0, atol=1e-12)
    v = v_from(eps, x0, a)
    torch.testing.assert_close(x0_from_v(x_t, v, a), x0, rtol=0, atol=1e-12)
    torch.testing.assert_close(eps_from_v(x_t, v, a), eps, rtol=0, atol=1e-12)
    for kind, out in (("eps", eps), ("x0", x0), ("v", v)):
        got = to_eps_x0(out, x_t, a, kind)
        torch.testing.assert_close(got.eps, eps, rtol=0, atol=1e-10)
        torch.testing.assert_close(got.x0, x0, rtol=0, atol=1e-10)
        torch.testing.assert_close(target_of(kind, eps, x0, a), out)


def test_v_closed_form_at_a_half():
    # Salimans & Ho: v = alpha eps - sigma x0; at a = 1/2 it is (eps - x0)/sqrt(2)
    eps, x0 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    torch.testing.assert_close(v_from(eps, x0, 0.5), torch.tensor([[1.0, -1.0]]) / 2**0.5)


def test_eps_at_zero_terminal_snr_is_finite():
    x = torch.randn(4, 3, dtype=torch.float32)
    x0 = x0_from_eps(x, x * 0.9, 0.0)
    assert torch.isfinite(x0).all()
    torch.testing.assert_close(x0_from_v(x, x, 0.0), -x)  # v-prediction is exact there


def test_predictor_clips_and_rederives_eps():
    sched = NoiseSchedule.linear(100)
    model = lambda x, t: torch.full_like(x, -3.0)  # noqa: E731 - a wild eps prediction
    x = torch.randn(2, 5)
    eps, x0 = make_predictor(model, sched, "eps", clip=1.0)(x, 50)
    assert x0.abs().max() <= 1.0
    a = sched.alphas_cumprod[50].item()
    # eps is re-derived from the clipped x0, so (eps, x0) reproduce x_t exactly
    torch.testing.assert_close(a**0.5 * x0 + (1 - a) ** 0.5 * eps, x)
    assert not torch.allclose(eps, torch.full_like(x, -3.0))
    eps_n, x0_n = make_predictor(model, sched, "eps")(x, 50)  # default: no clipping
    assert x0_n.abs().max() > 1.0 and torch.equal(eps_n, torch.full_like(x, -3.0))


def test_clip_ranges_and_dynamic_threshold():
    x0 = torch.linspace(-4, 4, 9).reshape(1, 9)
    assert clip_x0(x0, (0.0, 2.0)).min() == 0.0 and clip_x0(x0, (0.0, 2.0)).max() == 2.0
    # Imagen: s = percentile of |x0| (>= 1); clamp to [-s, s] then divide by s. |3 x0| is
    # 12, 9, 6, 3, 0, 3, 6, 9, 12, whose median is 6: clamp to [-6, 6], divide by 6
    d = dynamic_threshold(x0 * 3, percentile=0.5)
    assert d.flatten().tolist() == [-1.0, -1.0, -1.0, -0.5, 0.0, 0.5, 1.0, 1.0, 1.0]
    # the default percentile, 99.5, per example (linear interpolation, as torch/numpy quantile)
    wide = torch.stack([torch.arange(1.0, 201.0), 2 * torch.arange(1.0, 201.0)])
    s = torch.tensor([[199.005], [398.01]])  # the 99.5th percentile of 1..200 and of 2..400
    torch.testing.assert_close(dynamic_threshold(wide), wide.clamp(-s, s) / s)
    small = torch.full((1, 4), 0.5)
    torch.testing.assert_close(dynamic_threshold(small), small)  # s clamps at 1: unchanged
    with pytest.raises(ValueError, match="clip must be"):
        clip_x0(x0, (2.0, 1.0))


def test_dynamic_clip_through_the_predictor_rederives_eps():
    """make_predictor(clip="dynamic"): x0 thresholded per example, eps re-derived from it."""
    sched = NoiseSchedule.linear(10, 0.1, 0.2)
    a = sched.alphas_cumprod[5].item()
    x = torch.linspace(-1, 1, 6).reshape(2, 3)
    out = torch.tensor([[4.0, -8.0, 2.0], [0.5, -0.25, 0.75]])  # a wild x0, and a tame one
    eps, x0 = make_predictor(lambda x_t, t: out, sched, "x0", clip="dynamic")(x, 5)
    torch.testing.assert_close(x0, dynamic_threshold(out))
    assert x0.abs().max() == 1.0 and torch.equal(x0[1], out[1])  # s >= 1 leaves the tame one as is
    torch.testing.assert_close(eps, (x - a**0.5 * x0) / (1 - a) ** 0.5)  # eq. 4 solved for eps


def test_self_conditioning_passes_the_previous_estimate():
    seen = []

    def model(x, t, cond):
        seen.append(cond.clone())
        return torch.zeros_like(x)

    predict = make_predictor(model, NoiseSchedule.linear(10, 0.1, 0.2), "x0", self_condition=True)
    x = torch.randn(2, 3)
    predict(x, 5)
    predict(x, 4, torch.ones_like(x))
    assert torch.equal(seen[0], torch.zeros_like(x)) and torch.equal(seen[1], torch.ones_like(x))


def test_predictor_errors():
    sched = NoiseSchedule.linear(10, 0.1, 0.2)
    with pytest.raises(ValueError, match="unknown prediction 'noise'"):
        make_predictor(lambda x, t: x, sched, "noise")
    with pytest.raises(ValueError, match=r"returned \(2, 6\) for an input of shape \(2, 3\)"):
        make_predictor(lambda x, t: torch.cat([x, x], 1), sched)(torch.zeros(2, 3), 5)
    with pytest.raises(ValueError, match="clip must be"):
        make_predictor(lambda x, t: x, sched, clip=-1.0)


def test_classifier_free_guidance_per_example_and_at_scale_one():
    from ddim.prediction import classifier_free_guidance

    def model(x, t, y):  # a class-dependent output; class 10 is the null class
        return x * 0 + y.view(-1, 1).to(x.dtype) + 100.0 * (y == 10).view(-1, 1)

    x, t = torch.zeros(2, 3), torch.zeros(2, dtype=torch.long)
    y = torch.tensor([3, 7])
    out = classifier_free_guidance(model, y, 2.0, 10)(x, t)
    # uncond = 110, cond = y: 110 + 2 (y - 110), each example with its own label (batch of 2)
    torch.testing.assert_close(out, torch.tensor([[-104.0] * 3, [-96.0] * 3]))
    torch.testing.assert_close(classifier_free_guidance(model, y, 1.0, 10)(x, t), model(x, t, y))
    torch.testing.assert_close(classifier_free_guidance(model, y, 0.0, 10)(x, t), torch.full((2, 3), 110.0))
    # the same example guided alone or in a batch gives the same output
    alone = classifier_free_guidance(model, y[1:], 2.0, 10)(x[1:], t[1:])
    torch.testing.assert_close(alone, out[1:])


def test_guidance_passes_extra_inputs_to_both_passes():
    """Extra inputs (a self-conditioning estimate) reach the conditional and the unconditional
    pass, each example's with its own row."""
    from ddim.prediction import classifier_free_guidance

    def model(x, t, cond, y):  # output = cond + the label; class 10 is the null class
        return cond + y.view(-1, 1).to(x.dtype)

    x, t = torch.zeros(2, 3), torch.zeros(2, dtype=torch.long)
    cond = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    y = torch.tensor([3, 7])
    out = classifier_free_guidance(model, y, 2.0, 10)(x, t, cond)
    # uncond = cond + 10, conditional = cond + y: uncond + 2 (cond + y - uncond) = cond + 2 y - 10
    torch.testing.assert_close(out, cond + 2 * y.view(-1, 1).double() - 10)
