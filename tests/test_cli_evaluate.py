"""`ddim eval` and `ddim bench-samplers` end to end on a tiny model."""

from __future__ import annotations

import csv

import pytest
from test_cli import QUIET, TINY, run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli-eval") / "run"
    assert run("train", "--data", "digits", "--out", out, *TINY, "--steps", "2", *QUIET) == 0
    return out


def test_eval_prints_each_metric_beside_its_floor(run_dir, tmp_path, capsys):
    npz = tmp_path / "s.npz"
    assert run("sample", "--checkpoint", run_dir, "--n", "20", "--steps", "3", "--out", tmp_path / "g.png",
               "--npz", npz, "--device", "cpu") == 0  # fmt: skip
    capsys.readouterr()
    assert run("eval", "--samples", npz, "--reference", "digits", "--n-reference", "200", "--cache-dir",
               tmp_path / "cache") == 0  # fmt: skip
    out = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| ")}
    assert set(rows) >= {"fid", "kid", "precision", "recall"}
    fid, floor = (float(v) for v in rows["fid"].split("|")[2:4])
    assert fid > floor >= 0  # an untrained model's blobs are far from the digits
    assert list((tmp_path / "cache").iterdir())  # the reference statistics were cached


def test_bench_samplers_writes_table_csv_and_plot(run_dir, tmp_path, capsys):
    out = tmp_path / "bench"
    assert run("bench-samplers", "--checkpoint", run_dir, "--reference", "digits", "--samplers", "ddim,heun",
               "--calls", "2,4", "--n", "16", "--n-reference", "200", "--out", out, "--cache-dir", "",
               "--device", "cpu") == 0  # fmt: skip
    rows = list(csv.DictReader((out / "samplers.csv").open()))
    assert [(r["sampler"], r["model_calls"]) for r in rows] == [("ddim", "2"), ("ddim", "4"), ("heun", "1"),
                                                                 ("heun", "3")]  # fmt: skip
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

