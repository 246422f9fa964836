"""A diffusers UNet2DModel folder sampled by ddim equals diffusers' own DDIMPipeline."""

import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import ddim
from ddim.cli import main
from ddim.diffusers_compat import is_diffusers_folder, load_diffusers, schedule_from_config

diffusers = pytest.importorskip("diffusers")


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=8,
        in_channels=3,
        out_channels=3,
        layers_per_block=1,
        block_out_channels=(16, 32),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
    )
    for p in unet.parameters():  # random weights everywhere, so every layer matters
        torch.nn.init.normal_(p, std=0.02)
    scheduler = diffusers.DDIMScheduler(
        num_train_timesteps=1000, clip_sample=False, timestep_spacing="leading", prediction_type="sample"
    )
    path = tmp_path_factory.mktemp("ddpm") / "pipe"
    diffusers.DDIMPipeline(unet=unet, scheduler=scheduler).save_pretrained(path)
    return path, unet, scheduler


def test_our_ddim_equals_diffusers_pipeline(saved):
    path, unet, scheduler = saved
    assert is_diffusers_folder(path) and not is_diffusers_folder(path / "scheduler")
    loaded = load_diffusers(path)
    assert loaded.image_shape == (3, 8, 8) and loaded.prediction == "x0"
    pipe = diffusers.DDIMPipeline(unet=unet.eval(), scheduler=scheduler)
    with torch.no_grad():
        theirs = pipe(
            batch_size=2, generator=torch.Generator().manual_seed(1), num_inference_steps=10, output_type="pt"
        ).images
        x_T = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
        ours = ddim.sample(loaded.model, x_T, loaded.schedule, steps=10, spacing="leading", prediction="x0")
    ours = (ours / 2 + 0.5).clamp(0, 1)
    inside = ((ours > 0) & (ours < 1)).float().mean()
    assert inside > 0.2  # the comparison is not only between saturated pixels
    torch.testing.assert_close(ours, theirs, rtol=0, atol=2e-5)


def test_scheduler_configs_map_to_our_schedules():
    s, p = schedule_from_config(
        {
            "beta_schedule": "scaled_linear",
            "beta_start": 0.00085,
            "beta_end": 0.012,
            "prediction_type": "v_prediction",
            "rescale_betas_zero_snr": True,
        }
    )
    assert p == "v" and s.alphas_cumprod[-1] == 0
    s, p = schedule_from_config({})
    assert p == "eps" and torch.allclose(s.betas, ddim.NoiseSchedule.linear(1000).betas)
    with pytest.raises(ValueError, match="beta_schedule 'exotic' is not supported"):
        schedule_from_config({"beta_schedule": "exotic"})


def test_pickled_weights_are_refused(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    (tmp_path / "diffusion_pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(FileNotFoundError, match="does not unpickle"):
        load_diffusers(tmp_path)


def test_ddim_sample_command_takes_a_diffusers_folder(saved, tmp_path):
    path, _, _ = saved
    npz = tmp_path / "s.npz"
    argv = ["sample", "--checkpoint", str(path), "--n", "3", "--steps", "4", "--out", str(tmp_path / "g.png"),
            "--npz", str(npz), "--device", "cpu", "--clip", "none"]  # fmt: skip
    assert main(argv) == 0
    assert np.load(npz)["images"].shape == (3, 8, 8, 3)


@pytest.fixture(scope="module")
def diffusers_images(saved, tmp_path_factory):
    """Two 8x8 RGB PNGs for the diffusers model."""
    folder = tmp_path_factory.mktemp("rgb")
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def test_every_command_that_runs_a_model_takes_a_diffusers_folder(saved, diffusers_images, tmp_path):
    path, _, _ = saved
    ck = ["--checkpoint", str(path), "--steps", "3", "--device", "cpu"]
    z, out = str(tmp_path / "z.npz"), str(tmp_path / "o.png")
    images = ["--images", str(diffusers_images)]
    assert main(["invert", *ck, *images, "--out", z]) == 0
    assert main(["sample", *ck, "--latents", z, "--out", out, "--npz", str(tmp_path / "back.npz")]) == 0
    pipe = ddim.load(path, device="cpu")
    assert pipe.clip is None  # the scheduler config says clip_sample: false
    x = ddim.inputs.read_images(diffusers_images, pipe.image_shape)[0]
    back = pipe.decode(ddim.Latents.load(z), output="tensor", progress=False)
    assert (back - x).abs().max() < 1e-4  # exact through a diffusers UNet too
    assert main(["interpolate", *ck, "--latents", z, "--pair", "0", "1", "--n", "3", "--out", out]) == 0
    assert main(["edit", *ck, *images, "--strength", "0.5", "--out", out]) == 0
    mask = tmp_path / "mask.png"
    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(mask)
    assert main(["inpaint", *ck, *images, "--mask", str(mask), "--out", out]) == 0


def test_without_diffusers_one_line_names_the_extra(saved, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # `import diffusers` raises ImportError
    path, _, _ = saved
    argv = ["sample", "--checkpoint", str(path), "--n", "1", "--out", str(tmp_path / "g.png")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert 'pip install "ddim[diffusers]"' in err and len(err.strip().splitlines()) == 1
