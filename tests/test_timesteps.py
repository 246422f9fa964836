"""Timestep grids: exactly S strictly decreasing integers in [0, T-1], for any 1 <= S <= T."""

import math

import pytest
import torch

import ddim
from ddim import SPACINGS, NoiseSchedule, make_timesteps
from ddim.timesteps import SCHEDULE_SPACINGS


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("T,S", [(1000, 50), (1000, 7), (1000, 1), (1000, 1000), (999, 40), (10, 9), (1, 1)])
def test_grids_are_exact(spacing, T, S):
    # every grid accepts the schedule; only the log-SNR grids read it
    g = make_timesteps(T, S, spacing, schedule=NoiseSchedule.cosine(T))
    assert g.dtype == torch.int64 and len(g) == S
    assert int(g.min()) >= 0 and int(g.max()) <= T - 1
    assert bool((g[1:] < g[:-1]).all())


def test_known_grids():
    assert make_timesteps(1000, 5, "trailing").tolist() == [999, 799, 599, 399, 199]
    assert make_timesteps(1000, 5, "leading").tolist() == [800, 600, 400, 200, 0]
    assert make_timesteps(1000, 5, "linspace").tolist() == [999, 749, 500, 250, 0]
    assert make_timesteps(10, 3, "uniform").tolist() == [6, 3, 0]
    assert make_timesteps(1000, 5, "quadratic").tolist() == [800, 450, 200, 50, 0]
    # T not divisible by S: still exactly S points, trailing still starts at T-1
    assert make_timesteps(10, 4, "trailing").tolist() == [9, 7, 4, 2]


def test_trailing_starts_at_T_minus_1_and_full_grid_is_everything():
    for S in (1, 3, 17, 100):
        assert int(make_timesteps(1000, S, "trailing")[0]) == 999
    for spacing in SPACINGS:
        full = make_timesteps(20, 20, spacing, schedule=NoiseSchedule.cosine(20))
        assert full.tolist() == list(range(19, -1, -1))


def test_custom_grid():
    assert make_timesteps(100, None, [90, 50, 3]).tolist() == [90, 50, 3]
    assert make_timesteps(100, 3, torch.tensor([90, 50, 3])).tolist() == [90, 50, 3]


@pytest.mark.parametrize(
    "grid,match",
    [
        ([5, 5, 1], "strictly decreasing"),
        ([1, 5], "strictly decreasing"),
        ([100, 5], r"\[0, 99\]"),
        ([5, -1], r"\[0, 99\]"),
        ([], "non-empty"),
        ([5.5, 1.0], "integer"),
    ],
)
def test_bad_custom_grids(grid, match):
    with pytest.raises(ValueError, match=match):
        make_timesteps(100, None, grid)


def test_custom_grid_length_must_match_steps():
    with pytest.raises(ValueError, match="steps = 4 but the custom grid has 3"):
        make_timesteps(100, 4, [9, 5, 1])


@pytest.mark.parametrize("steps", [0, -3, 1001, 2.5])
def test_bad_step_counts(steps):
    with pytest.raises(ValueError, match="steps must be an integer from 1 to T = 1000"):
        make_timesteps(1000, steps, "trailing")


def test_unknown_spacing():
    with pytest.raises(ValueError, match="unknown spacing 'even'"):
        make_timesteps(1000, 10, "even")


@pytest.mark.parametrize(
    "schedule",
    [
        NoiseSchedule.linear(1000),
        NoiseSchedule.cosine(1000),
        NoiseSchedule.linear(1000).rescale_zero_terminal_snr(),
    ],
)
@pytest.mark.parametrize("S", [1, 2, 10, 100, 999, 1000])
def test_log_snr_grids_are_exact_and_span_the_schedule(schedule, S):
    for spacing in SCHEDULE_SPACINGS:
        g = make_timesteps(1000, S, spacing, schedule=schedule)
        assert len(g) == S and bool((g[1:] < g[:-1]).all()) and int(g[0]) == 999
        assert int(g[-1]) == (0 if S > 1 else 999)


def test_log_snr_grids_follow_their_formulas():
    """Where the schedule's timesteps are dense in log-SNR (T = 10000, few points), each point's
    log-SNR is the formula's to within half a timestep's log-SNR spacing."""
    sched = NoiseSchedule.linear(10000)
    lam = sched.log_snr(torch.arange(10000)).tolist()
    S, rho = 12, 7.0
    lo, hi = lam[-1], lam[0]
    uniform = [lo + (hi - lo) * i / (S - 1) for i in range(S)]
    s_max, s_min = math.exp(-lo / 2), math.exp(-hi / 2)
    karras = [
        -2 * math.log((s_max ** (1 / rho) + i / (S - 1) * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho)
        for i in range(S)
    ]
    for spacing, targets in (("logsnr", uniform), ("karras", karras)):
        g = make_timesteps(10000, S, spacing, schedule=sched).tolist()
        for t, target in zip(g, targets):
            gap = abs(lam[max(t - 1, 0)] - lam[min(t + 1, 9999)]) / 2
            assert abs(lam[t] - target) <= gap / 2 + 1e-12
    # golden grids at T = 1000
    lin = NoiseSchedule.linear(1000)
    assert make_timesteps(1000, 10, "logsnr", schedule=lin).tolist() == [
        999,
        886,
        757,
        603,
        410,
        202,
        73,
        22,
        5,
        0,
    ]
    assert make_timesteps(1000, 10, "karras", schedule=lin).tolist() == [
        999,
        937,
        864,
        775,
        663,
        511,
        301,
        102,
        18,
        0,
    ]


def test_log_snr_grids_need_the_schedule():
    with pytest.raises(ValueError, match="pass schedule="):
        make_timesteps(1000, 10, "logsnr")
    with pytest.raises(ValueError, match="T = 500"):
        make_timesteps(1000, 10, "karras", schedule=NoiseSchedule.linear(500))
    # sample() passes its schedule to the grid
    x = torch.zeros(2, 3)
    seen = []
    ddim.sample(
        lambda x, t: (seen.append(int(t[0])), torch.zeros_like(x))[1],
        x,
        NoiseSchedule.linear(1000),
        steps=10,
        spacing="logsnr",
    )
    assert seen == [999, 886, 757, 603, 410, 202, 73, 22, 5, 0]
