"""Tests of ddim.images: grid and trajectory-strip layout, sizes, pixel values."""

import numpy as np
import pytest
import torch
from PIL import Image

from ddim import NoiseSchedule, sample
from ddim.errors import BadValue
from ddim.images import auto_scale, check_image_path, grid_array, save_grid, save_trajectory_strip


def test_grid_size_padding_and_pixels(tmp_path):
    images = -torch.ones(10, 3, 8, 8)
    images[0] = 1.0  # the first tile white, the rest black
    path = save_grid(images, tmp_path / "sub" / "grid.png")
    with Image.open(path) as im:
        # ceil(sqrt(10)) = 4 per row, 3 rows; tiles enlarged 8x (64 px), 1px apart and around
        assert im.size == (4 * 65 + 1, 3 * 65 + 1) and im.mode == "RGB"
        pixels = np.asarray(im)
    assert (pixels[1:65, 1:65] == 255).all() and (pixels[1:65, 66:130] == 0).all()
    assert (pixels[0] == 255).all() and (pixels[:, 65] == 255).all()  # padding is white
    assert (pixels[131:, 131:] == 255).all()  # the two empty slots of the last row


def test_grid_options():
    assert grid_array(torch.zeros(6, 1, 8, 8), nrow=3, scale=1).shape == (2 * 9 + 1, 3 * 9 + 1, 1)
    assert grid_array(torch.zeros(1, 1, 28, 28)).shape == (28 * 3 + 2, 28 * 3 + 2, 1)
    assert auto_scale(8) == 8 and auto_scale(64) == 1 and auto_scale(256) == 1
    with pytest.raises(ValueError, match=r"\[N, C, H, W\]"):
        grid_array(torch.zeros(2, 2, 8, 8))


def test_trajectory_strip_layout(tmp_path):
    steps, n = 20, 5
    xs = torch.linspace(-1, 1, steps + 1).view(-1, 1, 1, 1, 1).expand(-1, n, 1, 4, 4).clone()
    x0s = -xs[1:]
    path = save_trajectory_strip(xs, x0s, tmp_path / "strip.png", scale=1)
    with Image.open(path) as im:
        # 4 samples x 2 rows, 10 columns, 4x4 tiles 1px apart
        assert im.size == (10 * 5 + 1, 8 * 5 + 1)
        pixels = np.asarray(im)
    assert pixels[1, 1] == 0  # x_T = -1
    assert pixels[6, 1] == round((0.9 + 1) * 127.5)  # the x0 estimate at step 0: -xs[1] = 0.9
    assert pixels[1, 46] == round((xs[19, 0, 0, 0, 0].item() + 1) * 127.5)  # last column: step 19
    with pytest.raises(ValueError, match="S\\+1"):
        save_trajectory_strip(xs, x0s[:-1], tmp_path / "bad.png")


def test_trajectory_strip_from_a_sampler(tmp_path):
    traj = sample(lambda x, t: torch.zeros_like(x), torch.randn(3, 1, 8, 8), NoiseSchedule.linear(100),
                  steps=4, return_all_timesteps=True)  # fmt: skip
    with Image.open(save_trajectory_strip(traj.xs, traj.x0s, tmp_path / "s.png")) as im:
        assert im.size == (4 * 65 + 1, 6 * 65 + 1)


def test_an_output_path_is_checked_before_the_work(tmp_path):
    assert check_image_path(tmp_path / "a.PNG") == tmp_path / "a.PNG"
    with pytest.raises(BadValue, match=r"grid\.pgn: unknown image extension '\.pgn'; name it \*\.png"):
        save_grid(torch.zeros(1, 1, 4, 4), tmp_path / "grid.pgn")
    (tmp_path / "d.png").mkdir()
    with pytest.raises(BadValue, match=r"d\.png is a folder"):
        check_image_path(tmp_path / "d.png")
