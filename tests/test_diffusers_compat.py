"""A diffusers UNet2DModel folder sampled by ddim equals diffusers' own DDIMPipeline."""

import json

import pytest
import torch

import ddim
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
    from ddim.cli import main

    path, _, _ = saved
    npz = tmp_path / "s.npz"
    argv = ["sample", "--checkpoint", str(path), "--n", "3", "--steps", "4", "--out", str(tmp_path / "g.png"),
            "--npz", str(npz), "--device", "cpu", "--clip", "none"]  # fmt: skip
    assert main(argv) == 0
    import numpy as np

    assert np.load(npz)["images"].shape == (3, 8, 8, 3)
