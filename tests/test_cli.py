"""Tests of the `ddim` command, end to end on a tiny model trained once for the module: train,
resume, sample, trajectory, invert, interpolate, demo, --dry-run, and bad values (exit 2, one
line on stderr, no traceback)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ddim.cli import main
from ddim.images import PAD, auto_scale
from ddim.prediction import PREDICTIONS
from ddim.training import load_checkpoint

SIZE = 8
TINY = ["--size", str(SIZE), "--base-channels", "8", "--channel-mult", "1,2", "--batch-size", "8"]
QUIET = ["--sample-every", "0", "--log-every", "0", "--device", "cpu"]


def run(*argv: str | Path) -> int:
    """`ddim argv...` in-process; the exit status, whether returned or raised by argparse."""
    try:
        return main([str(a) for a in argv])
    except SystemExit as e:
        return e.code


def grid_size(rows: int, cols: int, size: int = SIZE) -> tuple[int, int]:
    """(width, height) of a PNG grid of rows x cols tiles, as ddim.images.save_grid lays it out."""
    tile = size * auto_scale(size)
    return cols * (tile + PAD) + PAD, rows * (tile + PAD) + PAD


@pytest.fixture(scope="module")
def run_dir(trained_run: Path) -> Path:
    return trained_run  # conftest's one tiny run of the session: ddim train with TINY for 2 steps


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (12, 12), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def sample_npz(run_dir: Path, tmp_path: Path, *extra: str) -> np.ndarray:
    npz = tmp_path / "samples.npz"
    assert run("sample", "--checkpoint", run_dir, "--out", tmp_path / "grid.png", "--npz", npz, *extra) == 0
    return np.load(npz)["images"]


def test_train_writes_a_checkpoint_with_the_resolved_config(run_dir: Path) -> None:
    checkpoint = load_checkpoint(run_dir)
    assert checkpoint.step == 2
    assert (checkpoint.config.data.size, checkpoint.config.data.channels) == (SIZE, 1)
    assert checkpoint.config.model.channel_mult == (1, 2)


def test_resume_raises_the_step_count(run_dir: Path, tmp_path: Path) -> None:
    copy = shutil.copytree(run_dir, tmp_path / "run")
    assert run("train", "--out", copy, "--resume", "--steps", "3", "--device", "cpu") == 0
    assert load_checkpoint(copy).step == 3


def test_resume_refuses_flags_that_change_the_model(run_dir: Path, capsys) -> None:
    other = next(p for p in PREDICTIONS if p != load_checkpoint(run_dir).config.diffusion.prediction)
    assert run("train", "--out", run_dir, "--resume", "--base-channels", "16", "--prediction", other) == 2
    err = capsys.readouterr().err
    assert "--base-channels, --prediction would change the run being resumed" in err


def test_sample_writes_a_grid_and_a_uint8_npz(run_dir: Path, tmp_path: Path) -> None:
    images = sample_npz(run_dir, tmp_path, "--n", "5", "--steps", "3")
    assert images.shape == (5, SIZE, SIZE, 1) and images.dtype == np.uint8
    assert Image.open(tmp_path / "grid.png").size == grid_size(2, 3)


def test_samples_do_not_depend_on_the_batch_size(run_dir: Path, tmp_path: Path) -> None:
    stochastic = ["--n", "5", "--steps", "3", "--eta", "1", "--seed", "7"]
    small = sample_npz(run_dir, tmp_path, *stochastic, "--batch-size", "2")
    whole = sample_npz(run_dir, tmp_path, *stochastic, "--batch-size", "5")
    np.testing.assert_array_equal(small, whole)
    assert not np.array_equal(whole, sample_npz(run_dir, tmp_path, *stochastic[:-1], "8"))


def test_sample_trajectory_strip(run_dir: Path, tmp_path: Path) -> None:
    strip = tmp_path / "strip.png"
    args = ["--n", "3", "--steps", "4", "--out", tmp_path / "grid.png", "--trajectory", strip]
    assert run("sample", "--checkpoint", run_dir, *args) == 0
    assert Image.open(strip).size == grid_size(2 * 3, 4)  # x_t and x0 rows for each of 3 samples


def test_invert_saves_latents_and_a_reconstruction(
    run_dir: Path, image_folder: Path, tmp_path: Path, capsys
) -> None:
    latents, recon = tmp_path / "latents.npz", tmp_path / "recon.png"
    args = ["--images", image_folder, "--out", latents, "--steps", "5", "--reconstruction", recon]
    assert run("invert", "--checkpoint", run_dir, *args) == 0
    z = np.load(latents)["latents"]
    assert z.shape == (3, 1, SIZE, SIZE) and z.dtype in (np.float32, np.complex64)
    assert Image.open(recon).size == grid_size(2, 3)
    mse = float(capsys.readouterr().out.split("reconstruction MSE ")[1].split()[0])
    assert mse < 1e-8  # the default sampler inverts exactly (test_cli_latents.py: through the npz)


def test_invert_takes_a_single_image_file(run_dir: Path, image_folder: Path, tmp_path: Path) -> None:
    latents = tmp_path / "one.npz"
    args = ["--images", image_folder / "0.png", "--out", latents, "--steps", "2"]
    assert run("invert", "--checkpoint", run_dir, *args) == 0
    assert np.load(latents)["latents"].shape == (1, 1, SIZE, SIZE)


def test_interpolate_writes_one_row(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "interp.png"
    assert (
        run(
            "interpolate",
            "--checkpoint",
            run_dir,
            "--seeds",
            "1",
            "2",
            "--n",
            "4",
            "--steps",
            "2",
            "--out",
            out,
        )
        == 0
    )
    assert Image.open(out).size == grid_size(1, 4)


def test_demo_with_few_steps(tmp_path: Path, capsys) -> None:
    assert run("demo", "--out", tmp_path, "--train-steps", "1", "--steps", "2", "--device", "cpu") == 0
    assert (tmp_path / "samples.png").is_file() and (tmp_path / "trajectory.png").is_file()
    assert str(tmp_path / "samples.png") in capsys.readouterr().out
    # running it again replaces the earlier demo run
    assert run("demo", "--out", tmp_path, "--train-steps", "1", "--steps", "2", "--device", "cpu") == 0
    assert "replacing the earlier demo run" in capsys.readouterr().out


@pytest.mark.parametrize(
    "command",
    [
        ["train", "--data", "digits", *TINY],
        ["demo"],
        ["sample", "--n", "4"],
        ["interpolate"],
        ["edit", "--images", "x", "--strength", "0.5"],
        ["inpaint", "--images", "x", "--mask", "m.png"],
    ],
)
def test_dry_run_prints_json_and_writes_nothing(
    command: list[str], run_dir: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "out"
    model = command[0] in ("train", "demo")
    checkpoint = [] if model else ["--checkpoint", run_dir]
    assert run(*command, *checkpoint, "--out", out if model else out / "x.png", "--dry-run") == 0
    config = json.loads(capsys.readouterr().out)
    assert "run" in config
    assert not out.exists()


def test_dry_run_of_invert_counts_the_images(
    run_dir: Path, image_folder: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "latents.npz"
    assert run("invert", "--checkpoint", run_dir, "--images", image_folder, "--out", out, "--dry-run") == 0
    assert json.loads(capsys.readouterr().out)["run"]["num_images"] == 3
    assert not out.exists()


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["train", "--data", "digits", "--out", "{tmp}", "--steps", "0"],
            "--steps: must be a positive integer",
        ),
        (
            ["train", "--data", "digits", "--out", "{tmp}", "--steps", "-3"],
            "--steps: must be a positive integer",
        ),
        (
            ["train", "--data", "digits", "--out", "{tmp}", "--prediction", "z"],
            "--prediction: invalid choice",
        ),
        (["train", "--data", "./no/such/folder", "--out", "{tmp}"], "no/such/folder does not exist"),
        (["train", "--out", "{run}", "--data", "digits"], "already holds a run"),
        (["sample", "--checkpoint", "{run}", "--steps", "0"], "--steps: must be a positive integer"),
        (["sample", "--checkpoint", "{run}", "--eta", "-0.5"], "--eta: must be a finite number >= 0"),
        (["sample", "--checkpoint", "{run}", "--sampler", "magic"], "--sampler: invalid choice: 'magic'"),
        (["sample", "--checkpoint", "{run}", "--spacing", "odd"], "--spacing: invalid choice: 'odd'"),
        (["sample", "--checkpoint", "{run}", "--steps", "1001"], "more than the model's 1000 timesteps"),
        (
            ["sample", "--checkpoint", "{run}", "--clip", "0"],
            "--clip: must be 'none', 'dynamic', 'checkpoint' or a finite number > 0",
        ),
        (["sample", "--checkpoint", "{run}", "--seed", "-1"], "--seed: must be an integer in [0, 2**64)"),
        (["sample", "--checkpoint", "{tmp}/missing"], "missing does not exist"),
        (["invert", "--checkpoint", "{run}", "--images", "{tmp}/none"], "none does not exist"),
        (["interpolate", "--checkpoint", "{run}", "--n", "1"], "--n must be at least 2"),
        (
            ["interpolate", "--checkpoint", "{run}", "--latents", "{tmp}/z.npz"],
            "--latents and --pair go together",
        ),
        (
            ["sample", "--checkpoint", "{run}", "--out", "{tmp}/grid.txt"],
            "--out {tmp}/grid.txt: unknown image extension",
        ),
        (
            ["sample", "--checkpoint", "{run}", "--npz", "{tmp}/x.png"],
            "--npz {tmp}/x.png: expected a file name",
        ),
        (["sample", "--checkpoint", "{run}", "--out", "{run}/log.csv/g.png"], "is a file, not a folder"),
        (
            ["sample", "--checkpoint", "{run}", "--latents", "{tmp}/none.npz"],
            "--latents {tmp}/none.npz does not",
        ),
        (["edit", "--checkpoint", "{run}", "--images", "{tmp}", "--strength", "1.5"], "--strength: must be"),
        (
            ["invert", "--checkpoint", "{run}", "--images", "{tmp}", "--out", "{tmp}/z.png"],
            "--out {tmp}/z.png",
        ),
    ],
)
def test_bad_values_exit_2_with_one_line(
    argv: list[str], message: str, run_dir: Path, tmp_path: Path, capsys
) -> None:
    argv = [a.format(tmp=tmp_path, run=run_dir) for a in argv]
    message = message.format(tmp=tmp_path, run=run_dir)
    assert run(*argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


COMMANDS = [
    "train",
    "demo",
    "sample",
    "invert",
    "interpolate",
    "edit",
    "inpaint",
    "eval",
    "bench-samplers",
    "tune",
]


def test_python_dash_m_ddim_help() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ddim", "--help"], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0
    assert all(name in result.stdout for name in COMMANDS)


def test_class_conditional_sampling_with_guidance(tmp_path: Path, run_dir: Path, capsys) -> None:
    out = tmp_path / "cond"
    assert run("train", "--data", "digits", "--out", out, *TINY, "--steps", "2", "--conditional", *QUIET) == 0
    npz = tmp_path / "c.npz"
    base = [
        "sample",
        "--checkpoint",
        out,
        "--n",
        "3",
        "--steps",
        "3",
        "--out",
        tmp_path / "c.png",
        "--npz",
        npz,
    ]
    assert run(*base, "--class", "3", "--guidance", "2.0") == 0
    assert np.load(npz)["images"].shape == (3, SIZE, SIZE, 1)  # the guidance itself: test_prediction.py
    capsys.readouterr()
    assert run(*base, "--class", "10") == 2 and "has 10 classes" in capsys.readouterr().err
    assert run(*base, "--guidance", "2") == 2 and "--guidance needs --class" in capsys.readouterr().err
    plain = ["sample", "--checkpoint", run_dir, "--n", "2", "--out", tmp_path / "p.png", "--class", "1"]
    assert run(*plain) == 2 and "is unconditional" in capsys.readouterr().err


def test_ddim_sample_gives_the_pipelines_images(run_dir: Path, tmp_path: Path) -> None:
    """The CLI maps its flags onto ddim.load(...).sample: the same images for the same options."""
    import ddim

    npz = tmp_path / "s.npz"
    argv = ["--n", "3", "--steps", "4", "--eta", "1", "--seed", "7", "--batch-size", "2", "--device", "cpu"]
    assert run("sample", "--checkpoint", run_dir, *argv, "--out", tmp_path / "g.png", "--npz", npz) == 0
    pipe = ddim.load(run_dir, device="cpu")
    np.testing.assert_array_equal(
        np.load(npz)["images"], pipe.sample(3, steps=4, eta=1.0, seed=7, progress=False)
    )
