"""The sampler benchmark's bookkeeping on the exact Gaussian oracle with a stand-in feature."""

import csv

import pytest
import torch
from oracles import GaussianOracle
from PIL import Image

from ddim import SAMPLERS, NoiseSchedule
from ddim.errors import BadValue
from ddim.evaluation.sampler_bench import bench_samplers, write_report
from ddim.samplers import model_calls, steps_for_calls


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


def test_each_cell_warms_up_before_its_timer_starts(monkeypatch):
    """An untimed run of one image per cell, before the clock starts, so that no cell's time
    holds the start-up costs. Model calls are counted (their batch sizes), never timed."""
    import ddim.evaluation.sampler_bench as bench

    sched = NoiseSchedule.linear(100)
    oracle = GaussianOracle(sched, torch.tensor(0.0), torch.tensor(0.5))
    batches, at_clock = [], []

    def model(x, t):
        batches.append(len(x))
        return oracle(x, t)

    def clock():
        at_clock.append(len(batches))
        return 0.0

    monkeypatch.setattr(bench.time, "perf_counter", clock)
    monkeypatch.setattr(bench, "evaluate", lambda *args, **kwargs: dict.fromkeys(bench.COLUMNS[7:], 0.0))
    bench_samplers(model, sched, (1, 4, 4), "digits", samplers=("ddim", "dpmpp_2m"), calls=(3,), n=6,
                   batch_size=4, progress=False)  # fmt: skip
    calls = model_calls("ddim", 3)
    assert calls == model_calls("dpmpp_2m", 3) == 3
    # per cell: the warm-up's calls on one image, then the timed ones on batches of 4 and 2
    assert batches == ([1] * calls + [4] * calls + [2] * calls) * 2
    # each timer starts after its cell's warm-up and stops after its timed calls
    assert at_clock == [calls, 3 * calls, 4 * calls, 6 * calls]


def test_a_cell_the_sampler_layer_refuses_is_left_out_with_its_reason(monkeypatch):
    import ddim.evaluation.sampler_bench as bench

    def generate(model, schedule, shape, n, *, sampler, steps, **options):
        if sampler == "heun" and steps < 3:
            raise BadValue(f"heun on {steps} steps returns mostly noise; use steps >= 3")
        return torch.zeros(n, *shape)

    monkeypatch.setattr(bench, "generate", generate)
    monkeypatch.setattr(bench, "evaluate", lambda *args, **kwargs: dict.fromkeys(bench.COLUMNS[7:], 0.0))
    sched = NoiseSchedule.linear(100)
    with pytest.warns(UserWarning, match=r"heun @karras at 3 model calls left out: heun on 2 steps .* >= 3"):
        rows = bench_samplers(None, sched, (1, 4, 4), "digits", samplers=("heun",), calls=(3, 5), n=2,
                              progress=False)  # fmt: skip
    assert [(r["sampler"], r["steps"]) for r in rows] == [("heun", 3)]
