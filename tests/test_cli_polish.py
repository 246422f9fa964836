"""The conveniences of the `ddim` command: --version, --quiet (no progress bars, no info lines;
errors still print), and output cut short by a closed pipe (`ddim ... --dry-run | head -1`)
ending quietly, in a subprocess as a shell runs it."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import QUIET_TRAIN, TINY_TRAIN

import ddim
from ddim.cli import main

ENV = {**os.environ, "DDIM_THREADS": "1"}


def ddim_command(*argv: object, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ddim", *map(str, argv)], capture_output=True, text=True, env=ENV, **kwargs
    )


def test_version_names_the_package_version():
    done = ddim_command("--version")
    assert done.returncode == 0 and done.stdout == f"ddim {ddim.__version__}\n" and done.stderr == ""
    assert ddim.__version__[0].isdigit()


def test_a_closed_pipe_ends_quietly():
    """The reader is gone before ddim writes (its end of the pipe closed at once): the write
    fails with EPIPE, and ddim exits 141 with nothing on stderr, at the write and at exit."""
    argv = [sys.executable, "-m", "ddim", "train", "--data", "digits", "--out", "r", "--dry-run"]
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV) as process:
        process.stdout.close()
        err = process.stderr.read()
    assert (process.returncode, err) == (141, b"")


@pytest.mark.parametrize("quiet", [False, True])
def test_quiet_train_and_sample_print_nothing(tmp_path, capsys, quiet):
    flags = ["--quiet"] if quiet else []
    train = ["train", "--data", "digits", "--out", tmp_path / "r", *TINY_TRAIN, "--steps", 2, *QUIET_TRAIN]
    assert main([str(a) for a in train + flags]) == 0
    trained = capsys.readouterr()
    sample = ["sample", "--checkpoint", tmp_path / "r", "--n", 2, "--steps", 2, "--out", tmp_path / "g.png"]
    assert main([str(a) for a in sample + ["--npz", tmp_path / "s.npz", "--device", "cpu", *flags]]) == 0
    sampled = capsys.readouterr()
    assert (tmp_path / "g.png").is_file() and (tmp_path / "s.npz").is_file()
    for out in (trained, sampled):
        if quiet:
            assert out.out == out.err == ""
        else:  # an info line on stdout, a progress bar on stderr
            assert "wrote" in out.out or "trained to step 2" in out.out
            assert "it/s" in out.err or "step/s" in out.err or "image/s" in out.err


def test_quiet_errors_still_print(tmp_path, capsys):
    argv = ["sample", "--checkpoint", tmp_path / "none", "--quiet"]
    assert main([str(a) for a in argv]) == 2
    assert "does not exist" in capsys.readouterr().err
