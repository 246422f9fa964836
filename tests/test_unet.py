"""Tests of ddim.models: shapes, conditioning paths, config round trip, gradients, errors."""

import dataclasses
import json

import pytest
import torch

from ddim.models import UNet, UNetConfig

TINY = dict(base_channels=8, channel_mult=(1, 2), groups=4, num_heads=2)


def make(seed: int = 0, **overrides) -> UNet:
    """A tiny UNet with every parameter random: the zero-initialised output layers (ADM) would
    otherwise make the output identically zero and hide the paths under test."""
    torch.manual_seed(seed)
    model = UNet(UNetConfig(**{**TINY, **overrides}))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2)
    return model


def t_of(n: int) -> torch.Tensor:
    return torch.randint(0, 1000, (n,))


@pytest.mark.parametrize("channels", [1, 3, 4])
def test_output_shape_equals_input_shape(channels: int) -> None:
    x = torch.randn(2, channels, 8, 8)
    out = make(in_channels=channels)(x, t_of(2))
    assert out.shape == x.shape
    assert torch.isfinite(out).all()


def test_out_channels_can_differ_from_in_channels() -> None:
    model = make(in_channels=3, out_channels=6)
    assert model(torch.randn(2, 3, 8, 8), t_of(2)).shape == (2, 6, 8, 8)


def test_non_square_input_and_float_timesteps() -> None:
    model = make(channel_mult=(1, 2, 2), attention_resolutions=(1, 4))
    x = torch.randn(2, 1, 8, 16)
    assert model(x, torch.tensor([0.5, 999.0])).shape == x.shape


def test_output_depends_on_timestep() -> None:
    model = make()
    x = torch.randn(1, 1, 8, 8)
    assert not torch.allclose(model(x, torch.tensor([10])), model(x, torch.tensor([900])))


def test_one_timestep_for_the_whole_batch() -> None:
    model, x = make(), torch.randn(2, 1, 8, 8)
    assert torch.allclose(model(x, torch.tensor(250)), model(x, torch.full((2,), 250)))


def test_inputs_the_model_was_not_built_for_are_errors() -> None:
    model, x = make(), torch.randn(2, 1, 8, 8)
    with pytest.raises(ValueError, match="num_classes"):
        model(x, t_of(2), y=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="self_condition"):
        model(x, t_of(2), x_self_cond=x)


def test_self_conditioning_path() -> None:
    model = make(in_channels=2, self_condition=True)
    x, t = torch.randn(2, 2, 8, 8), t_of(2)
    assert model.conv_in.in_channels == 4
    zeros = model(x, t, x_self_cond=torch.zeros_like(x))
    assert torch.allclose(model(x, t), zeros)  # None means zeros
    assert not torch.allclose(model(x, t, x_self_cond=torch.randn_like(x)), zeros)


def test_class_conditional_path_with_null_class() -> None:
    model = make(num_classes=10)
    assert model.label_emb.num_embeddings == 11  # row 10 is the null class
    x, t = torch.randn(2, 1, 8, 8), t_of(2)
    null = model(x, t)
    assert torch.allclose(null, model(x, t, y=torch.tensor([10, 10])))
    assert not torch.allclose(null, model(x, t, y=torch.tensor([3, 3])))


def test_config_json_round_trip() -> None:
    config = UNetConfig(in_channels=3, channel_mult=(1, 2, 4), attention_resolutions=(2, 4), num_classes=10)
    back = UNetConfig.from_dict(json.loads(json.dumps(dataclasses.asdict(config))))
    assert back == config
    assert isinstance(back.channel_mult, tuple) and isinstance(back.attention_resolutions, tuple)
    assert UNetConfig(**json.loads(json.dumps(dataclasses.asdict(config)))) == config
    assert back.out_channels == 3


def test_config_is_frozen_and_validated() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        UNetConfig().base_channels = 64  # type: ignore[misc]
    with pytest.raises(ValueError, match="groups"):
        UNetConfig(base_channels=12, groups=8)


def test_gradient_reaches_every_parameter() -> None:
    model = make(num_classes=3, self_condition=True, dropout=0.1)
    x = torch.randn(2, 1, 8, 8)
    out = model(x, t_of(2), x_self_cond=torch.randn_like(x), y=torch.tensor([0, 3]))
    out.square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_zero_initialised_output_at_start() -> None:
    model = UNet(UNetConfig(**TINY))
    assert model(torch.randn(2, 1, 8, 8), t_of(2)).abs().max() == 0


@pytest.mark.parametrize("shape", [(8, 6), (6, 8), (10, 10)])
def test_indivisible_size_is_a_clear_error(shape: tuple[int, int]) -> None:
    model = make(channel_mult=(1, 2, 2))  # divisor 4
    with pytest.raises(ValueError, match=rf"{shape[0]}x{shape[1]}.*divisible by 4"):
        model(torch.randn(1, 1, *shape), t_of(1))


def test_deterministic_under_seed() -> None:
    a, b = make(seed=1, dropout=0.5), make(seed=1, dropout=0.5)
    for pa, pb in zip(a.state_dict().values(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb)
    c = make(seed=2, dropout=0.5)
    assert not all(map(torch.equal, a.parameters(), c.parameters()))
    x, t = torch.randn(2, 1, 8, 8), t_of(2)
    outs = []
    for model in (a, b):
        torch.manual_seed(7)  # dropout is active in train mode
        outs.append(model(x, t))
    assert torch.equal(*outs)
