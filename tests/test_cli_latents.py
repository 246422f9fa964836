"""The latent-space commands end to end, in-process on the session's tiny run: invert -> npz ->
sample --latents (exact round trip), interpolate, edit, inpaint, --out-dir, the streamed npz,
data before pictures, and refusals as one line (one subprocess checks the real exit status)."""

from __future__ import annotations

import errno
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import ddim
from ddim.cli import main
from ddim.cli.outputs import png_name
from ddim.latents import Latents

SIZE = 8


def run(*argv: str | Path) -> int:
    try:
        return main([str(a) for a in argv])
    except SystemExit as e:
        return e.code


def one_line_error(capsys, expected: str) -> None:
    """stderr shows one line (a progress bar that ran first is erased by its own carriage returns)."""
    err = capsys.readouterr().err.split("\r")[-1]
    assert expected in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def pipe(trained_run: Path) -> ddim.Pipeline:
    return ddim.load(trained_run, device="cpu")


@pytest.fixture(scope="module")
def images(pipe, tmp_path_factory) -> tuple[Path, np.ndarray]:
    """A folder of three 8x8 grey PNGs at the model's size (no resizing) and their pixels."""
    folder = tmp_path_factory.mktemp("images")
    pixels = pipe.sample(3, steps=3, seed=5, progress=False)
    for i, image in enumerate(pixels):
        Image.fromarray(image[..., 0]).save(folder / f"{i}.png")
    return folder, pixels


@pytest.fixture(scope="module")
def latents(trained_run: Path, images, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("latents") / "latents.npz"
    assert (
        run("invert", "--checkpoint", trained_run, "--images", images[0], "--steps", "4", "--out", out) == 0
    )
    return out


def test_invert_records_what_decoding_needs(latents: Path, trained_run: Path, images, pipe):
    z = Latents.load(latents)
    assert torch.equal(z.z, pipe.invert(images[0], steps=4, progress=False).z)  # pipeline == CLI
    assert z.sampler == ddim.EXACT_INVERTIBLE[0] and z.steps == 4 and z.spacing == "trailing"
    assert z.sources == ["0.png", "1.png", "2.png"] and z.image_shape == (1, SIZE, SIZE)
    assert Path(z.checkpoint).name == "step-000002" and Path(z.checkpoint).parent.parent == trained_run


def test_sample_decodes_saved_latents_to_the_images(latents: Path, trained_run: Path, images, pipe, tmp_path):
    npz = tmp_path / "back.npz"
    assert (
        run(
            "sample",
            "--checkpoint",
            trained_run,
            "--latents",
            latents,
            "--out",
            tmp_path / "g.png",
            "--npz",
            npz,
        )
        == 0
    )
    np.testing.assert_array_equal(np.load(npz)["images"], images[1])  # no flags repeated
    z = Latents.load(latents)
    x = ddim.inputs.read_images(images[0], pipe.image_shape)[0]
    assert (pipe.decode(z, output="tensor", progress=False) - x).abs().max() < 1e-4  # float32 round trip
    np.testing.assert_array_equal(pipe.decode(z, progress=False), np.load(npz)["images"])  # pipeline == CLI


def test_latents_of_another_checkpoint_or_shape_exit_2(latents: Path, trained_run: Path, tmp_path, capsys):
    other = trained_run / "checkpoints" / "step-000001"
    out = ["--out", tmp_path / "g.png"]
    assert run("sample", "--checkpoint", other, "--latents", latents, *out) == 2
    one_line_error(capsys, "was inverted by the checkpoint")
    z = Latents.load(latents)
    z.image_shape, z.z = (1, 4, 4), z.z[..., :4, :4]
    z.save(tmp_path / "small.npz")
    assert run("sample", "--checkpoint", trained_run, "--latents", tmp_path / "small.npz", *out) == 2
    one_line_error(capsys, "(1, 4, 4) images but the model")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    assert run("sample", "--checkpoint", trained_run, "--latents", tmp_path / "junk.npz", *out) == 2
    one_line_error(capsys, "cannot read latents")
    assert not (tmp_path / "g.png").exists()


def test_a_mismatched_npz_exits_2_with_one_line_in_a_subprocess(latents: Path, trained_run: Path, tmp_path):
    other = trained_run / "checkpoints" / "step-000001"
    argv = ["sample", "--checkpoint", str(other), "--latents", str(latents), "--out", str(tmp_path / "g.png")]
    result = subprocess.run(
        [sys.executable, "-m", "ddim", *argv], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert (
        len(lines) == 1 and "was inverted by the checkpoint" in lines[0] and "Traceback" not in result.stderr
    )


def test_interpolate_images_and_latent_pairs_reproduce_the_ends(latents, trained_run, images, pipe, tmp_path):
    folder, pixels = images
    npz = tmp_path / "row.npz"
    base = [
        "interpolate",
        "--checkpoint",
        trained_run,
        "--n",
        "5",
        "--out",
        tmp_path / "row.png",
        "--npz",
        npz,
    ]
    assert run(*base, "--images", folder / "0.png", folder / "2.png", "--steps", "4") == 0
    row = np.load(npz)["images"]
    assert row.shape == (5, SIZE, SIZE, 1)
    np.testing.assert_array_equal(row[0], pixels[0])
    np.testing.assert_array_equal(row[-1], pixels[2])
    np.testing.assert_array_equal(row, pipe.interpolate(folder / "0.png", folder / "2.png", 5, steps=4))
    assert run(*base, "--latents", latents, "--pair", "0", "2") == 0
    np.testing.assert_array_equal(np.load(npz)["images"], row)  # the same latents, from the npz
    assert run(*base, "--seeds", "3", "4", "--steps", "2") == 0  # seeds keep working
    np.testing.assert_array_equal(np.load(npz)["images"], pipe.interpolate(3, 4, 5, steps=2))


def test_edit_at_strength_0_returns_the_input_and_matches_the_pipeline(trained_run, images, pipe, tmp_path):
    folder, pixels = images
    npz = tmp_path / "edited.npz"
    base = [
        "edit",
        "--checkpoint",
        trained_run,
        "--images",
        folder,
        "--out",
        tmp_path / "e.png",
        "--npz",
        npz,
    ]
    assert run(*base, "--strength", "0", "--steps", "5") == 0
    np.testing.assert_array_equal(np.load(npz)["images"], pixels)
    assert run(*base, "--strength", "0.7", "--steps", "5", "--seed", "3", "--eta", "0.5") == 0
    ours = pipe.edit(folder, 0.7, steps=5, seed=3, eta=0.5, progress=False)
    np.testing.assert_array_equal(np.load(npz)["images"], ours)
    assert not np.array_equal(ours, pixels)
    assert Image.open(tmp_path / "e.png").size[1] > Image.open(tmp_path / "e.png").size[0] / 3  # two rows


def _mask(path: Path, size: tuple[int, int] = (SIZE, SIZE)) -> Path:
    mask = np.zeros(size[::-1], np.uint8)
    mask[:, size[0] // 2 :] = 255  # white = generate the right half
    Image.fromarray(mask).save(path)
    return path


def test_inpaint_keeps_the_kept_pixels_bit_exactly(trained_run, images, pipe, tmp_path, capsys):
    folder, pixels = images
    npz = tmp_path / "filled.npz"
    base = [
        "inpaint",
        "--checkpoint",
        trained_run,
        "--images",
        folder,
        "--out",
        tmp_path / "f.png",
        "--npz",
        npz,
    ]
    assert run(*base, "--mask", _mask(tmp_path / "m.png"), "--steps", "4", "--seed", "1") == 0
    filled = np.load(npz)["images"]
    np.testing.assert_array_equal(filled[:, :, : SIZE // 2], pixels[:, :, : SIZE // 2])
    assert not np.array_equal(filled, pixels)
    np.testing.assert_array_equal(
        filled, pipe.inpaint(folder, tmp_path / "m.png", steps=4, seed=1, progress=False)
    )
    masks = tmp_path / "masks"  # one mask per image, same names
    masks.mkdir()
    for i in range(3):
        _mask(masks / f"{i}.png")
    assert run(*base, "--mask", masks, "--steps", "4", "--seed", "1") == 0
    np.testing.assert_array_equal(np.load(npz)["images"], filled)
    capsys.readouterr()
    assert run(*base, "--mask", _mask(tmp_path / "big.png", (12, 8))) == 2
    one_line_error(capsys, "is 12x8 but image 0.png is 8x8")
    (masks / "1.png").unlink()
    assert run(*base, "--mask", masks) == 2
    one_line_error(capsys, "needs one mask per image")


def test_out_dir_names_carry_seed_and_index(trained_run, pipe, tmp_path):
    out = tmp_path / "pngs"
    argv = ["--n", "3", "--steps", "2", "--seed", "9", "--out-dir", out, "--out", tmp_path / "g.png"]
    assert run("sample", "--checkpoint", trained_run, *argv) == 0
    assert (
        sorted(p.name for p in out.iterdir())
        == [png_name(9, i) for i in range(3)]
        == ["seed9-000000.png", "seed9-000001.png", "seed9-000002.png"]
    )
    expected = pipe.sample(3, steps=2, seed=9, progress=False)
    np.testing.assert_array_equal(np.asarray(Image.open(out / "seed9-000002.png")), expected[2, ..., 0])


def test_streamed_npz_equals_the_in_memory_result(trained_run, pipe, tmp_path):
    npz = tmp_path / "s.npz"
    argv = [
        "--n",
        "7",
        "--steps",
        "2",
        "--eta",
        "1",
        "--batch-size",
        "3",
        "--npz",
        npz,
        "--out",
        tmp_path / "g.png",
    ]
    assert run("sample", "--checkpoint", trained_run, *argv) == 0
    with np.load(npz) as data:
        assert data.files == ["images"]
        np.testing.assert_array_equal(data["images"], pipe.sample(7, steps=2, eta=1.0, progress=False))
    assert not list(tmp_path.glob(".*partial"))


def test_data_is_written_before_pictures(trained_run, tmp_path, monkeypatch, capsys):
    def disk_full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "g.png"))

    monkeypatch.setattr("ddim.cli.generate.save_grid", disk_full)
    npz = tmp_path / "s.npz"
    argv = ["--n", "4", "--steps", "2", "--npz", npz, "--out", tmp_path / "g.png"]
    assert run("sample", "--checkpoint", trained_run, *argv) == 2
    one_line_error(capsys, "No space left on device")
    assert np.load(npz)["images"].shape == (4, SIZE, SIZE, 1)  # the samples survived the failed grid
