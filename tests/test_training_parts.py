"""Tests of ddim.training.parts: a micro-batch's backward pass in parts, a thread each, computes
the whole micro-batch's loss and gradients (to float rounding) with the same randomness, the
same way every time; and the training loop uses it where it may."""

import functools

import pytest
import torch
from safetensors.torch import load_file
from test_training import digits, read_log, tiny_run  # noqa: F401 (digits: a fixture)

from ddim.errors import BadValue
from ddim.models import UNet, UNetConfig
from ddim.objectives import diffusion_loss
from ddim.schedule import NoiseSchedule
from ddim.training import train
from ddim.training.parts import backward_in_parts, parts_for

CPU = torch.device("cpu")


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_a_cpu_splits_an_even_micro_batch_in_two_whatever_its_threads():
    assert parts_for(CPU, 8, whole=False) == 2
    assert parts_for(CPU, 7, whole=False) == 1  # the parts must be equal shares
    assert parts_for(CPU, 8, whole=True) == 1  # DDP, torch.compile or dropout
    assert parts_for(torch.device("cuda"), 8, whole=False) == 1  # a GPU is one device


def unet_loss(net, x0, labels, parts, part, generator):
    """diffusion_loss of the part-th share, as the training loop computes it."""
    share = slice(part * len(x0) // parts, (part + 1) * len(x0) // parts)
    loss = diffusion_loss(
        net, x0[share], NoiseSchedule.linear(50), prediction="v", self_condition=True, offset_noise=0.1,
        generator=generator, model_kwargs={"y": labels[share]}, rank_world=(part, parts),
    )  # fmt: skip
    return loss.mean() / parts


def grads_in_parts(parts: int, seed: int = 3):
    """Loss, gradients and the generator's next draw after one micro-batch in `parts` parts."""
    torch.manual_seed(0)
    net = UNet(UNetConfig(base_channels=8, channel_mult=(1, 2), groups=4, num_classes=3, self_condition=True))
    for p in net.parameters():  # no zero-initialised layers: every gradient carries signal
        torch.nn.init.normal_(p, std=0.1)
    x0, labels = torch.randn(6, 1, 8, 8), torch.tensor([0, 1, 2, 0, 1, 2])
    gen = torch.Generator().manual_seed(seed)
    params = list(net.parameters())
    loss = backward_in_parts(functools.partial(unet_loss, net, x0, labels, parts), parts, gen, params)
    return loss, [p.grad for p in params], torch.rand(4, generator=gen)


def test_parts_compute_the_whole_batch_with_its_randomness(two_threads):
    """Each example gets the timestep, noise, offset and self-conditioning draw it gets in one
    piece, so loss and gradients agree to float rounding; the generator goes on as after one."""
    loss1, grads1, next1 = grads_in_parts(1)
    loss2, grads2, next2 = grads_in_parts(2)
    assert torch.equal(next1, next2)
    torch.testing.assert_close(loss2, loss1, rtol=1e-6, atol=0)
    for g1, g2 in zip(grads1, grads2, strict=True):
        torch.testing.assert_close(g2, g1, rtol=1e-5, atol=1e-7)
    other_loss, _, _ = grads_in_parts(2, seed=4)  # and the randomness is the generator's
    assert not torch.allclose(other_loss, loss2)


def test_parts_give_the_same_bits_every_time_on_any_number_of_threads(two_threads):
    """The gradients are added in the order of the parts, whichever thread ends first; with one
    thread the parts run one after the other, each op computing what it computes in a thread."""
    loss, grads, _ = grads_in_parts(2)
    for threads in (2, 2, 1, 1):
        torch.set_num_threads(threads)
        again, grads_again, _ = grads_in_parts(2)
        assert torch.equal(again, loss)
        assert all(torch.equal(a, b) for a, b in zip(grads_again, grads, strict=True))


def test_an_error_in_a_part_is_raised_and_threads_are_restored(two_threads):
    weight = torch.ones(3, requires_grad=True)

    def loss_of(part, generator):
        if part == 1:
            raise BadValue("part 1 failed")
        return weight.sum()

    with pytest.raises(BadValue, match="part 1 failed"):
        backward_in_parts(loss_of, 2, torch.Generator(), [weight])
    assert torch.get_num_threads() == 2 and weight.grad is None


def test_the_loop_trains_in_parts_and_resumes_exactly(tmp_path, digits, two_threads, monkeypatch):  # noqa: F811
    """The loop trains a CPU's micro-batches in two parts, and N steps in one go equal N/2 steps
    then a resume, bit for bit, with labels, label dropout and self-conditioning drawing
    randomness and gradient accumulation; 1 thread trains the same bits as 2."""
    used = []

    def spy(loss_of, parts, generator, params):
        used.append(parts)
        return backward_in_parts(loss_of, parts, generator, params)

    monkeypatch.setattr("ddim.training.loop.backward_in_parts", spy)
    model = dict(num_classes=10, self_condition=True)
    options = dict(batch_size=8, grad_accum=2, label_dropout=0.3, checkpoint_every=2)
    train(tiny_run(model, steps=4, **options), tmp_path / "once", progress=False, dataset=digits)
    train(tiny_run(model, steps=2, **options), tmp_path / "twice", progress=False, dataset=digits)
    torch.set_num_threads(1)
    end = train(
        tiny_run(model, steps=4, **options), tmp_path / "twice", resume=True, progress=False, dataset=digits
    )
    assert set(used) == {2}
    for name in ("model.safetensors", "ema.safetensors"):
        a = load_file(tmp_path / "once" / "checkpoints" / "step-000004" / name)
        b = load_file(end / name)
        assert all(torch.equal(a[key], b[key]) for key in a)
    once, twice = read_log(tmp_path / "once"), read_log(tmp_path / "twice")
    assert [row["loss"] for row in once] == [row["loss"] for row in twice]
