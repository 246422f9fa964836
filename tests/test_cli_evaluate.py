"""`ddim eval` and `ddim bench-samplers` end to end on a tiny model."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image
from test_cli import run


@pytest.fixture(scope="module")
def run_dir(trained_run):
    return trained_run


def test_eval_prints_each_metric_beside_its_floor(run_dir, tmp_path, capsys):
    npz = tmp_path / "s.npz"
    assert run("sample", "--checkpoint", run_dir, "--n", "20", "--steps", "3", "--out", tmp_path / "g.png",
               "--npz", npz, "--device", "cpu") == 0  # fmt: skip
    capsys.readouterr()
    common = ["--reference", "digits", "--n-reference", "200", "--cache-dir", tmp_path / "cache"]
    assert run("eval", "--samples", npz, *common, "--json", tmp_path / "npz.json") == 0
    out = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ")}
    assert set(rows) >= {"fid", "kid", "precision", "recall"}
    fid, floor = (float(v) for v in rows["fid"].split("|")[2:4])
    assert fid > floor >= 0  # an untrained model's blobs are far from the digits
    assert list((tmp_path / "cache").iterdir())  # the reference statistics were cached
    scores = json.loads((tmp_path / "npz.json").read_text())
    assert f"{scores['fid']:.4f}" == f"{fid:.4f}" and scores["n_samples"] == 20
    # the same images as a folder of PNGs score exactly the same
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i, image in enumerate(np.load(npz)["images"]):
        Image.fromarray(image[..., 0]).save(folder / f"{i:03d}.png")
    assert run("eval", "--samples", folder, *common, "--json", tmp_path / "dir.json") == 0
    assert json.loads((tmp_path / "dir.json").read_text()) == scores


def test_eval_refuses_samples_of_another_size_than_a_reference_folder(run_dir, tmp_path, capsys):
    samples, reference = tmp_path / "samples", tmp_path / "real"
    for folder, side in ((samples, 8), (reference, 12)):
        folder.mkdir()
        for i in range(8):
            Image.fromarray(np.full((side, side), 30 * i, np.uint8)).save(folder / f"{i}.png")
    assert run("eval", "--samples", samples, "--reference", reference, "--cache-dir", "") == 2
    err = capsys.readouterr().err.strip()
    assert err.endswith("the samples are 8x8 but the images in " f"{reference} are 12x12 (width x height); "
                        "score samples of the reference's size") and "\n" not in err  # fmt: skip
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 damaged")
    assert run("eval", "--samples", tmp_path / "bad.npz", "--reference", "digits", "--cache-dir", "") == 2
    assert "cannot read " in capsys.readouterr().err


def test_bench_samplers_writes_table_csv_and_plot(run_dir, tmp_path, capsys):
    out = tmp_path / "bench"
    assert run("bench-samplers", "--checkpoint", run_dir, "--reference", "digits", "--samplers", "ddim,unipc",
               "--calls", "2,4", "--n", "16", "--n-reference", "200", "--out", out, "--cache-dir", "",
               "--device", "cpu") == 0  # fmt: skip
    rows = list(csv.DictReader((out / "samplers.csv").open()))
    assert [(r["sampler"], r["model_calls"]) for r in rows] == [("ddim", "2"), ("ddim", "4"), ("unipc", "2"),
                                                                 ("unipc", "4")]  # fmt: skip
    assert (out / "samplers.png").stat().st_size > 1000 and "| ddim |" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv,message",
    [(["eval", "--samples", "missing.npz", "--reference", "digits"], "missing.npz does not exist"),
     (["bench-samplers", "--checkpoint", "x", "--reference", "digits", "--out", "o", "--samplers", "plms"],
      "unknown sampler 'plms'"),
     (["bench-samplers", "--checkpoint", "x", "--reference", "digits", "--out", "o", "--calls", "0,5"],
      "every entry must be a positive integer")],
)  # fmt: skip
def test_bad_values_exit_2(argv, message, capsys):
    assert run(*argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
