"""Grids tuned to a model (ddim/tuning.py) on the exact Gaussian oracle, and `ddim tune`.

On the oracle the reference solve (DPM-Solver++(2M), 200 log-SNR steps) is within 1e-3 of the
closed-form flow, so a tuned grid is judged against the exact flow on x_T it was not tuned on.
Measured (NoiseSchedule.linear(1000), test_higher_order's narrow data, 256 tuning draws of seed 0,
RMS error over 512 other draws, 5 model calls):

    sampler    trailing  linspace  logsnr  karras   gits    tuned (search)
    unipc      .155      .174      .042    .055     .045    .011   [999, 644, 232, 41, 0]
    ipndm      .143      .084      .016    .031     .054    .012
    dpmpp_2m   .163      .158      .055    .059     .060    .017
    ddim       .188      .216      .217    .246     .123    .123
"""

import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from oracles import GaussianOracle

import ddim
from ddim import NoiseSchedule
from ddim.cli import main
from ddim.cli.evaluate import _samplers
from ddim.data import to_uint8
from ddim.errors import MissingFile
from ddim.samplers import model_calls, steps_for_calls
from ddim.samplers._common import ddim_move
from ddim.training import load_checkpoint
from ddim.tuning import (
    TUNED_FILE,
    _PrefixCache,
    gits_grid,
    read_tuned,
    reference_solve,
    store_tuned,
    tune_timesteps,
    tuned_grid,
)

SCHED = NoiseSchedule.linear(1000)
MU = torch.tensor([0.5, -1.0, 2.0, 0.0], dtype=torch.float64)
S = torch.tensor([0.3, 1.0, 0.1, 0.05], dtype=torch.float64)
FIXED = ("trailing", "linspace", "logsnr", "karras")


def oracle():
    return GaussianOracle(SCHED, MU, S)


def tune(sampler="unipc", calls=5, seed=0, **kw):
    kw = {"n": 256, "dtype": torch.float64, "progress": False} | kw
    return tune_timesteps(oracle(), SCHED, (4,), calls, sampler, seed=seed, **kw)


def tune_error(**kw):
    info = {}
    tune(info=info, **kw)
    return info["error"]


def held_out_error(sampler, grid_or_spacing, steps):
    x = torch.randn(512, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    exact = oracle().flow(x, SCHED.alphas_cumprod[-1].item())
    out = ddim.sample(oracle(), x, SCHED, steps, sampler=sampler, spacing=grid_or_spacing)
    return (out - exact).pow(2).mean().sqrt().item()


@pytest.mark.parametrize("sampler,calls", [("unipc", 5), ("ipndm", 3), ("heun", 5), ("dpmpp_3m", 8)])
def test_tuned_grids_are_valid_grids_for_that_budget(sampler, calls):
    grid = tune(sampler, calls, n=32, max_evals=25, reference_steps=50)
    assert (
        len(grid) == steps_for_calls(sampler, calls, exact=True) and model_calls(sampler, len(grid)) == calls
    )
    assert grid[0] == SCHED.T - 1 and grid[-1] >= 0 and all(isinstance(t, int) for t in grid)
    assert all(b < a for a, b in zip(grid, grid[1:]))


def test_reproducible_for_a_seed():
    kw = dict(n=64, max_evals=30, reference_steps=50)
    assert tune(seed=3, **kw) == tune(seed=3, **kw)
    # a distance that is 4 times the default makes the same decisions; one that looks at one
    # coordinate only is another objective
    assert tune(seed=3, distance=lambda x, r: 4 * (x - r).pow(2).mean(), **kw) == tune(seed=3, **kw)
    info = {}
    tune(seed=3, distance=lambda x, r: (x - r)[:, 0].pow(2).mean(), info=info, **kw)
    assert info["error"] < 0.5 * tune_error(seed=3, **kw)


def test_five_calls_tuned_beat_the_best_fixed_grid_by_thirty_percent():
    """The issue's bar: at 5 calls the tuned grid is at least 30% closer to the exact flow than
    the best fixed grid (measured 0.011 against logsnr's 0.042, 74% closer), on x_T it was not
    tuned on; and the search never ends worse than its best start on the tuning draws."""
    info = {}
    grid = tune(info=info)
    best_fixed = min(held_out_error("unipc", g, 5) for g in FIXED)
    assert held_out_error("unipc", grid, 5) < 0.7 * best_fixed
    assert info["error"] <= min(info["start_errors"].values())
    # iPNDM too, where logsnr is strong (measured 0.0115 against 0.0163)
    assert held_out_error("ipndm", tune("ipndm"), 5) < min(held_out_error("ipndm", g, 5) for g in FIXED)


def test_gits_dynamic_programming_finds_the_cheapest_path():
    """Alg. 1 of GITS against brute force over every grid of 3 points on a 9-point fine grid."""
    x_T = torch.randn(32, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ref = reference_solve(oracle(), SCHED, x_T, 9)
    a = SCHED.alphas_cumprod.tolist()
    fine = ref.fine

    def eps(i):
        return (ref.xs[i] - a[fine[i]] ** 0.5 * ref.x0s[i]) / (1 - a[fine[i]]) ** 0.5

    def cost(path):
        jumps = [
            (ddim_move(ref.x0s[i], eps(i), a[fine[j]]) - ref.xs[j]).pow(2).mean()
            for i, j in zip(path, path[1:])
        ]
        return sum(jumps) + (ref.x0s[path[-1]] - ref.out).pow(2).mean()

    paths = [(0, *rest) for rest in itertools.combinations(range(1, 9), 2)]
    best = min(paths, key=cost)
    assert gits_grid(ref.xs, ref.x0s, fine, ref.out, SCHED, 3) == [fine[i] for i in best]
    assert gits_grid(ref.xs, ref.x0s, fine, ref.out, SCHED, 1) == [fine[0]]


def test_prefix_cache_gives_the_same_samples_with_fewer_calls():
    x = torch.randn(8, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    # misses: the first grid in full, then the calls from the first changed point on (Heun's call
    # 2i + 1 is at point i + 1)
    for sampler, misses in (("unipc", 5 + 2 + 4), ("heun", 9 + 4 + 8)):  # one cache per sampler
        model = oracle()
        cached = _PrefixCache(model)
        for grid in ([999, 500, 200, 50, 0], [999, 500, 200, 80, 0], [999, 400, 200, 80, 0]):
            cached.start(grid)
            a = ddim.sample(cached, x, SCHED, sampler=sampler, spacing=grid)
            assert torch.equal(a, ddim.sample(model, x, SCHED, sampler=sampler, spacing=grid))
        assert cached.misses == misses  # the shared prefixes were not recomputed


def test_stored_grids_round_trip_and_the_missing_grid_names_the_command(tmp_path: Path):
    run = tmp_path / "run"
    (run / "checkpoints" / "step-000002").mkdir(parents=True)
    store_tuned(run, "unipc", 5, {"timesteps": [999, 600, 300, 80, 0]})
    store_tuned(run / "checkpoints" / "step-000002", "heun", 5, {"timesteps": [999, 300, 0]})
    assert tuned_grid(run, "unipc", 5) == [999, 600, 300, 80, 0]
    assert tuned_grid(run / "checkpoints" / "step-000002", "heun", 3) == [999, 300, 0]  # 5 calls
    assert set(read_tuned(run)) == {"unipc@5", "heun@5"}
    assert sorted(p.name for p in run.iterdir()) == ["checkpoints", TUNED_FILE]  # no temporary left
    with pytest.raises(MissingFile, match=r"ddim tune --checkpoint .* --sampler unipc --calls 6"):
        tuned_grid(run, "unipc", 6)
    with pytest.raises(MissingFile, match="--sampler dpmpp_2m --calls 5"):
        tuned_grid(tmp_path / "elsewhere", "dpmpp_2m", 5)
    with pytest.raises(ValueError, match="pass the run"):
        tuned_grid(None, "unipc", 5)


def test_refusals():
    with pytest.raises(ValueError, match="cannot make exactly 4 model calls"):
        steps_for_calls("heun", 4, exact=True)
    with pytest.raises(ValueError, match="fresh noise"):
        tune("ddpm")
    with pytest.raises(ValueError, match="unknown tuning method"):
        tune(method="adam")


def test_cli_tune_stores_the_grid_and_leaves_the_checkpoints_alone(trained_run: Path, tmp_path: Path, capsys,
                                                                   monkeypatch):  # fmt: skip
    monkeypatch.setenv("DDIM_THREADS", "1")  # ddim.cli.main sets torch's threads; keep the suite's one
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    argv = ["tune", "--checkpoint", str(run), "--calls", "3", "--sampler", "ipndm", "--n", "8",
            "--reference-steps", "20", "--max-evals", "10", "--device", "cpu"]  # fmt: skip
    assert main(argv) == 0
    stored = json.loads((run / TUNED_FILE).read_text())["ipndm@3"]
    assert len(stored["timesteps"]) == 3 and stored["checkpoint"] == "step-000002"
    assert "--spacing tuned" in capsys.readouterr().out
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file() and p.name != TUNED_FILE} == before
    assert main(argv) == 0  # the same seed: the same grid
    assert json.loads((run / TUNED_FILE).read_text())["ipndm@3"]["timesteps"] == stored["timesteps"]
    assert main([*argv[:4], "2", *argv[5:], "--distance", "digits-fd"]) == 0  # another entry beside it
    both = json.loads((run / TUNED_FILE).read_text())
    assert both["ipndm@2"]["distance"] == "digits-fd" and len(both["ipndm@2"]["timesteps"]) == 2
    assert both["ipndm@3"]["timesteps"] == stored["timesteps"]


def test_cli_sample_uses_the_tuned_grid_or_names_ddim_tune(trained_run: Path, tmp_path: Path, capsys,
                                                            monkeypatch):  # fmt: skip
    monkeypatch.setenv("DDIM_THREADS", "1")
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    base = ["sample", "--checkpoint", str(run), "--sampler", "unipc", "--steps", "3", "--n", "2",
            "--device", "cpu", "--spacing", "tuned", "--out", str(tmp_path / "grid.png")]  # fmt: skip
    assert main(base) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "ddim tune --checkpoint" in err and "--calls 3" in err
    store_tuned(run, "unipc", 3, {"timesteps": [999, 321, 12]})
    assert main([*base, "--npz", str(tmp_path / "tuned.npz")]) == 0
    ckpt = load_checkpoint(run)
    expected = ddim.sample_seeded(ckpt.model, ckpt.schedule, ckpt.image_shape, 0, 0, 2, steps=3,
                                  sampler="unipc", spacing=[999, 321, 12], clip=1.0,
                                  prediction=ckpt.prediction)  # fmt: skip
    assert (np.load(tmp_path / "tuned.npz")["images"] == to_uint8(expected)).all()
    # ddim.load(...)'s sample reads the same grid; bench-samplers takes NAME@tuned
    pipe = ddim.load(run, device="cpu")
    images = pipe.sample(2, steps=3, sampler="unipc", spacing="tuned", progress=False)
    assert (images == to_uint8(expected)).all()
    with pytest.raises(MissingFile, match="--calls 4"):
        pipe.sample(2, steps=4, sampler="unipc", spacing="tuned", progress=False)
    assert _samplers("unipc@tuned,ddim") == ["unipc@tuned", "ddim"]
