"""Tests for ddim.evaluation.samples: an .npz read a slice at a time as np.load reads it whole,
whichever way it was written, and a damaged one as one line naming it."""

import numpy as np
import pytest
import torch

from ddim.cli.outputs import NpzWriter, write_pngs
from ddim.data import load_dataset, to_uint8
from ddim.errors import BadFile, BadValue
from ddim.evaluation import NpzImages, load_samples


@pytest.mark.parametrize("save", ["writer", "savez", "compressed", "float", "big-endian", "grey"])
def test_npz_images_read_slices_as_np_load_does(tmp_path, save):
    images = load_dataset("digits").images[:37]
    pixels, path = to_uint8(images), tmp_path / "x.npz"
    if save == "writer":  # what `ddim sample --npz` writes
        with NpzWriter(path, pixels.shape) as writer:
            writer.write(pixels[:20])
            writer.write(pixels[20:])
            writer.close()
    elif save == "savez":
        np.savez(path, images=pixels, other=np.zeros(3))
    elif save == "compressed":
        np.savez_compressed(path, samples=pixels)
    elif save == "float":
        np.savez(path, images.numpy())
    elif save == "big-endian":
        np.savez(path, images.numpy().astype(">f4"))
    else:
        np.savez(path, pixels[..., 0])  # [N, H, W]
    whole = load_samples(path)
    assert whole.shape == (37, 1, 16, 16) and (whole - images).abs().max() < 1 / 127
    x = NpzImages(path)
    assert x.shape == (37, 1, 16, 16) and len(x) == 37
    torch.testing.assert_close(torch.cat([x[i : i + 8] for i in range(0, 37, 8)]), whole, rtol=0, atol=0)
    torch.testing.assert_close(x[5:9], whole[5:9], rtol=0, atol=0)  # out of order: seeks back
    x.close()


def test_a_folder_of_images_loads_as_its_npz_does(tmp_path):
    """`ddim sample --out-dir` PNGs and its .npz are the same samples."""
    pixels = to_uint8(load_dataset("digits").images[:12])
    write_pngs(pixels, tmp_path / "pngs", seed=0, start=0)
    np.savez(tmp_path / "x.npz", images=pixels)
    folder = load_samples(tmp_path / "pngs")
    assert folder.shape == (12, 1, 16, 16)
    torch.testing.assert_close(folder, load_samples(tmp_path / "x.npz"), rtol=0, atol=0)


def test_a_damaged_npz_is_one_line_naming_it(tmp_path):
    path = tmp_path / "cut.npz"
    np.savez(path, images=to_uint8(load_dataset("digits").images[:50]))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(BadFile, match="cut.npz"):
        NpzImages(path)[0:50]
    two = tmp_path / "two.npz"
    np.savez(two, a=np.zeros((2, 4, 4, 1), np.uint8), b=np.zeros(3))
    with pytest.raises(BadFile, match="two.npz holds"):
        NpzImages(two)
    with pytest.raises(BadValue, match="must be images"):
        NpzImages(np.savez(tmp_path / "flat.npz", images=np.zeros((3, 4), np.uint8)) or tmp_path / "flat.npz")
