"""The sampler benchmark's bookkeeping on the exact Gaussian oracle with a stand-in feature."""

import csv

import pytest
import torch
from oracles import GaussianOracle
from PIL import Image

from ddim import SAMPLERS, NoiseSchedule
from ddim.evaluation.sampler_bench import bench_samplers, steps_for_calls, write_report
from ddim.samplers import model_calls


def test_steps_for_calls_counts_heun_honestly():
    assert steps_for_calls("ddim", 10) == 10 and steps_for_calls("heun", 10) == 5
    assert steps_for_calls("heun", 5) == 3  # 2 * 3 - 1 = 5 calls
    with pytest.raises(ValueError, match="unknown sampler"):
        steps_for_calls("plms", 5)


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_steps_for_calls_is_the_most_steps_within_the_budget(sampler):
    """Derived from the registry's one call count (`model_calls`), for every sampler."""
    for calls in (1, 2, 5, 10, 11):
        steps = steps_for_calls(sampler, calls)
        assert model_calls(sampler, steps) <= calls or steps == 1
        assert model_calls(sampler, steps + 1) > calls


def test_bench_rows_and_report(tmp_path):
    sched = NoiseSchedule.linear(100)
    model = GaussianOracle(sched, torch.tensor(0.0), torch.tensor(0.5))
    samplers = ("ddim", ("ddim", 1.0), "heun@trailing")
    rows = bench_samplers(model, sched, (1, 8, 8), "digits", samplers=samplers, calls=(3, 6), n=40,
                          cache_dir=None, n_reference=200, kid_subset_size=20, progress=False)  # fmt: skip
    expected = [("ddim", 0.0, 3), ("ddim", 0.0, 6), ("ddim", 1.0, 3), ("ddim", 1.0, 6), ("heun", 0.0, 3)]
    assert [(r["sampler"], r["eta"], r["model_calls"]) for r in rows] == [*expected, ("heun", 0.0, 5)]
    assert all(r["fid"] > r["fid_floor"] >= 0 for r in rows)  # Gaussian blobs are not digits
    md, csv_file, png = write_report(rows, tmp_path)
    assert "| ddim | trailing |" in md.read_text() and "| heun | trailing |" in md.read_text()
    assert len(list(csv.DictReader(csv_file.open()))) == 6
    assert Image.open(png).size[0] > 300
