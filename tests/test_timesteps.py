"""Timestep grids: exactly S strictly decreasing integers in [0, T-1], for any 1 <= S <= T."""

import pytest
import torch

from ddim import SPACINGS, make_timesteps


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("T,S", [(1000, 50), (1000, 7), (1000, 1), (1000, 1000), (999, 40), (10, 9), (1, 1)])
def test_grids_are_exact(spacing, T, S):
    g = make_timesteps(T, S, spacing)
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
        assert make_timesteps(20, 20, spacing).tolist() == list(range(19, -1, -1))


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
