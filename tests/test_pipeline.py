"""`ddim.generation` (the one function that makes images) and `ddim.load`'s pipeline: seeded
per example, independent of batching, inference mode, every input form, the exact round trip,
latents that refuse another model, edit at strength 0, inpainting's kept pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import ddim
from ddim.data import to_uint8
from ddim.errors import BadFile, BadValue
from ddim.generation import generate, generate_batches, sample_seeded
from ddim.inputs import read_images, read_mask
from ddim.latents import Latents
from ddim.noise import PerSampleNoise
from ddim.schedule import NoiseSchedule


class TinyNet(torch.nn.Module):
    """A model with parameters (so the pipeline can find its device and autograd could attach)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(0.3))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.w * torch.tanh(x) + 1e-3 * t.view(-1, *[1] * (x.ndim - 1))


SCHED = NoiseSchedule.linear(100)
SHAPE = (1, 4, 4)


def test_generate_does_not_depend_on_batching_or_the_first_index():
    options = dict(steps=5, eta=1.0, seed=3, progress=False)
    whole = generate(TinyNet(), SCHED, SHAPE, 7, batch_size=7, **options)
    assert torch.equal(whole, generate(TinyNet(), SCHED, SHAPE, 7, batch_size=3, **options))
    parts = [generate(TinyNet(), SCHED, SHAPE, k, start=s, **options) for s, k in ((0, 2), (2, 5))]
    assert torch.equal(whole, torch.cat(parts))
    assert not torch.equal(whole, generate(TinyNet(), SCHED, SHAPE, 7, **{**options, "seed": 4}))


def test_generate_is_the_seeded_sample_of_each_example():
    """x_T from stream 0 of example i, each step's noise from stream 1: ddim.sample by hand."""
    x_T = PerSampleNoise.from_seed(5, 3, start=4).randn(SHAPE)
    noise = PerSampleNoise.from_seed(5, 3, start=4, stream=1)
    with torch.inference_mode():
        expected = ddim.sample(TinyNet(), x_T, SCHED, steps=4, eta=0.5, generator=noise)
    got = generate(TinyNet(), SCHED, SHAPE, 3, seed=5, start=4, steps=4, eta=0.5, progress=False)
    assert torch.equal(got, expected)
    given = generate(TinyNet(), SCHED, SHAPE, 3, seed=5, start=4, x_T=x_T, steps=4, eta=0.5, progress=False)
    assert torch.equal(given, expected)  # decoding given latents uses the same per-step noise


def test_generate_runs_without_autograd_and_joins_trajectories():
    net = TinyNet()
    out = generate(net, SCHED, SHAPE, 5, steps=3, batch_size=2, progress=False)
    assert not out.requires_grad and out.dtype == torch.float32
    traj = generate(net, SCHED, SHAPE, 5, steps=3, batch_size=2, progress=False, return_all_timesteps=True)
    one = sample_seeded(net, SCHED, SHAPE, 0, 0, 5, steps=3, return_all_timesteps=True)
    assert traj.xs.shape == (4, 5, *SHAPE) and torch.equal(traj.xs, one.xs) and torch.equal(traj.x0s, one.x0s)
    assert torch.equal(traj.samples, out)


def test_generate_progress_counts_images(monkeypatch):
    seen = {}

    class Bar:
        def __init__(self, total, unit, **kw):
            seen.update(total=total, unit=unit, updates=[])

        def __enter__(self):
            return self

        def __exit__(self, *a):
            pass

        def update(self, k):
            seen["updates"].append(k)

    monkeypatch.setattr("ddim.generation.tqdm", Bar)
    list(generate_batches(TinyNet(), SCHED, SHAPE, 7, batch_size=3, steps=2))
    assert seen == {"total": 7, "unit": "image", "updates": [3, 3, 1]}


def test_generate_with_bf16_autocast_and_labels_passes_them_per_example():
    calls = []

    def model(x, t, y=None):
        calls.append(y.clone())
        return torch.zeros_like(x)

    labels = torch.tensor([0, 1, 2, 0, 1])
    generate(
        model, SCHED, SHAPE, 5, steps=1, batch_size=2, labels=labels, null_class=3, bf16=True, progress=False
    )
    assert [c.tolist() for c in calls] == [[0, 1], [2, 0], [1]]
    with pytest.raises(BadValue, match="null_class"):
        generate(model, SCHED, SHAPE, 2, steps=1, labels=labels[:2], progress=False)


# ---- the pipeline on the session's tiny trained run ---------------------------------------------
@pytest.fixture(scope="module")
def pipe(trained_run: Path) -> ddim.Pipeline:
    return ddim.load(trained_run, device="cpu")


@pytest.fixture(scope="module")
def digits(pipe) -> np.ndarray:
    """Four uint8 images [4, 8, 8, 1] at the model's size: real ones, so nothing is resized."""
    return pipe.sample(4, steps=3, seed=11, progress=False)


def test_load_reads_the_newest_checkpoint_and_its_data_range(trained_run: Path, pipe):
    assert pipe.step == 2 and pipe.path.name == "step-000002"
    assert pipe.clip == 1.0 and pipe.image_shape == (1, 8, 8)
    first = ddim.load(trained_run / "checkpoints" / "step-000001", device="cpu")
    assert first.step == 1 and first.fingerprint != pipe.fingerprint


def test_sample_outputs_agree_and_clip_by_the_data_range(pipe):
    images = pipe.sample(3, steps=3, eta=1.0, seed=2, progress=False)
    tensor = pipe.sample(3, steps=3, eta=1.0, seed=2, output="tensor", progress=False)
    assert images.dtype == np.uint8 and images.shape == (3, 8, 8, 1)
    np.testing.assert_array_equal(images, to_uint8(tensor))
    raw = generate(
        pipe.model,
        pipe.schedule,
        pipe.image_shape,
        3,
        seed=2,
        steps=3,
        eta=1.0,
        clip=1.0,
        prediction=pipe.prediction,
        progress=False,
    )
    assert torch.equal(tensor, raw)  # the checkpoint's clip (1.0) without being asked
    with pytest.raises(BadValue, match="output must be"):
        pipe.sample(1, steps=1, output="png")
    with pytest.raises(BadValue, match="more than the model's 1000 timesteps"):
        pipe.sample(1, steps=1001)


def test_every_image_form_reads_alike(pipe, digits, tmp_path: Path):
    x, names, sizes = read_images(digits, pipe.image_shape)
    assert names == [f"image-{i}" for i in range(4)] and sizes == [(8, 8)] * 4
    for i, image in enumerate(digits):
        Image.fromarray(image[..., 0]).save(tmp_path / f"{i}.png")
    forms = [
        tmp_path,
        [tmp_path / f"{i}.png" for i in range(4)],
        [Image.open(tmp_path / f"{i}.png") for i in range(4)],
        x.clone(),
    ]
    for form in forms:
        assert torch.equal(read_images(form, pipe.image_shape)[0], x)
    assert read_images(tmp_path, pipe.image_shape)[1] == ["0.png", "1.png", "2.png", "3.png"]
    with pytest.raises(BadValue, match="uint8"):
        read_images(digits.astype(np.float32), pipe.image_shape)


@pytest.mark.parametrize("sampler", ddim.EXACT_INVERTIBLE)
def test_invert_then_decode_is_exact(pipe, digits, sampler, tmp_path: Path):
    latents = pipe.invert(digits, steps=5, sampler=sampler, progress=False)
    assert (latents.sampler, latents.steps, len(latents)) == (sampler, 5, 4)
    back = pipe.decode(latents, output="tensor", progress=False)
    x = read_images(digits, pipe.image_shape)[0]
    assert (back - x).abs().max() < 1e-4  # float32 round trip
    saved = Latents.load(latents.save(tmp_path / "z.npz"))
    assert torch.equal(saved.z, latents.z) and saved.spacing == latents.spacing
    np.testing.assert_array_equal(pipe.decode(saved, progress=False), digits)


def test_ddim_inversion_is_approximate_and_refine_helps(pipe, digits):
    x = read_images(digits, pipe.image_shape)[0]
    errors = []
    for refine in (0, 3):
        z = pipe.invert(digits, steps=5, sampler="ddim", refine=refine, progress=False)
        errors.append((pipe.decode(z, output="tensor", progress=False) - x).pow(2).mean())
    assert errors[1] <= errors[0]


def test_latents_refuse_another_model_and_another_shape(trained_run: Path, pipe, digits):
    first = ddim.load(trained_run / "checkpoints" / "step-000001", device="cpu")
    latents = first.invert(digits[:1], steps=2, progress=False)
    with pytest.raises(BadFile, match="was inverted by the checkpoint .*step-000001"):
        pipe.decode(latents)
    wrong = Latents(
        torch.zeros(1, 1, 16, 16), "ddim", 2, "trailing", "x", pipe.fingerprint, ["a"], (1, 16, 16)
    )
    with pytest.raises(BadFile, match=r"\(1, 16, 16\) images but the model"):
        pipe.decode(wrong)


def test_interpolate_ends_reproduce_the_inputs(pipe, digits):
    row = pipe.interpolate(digits[0], digits[1], 5, steps=4, output="tensor")
    x = read_images(digits[:2], pipe.image_shape)[0]
    assert row.shape == (5, 1, 8, 8)
    assert (row[0] - x[0]).abs().max() < 1e-4 and (row[-1] - x[1]).abs().max() < 1e-4
    seeds = pipe.interpolate(0, 1, 3, steps=2)  # seeds keep working: x_T of seed 0 is sample 0's
    np.testing.assert_array_equal(seeds[0], pipe.sample(1, steps=2, seed=0, progress=False)[0])


def test_edit_at_strength_0_returns_the_input(pipe, digits):
    np.testing.assert_array_equal(pipe.edit(digits, 0.0, steps=5, progress=False), digits)
    x = read_images(digits, pipe.image_shape)[0]
    assert torch.equal(pipe.edit(x, 0.0, steps=5, output="tensor", progress=False), x)
    changed = pipe.edit(digits, 0.8, steps=5, seed=1, progress=False)
    assert not np.array_equal(changed, digits)
    # image i's result depends on the seed and i only, not on the batch
    np.testing.assert_array_equal(
        pipe.edit(digits, 0.8, steps=5, seed=1, batch_size=3, progress=False), changed
    )


def test_inpaint_keeps_the_kept_pixels_bit_exactly(pipe, digits, tmp_path: Path):
    x = read_images(digits, pipe.image_shape)[0]
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 4:] = 1  # generate the right half
    out = pipe.inpaint(x, mask, steps=4, seed=0, output="tensor", progress=False)
    keep = (mask == 0).expand_as(x)
    assert torch.equal(out[keep], x[keep]) and not torch.equal(out, x)
    png = tmp_path / "mask.png"
    Image.fromarray((mask[0, 0].numpy() * 255).astype(np.uint8)).save(png)
    assert torch.equal(read_mask(png, pipe.image_shape, ["a", "b"], [(8, 8), (8, 8)]), mask)
    np.testing.assert_array_equal(pipe.inpaint(digits, png, steps=4, seed=0, progress=False), to_uint8(out))
    with pytest.raises(BadFile, match="mask .* is 8x8 but image b is 12x8"):
        read_mask(png, pipe.image_shape, ["a", "b"], [(8, 8), (8, 12)])
