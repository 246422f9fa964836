"""Tests of `ddim train`'s own promises: --data stored as an absolute path with a fingerprint of
the data (a resume from another folder reads the same data; other data is refused), --log-every 0
writing no log line, and the run folder's marker. Tiny runs on 8x8 images, in-process."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ddim.cli import main

TINY = ["--size", "8", "--base-channels", "8", "--channel-mult", "1,2", "--batch-size", "4"]
TINY += ["--timesteps", "50", "--sample-steps", "5", "--sample-every", "0", "--device", "cpu"]


def run(*argv: object) -> int:
    try:
        return main([str(a) for a in argv])
    except SystemExit as e:
        return e.code


def images(folder: Path, seed: int = 0, n: int = 6) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def saved_data(run_dir: Path) -> str:
    newest = sorted((run_dir / "checkpoints").glob("step-*"))[-1]
    return json.loads((newest / "config.json").read_text())["run"]["data"]["dataset"]


def test_a_relative_data_path_is_stored_absolute_and_checked_on_resume(tmp_path, monkeypatch, capsys):
    images(tmp_path / "a" / "data")
    monkeypatch.chdir(tmp_path / "a")
    assert run("train", "--data", "data", "--out", "run", *TINY, "--steps", 1) == 0
    assert saved_data(tmp_path / "a" / "run") == str(tmp_path / "a" / "data")
    # from another folder holding another "data": the run still reads its own
    images(tmp_path / "b" / "data", seed=1)
    monkeypatch.chdir(tmp_path / "b")
    assert run("train", "--out", tmp_path / "a" / "run", "--resume", "--steps", 2) == 0
    assert run("train", "--out", tmp_path / "a" / "run", "--resume", "--steps", 3, "--data", "data") == 2
    assert "--data would change the run being resumed" in capsys.readouterr().err
    # the same folder named another way is the same data
    same = tmp_path / "b" / ".." / "a" / "data"
    assert run("train", "--out", tmp_path / "a" / "run", "--resume", "--steps", 3, "--data", same) == 0
    # the data changed under the run: refused, naming both
    images(tmp_path / "a" / "data", seed=2)
    capsys.readouterr()
    assert run("train", "--out", tmp_path / "a" / "run", "--resume", "--steps", 4) == 2
    err = capsys.readouterr().err
    assert "is not what" in err and "step-000003" in err and len(err.strip().splitlines()) == 1


def test_built_in_names_stay_names(tmp_path):
    assert run("train", "--data", "digits", "--out", tmp_path / "run", *TINY, "--steps", 1) == 0
    assert saved_data(tmp_path / "run") == "digits"
    marker = json.loads((tmp_path / "run" / "ddim-run.json").read_text())
    assert marker == {"format": "ddim-run", "version": 1}


@pytest.mark.parametrize("log_every, steps", [(0, []), (2, [2, 3])])
def test_log_every_zero_means_never(tmp_path, log_every, steps):
    """A period of 0 writes no line at all; otherwise every period and the last step."""
    out = tmp_path / "run"
    assert run("train", "--data", "digits", "--out", out, *TINY, "--steps", 3, "--log-every", log_every) == 0
    with open(out / "log.csv", newline="") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == steps
