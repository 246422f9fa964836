"""Step grids tuned to a model: `tune_timesteps` picks the integer timesteps of a few-step sampler
so that its samples match a fine reference solve of the same model from the same x_T, and the
run folder's tuned-grids.json stores such grids for `--spacing tuned`.

Two published methods, and the one that measured best (docs/tuning.md) as the default:
  "gits"    GITS (Chen et al. 2024, "On the Trajectory Regularity of ODE-based Diffusion
            Sampling", sec. 4, Alg. 1): the reference trajectory on a fine grid, the cost of one
            DDIM step i -> j from the reference state at i against the reference state at j, and
            dynamic programming for the path of `steps` jumps of least total cost. It costs no
            model calls beyond the reference solve.
  "search"  LD3's objective (Tong et al. 2025, "Learning to Discretize Denoising Diffusion ODEs",
            eq. 6 without its slack: the distance of the few-step sample to the teacher's from the
            same x_T), with the sampler itself in the loop, minimised by derivative-free compass
            search (Kolda et al. 2003) over integer timesteps placed by log-SNR, starting from the
            best of the GITS grid and the fixed grids (trailing, logsnr, karras). It can only
            improve on its start on the tuning samples.
The grid always starts at T - 1, where x_T ~ N(0, I) is drawn. Model calls at a grid prefix that
was already walked are not repeated: call c of a run sees an x that depends only on the grid
down to the timestep it is made at, so its output is cached under that prefix.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ddim.errors import BadFile, BadValue, MissingFile, NonFinite
from ddim.noise import PerSampleNoise
from ddim.prediction import Clip
from ddim.samplers import model_calls, steps_for_calls
from ddim.sampling import sample
from ddim.schedule import A_FLOOR, NoiseSchedule, log_snr
from ddim.timesteps import make_timesteps

METHODS = ("search", "gits")
START_GRIDS = ("trailing", "logsnr", "karras")
TUNED_FILE = "tuned-grids.json"
REFERENCE = ("dpmpp_2m", "logsnr")  # the fine reference solve: second order, no corrector


class _PrefixCache:
    """model(x, t, *extra) with outputs cached by (call index, grid down to t) of the current run:
    one cache per sampler (the same key means the same x only for the same update rule)."""

    def __init__(self, model: Callable[..., Tensor], limit: int = 4096):
        self.model, self.limit, self.store = model, limit, {}
        self.grid: list[int] = []
        self.call = 0
        self.misses = 0

    def start(self, grid: Sequence[int]) -> None:
        self.grid, self.call = list(grid), 0

    def __call__(self, x: Tensor, t: Tensor, *extra: Tensor) -> Tensor:
        key = (self.call, tuple(self.grid[: self.grid.index(int(t[0])) + 1]))
        self.call += 1
        if key not in self.store:
            self.misses += 1
            if len(self.store) >= self.limit:
                self.store.pop(next(iter(self.store)))
            self.store[key] = self.model(x, t, *extra)
        return self.store[key].clone()


class Reference(NamedTuple):
    """A fine solve from x_T: the states xs[i] and x0 estimates x0s[i] at fine[i], and the samples."""

    fine: list[int]
    xs: list[Tensor]
    x0s: list[Tensor]
    out: Tensor


def reference_solve(model: Callable[..., Tensor], schedule: NoiseSchedule, x_T: Tensor, steps: int = 200,
                    progress: Callable[[int], object] | None = None, **options) -> Reference:  # fmt: skip
    """The reference of `tune_timesteps`: DPM-Solver++(2M) on `steps` log-SNR-uniform timesteps
    from x_T (`options` go to `ddim.sample`), with its trajectory. One reference serves every
    sampler and budget tuned from the same x_T."""
    fine = make_timesteps(schedule.T, min(steps, schedule.T), REFERENCE[1], schedule).tolist()
    xs, x0s = [x_T], []

    def collect(i: int, t: int, x: Tensor, x0: Tensor) -> None:
        xs.append(x)
        x0s.append(x0)
        if progress is not None:
            progress(1)

    with torch.inference_mode():
        out = sample(model, x_T, schedule, sampler=REFERENCE[0], spacing=fine, callback=collect, **options)
    if not bool(torch.isfinite(out).all()):
        raise NonFinite("the reference solve gave NaN or infinity: the model's output is not finite")
    return Reference(fine, xs[:-1], x0s, out)


def gits_grid(xs: Tensor, x0s: Tensor, fine: Sequence[int], out: Tensor, schedule: NoiseSchedule,
              steps: int) -> list[int]:  # fmt: skip
    """GITS (Chen et al. 2024, Alg. 1): the `steps` points of the fine grid `fine` (its first point
    kept) whose DDIM jumps best follow the reference trajectory: xs[i] is the reference state at
    fine[i], x0s[i] its x0 estimate, `out` the reference sample. cost(i, j) = mean squared
    distance of the DDIM step (eq. 12) from xs[i] to fine[j] to xs[j]; the last jump, to clean
    data, returns x0s[i] (cost against `out`). Dynamic programming over (jumps, point)."""
    m = len(fine)
    a = schedule.alphas_cumprod[list(fine)].tolist()
    cost = torch.full((m, m + 1), math.inf, dtype=torch.float64)  # column m: clean data
    for i in range(m):
        eps = (xs[i] - a[i] ** 0.5 * x0s[i]) / (1 - a[i]) ** 0.5
        for lo in range(i + 1, m, 32):  # DDIM eq. 12 from fine[i] to 32 later points at once
            js = range(lo, min(lo + 32, m))
            scale = torch.tensor([[a[j] ** 0.5, (1 - a[j]) ** 0.5] for j in js]).to(eps)
            scale = scale.reshape(len(js), 2, *(1,) * eps.ndim)
            moved = scale[:, 0] * x0s[i] + scale[:, 1] * eps - torch.stack([xs[j] for j in js])
            cost[i, lo : lo + len(js)] = moved.double().pow(2).flatten(1).mean(1)
        cost[i, m] = (x0s[i] - out).double().pow(2).mean()
    best = torch.full((steps, m), math.inf, dtype=torch.float64)  # best[k, j]: k jumps, at point j
    back = torch.zeros((steps, m), dtype=torch.int64)
    best[0, 0] = 0.0
    for k in range(1, steps):
        total = best[k - 1, :, None] + cost[:, :m]  # [from, to]
        best[k], back[k] = total.min(0)
    j = int((best[steps - 1] + cost[:, m]).argmin())
    path = [j]
    for k in range(steps - 1, 0, -1):
        j = int(back[k, j])
        path.append(j)
    return [int(fine[i]) for i in reversed(path)]


def tune_timesteps(
    model: Callable[..., Tensor],
    schedule: NoiseSchedule,
    shape: Sequence[int],
    calls: int = 5,
    sampler: str = "unipc",
    n: int = 256,
    seed: int = 0,
    prediction: str = "eps",
    *,
    method: str = "search",
    clip: Clip = None,
    self_condition: bool = False,
    reference: Reference | None = None,
    reference_steps: int = 200,
    max_evals: int = 120,
    distance: Callable[[Tensor, Tensor], float] | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    progress: bool = True,
    info: dict | None = None,
) -> list[int]:
    """A strictly decreasing list of integer timesteps in [0, T-1], starting at T-1, on which
    `sampler` makes `calls` model calls, tuned so that its samples from the n examples x_T of
    `seed` (as `ddim.sample_seeded` draws them) match a fine reference solve (DPM-Solver++(2M),
    `reference_steps` log-SNR steps, or `reference` when given: see `reference_solve`) from the
    same x_T. `method`: "search" (default) or "gits"
    (see the module docstring). Deterministic for a seed; runs under inference mode; each shape
    [C, H, W] is one example's. The search's error is the mean squared distance to the
    reference samples, or `distance(samples, reference)` when given (a perceptual distance, as
    LD3 uses LPIPS, or a distance between the two sets' feature statistics). `info`, if given,
    receives the tuning error of each start grid and of the result, and the seconds spent. Use the grid with
    `ddim.sample(..., steps=len(grid), sampler=sampler, spacing=grid)`."""
    if method not in METHODS:
        raise BadValue(f"unknown tuning method {method!r}; choose one of {', '.join(METHODS)}")
    if sampler in ("ddpm", "ddpm_sigma_hat"):
        raise BadValue(f"{sampler} draws fresh noise at every step; tune a deterministic sampler's grid")
    steps = steps_for_calls(sampler, calls, exact=True)
    if not 1 <= steps <= schedule.T or n < 1 or reference_steps < 2 * steps:
        raise BadValue(f"tuning needs 1 <= steps <= T, n >= 1 and reference_steps >= 2 steps; got "
                       f"steps={steps}, n={n}, reference_steps={reference_steps}")  # fmt: skip
    began = time.perf_counter()
    kw = dict(prediction=prediction, clip=clip, self_condition=self_condition)
    x_T = PerSampleNoise.from_seed(seed, n).randn(shape, device=device, dtype=dtype)
    bar = tqdm(total=(0 if reference else reference_steps) + max_evals, unit="call", disable=not progress,
               desc=f"tuning {sampler} @ {calls} calls")  # fmt: skip
    with torch.inference_mode():
        ref = reference or reference_solve(model, schedule, x_T, reference_steps, bar.update, **kw)
        out = ref.out
        if out.shape != x_T.shape:
            raise BadValue(f"the reference holds {tuple(out.shape)} samples, not {tuple(x_T.shape)}: "
                           "solve it from the same n, seed and shape")  # fmt: skip
        start = {"gits": gits_grid(ref.xs, ref.x0s, ref.fine, out, schedule, steps)}
        if method == "gits":
            bar.close()
            _report(info, {"gits": None}, start["gits"], None, began)
            return start["gits"]
        cached = _PrefixCache(model)
        evals = 0

        def error(grid: Sequence[int]) -> float:
            nonlocal evals
            evals += 1
            cached.start(grid)
            x = sample(cached, x_T, schedule, len(grid), sampler=sampler, spacing=list(grid), **kw)
            bar.update(1)
            if distance is not None:
                return float(distance(x, out))
            return (x - out).double().pow(2).mean().item()

        for name in START_GRIDS:
            start[name] = make_timesteps(schedule.T, steps, name, schedule).tolist()
        scores = {name: error(grid) for name, grid in start.items()}
        grid = start[min(scores, key=scores.get)]
        best = min(scores.values())
        grid, best = _compass(grid, best, error, schedule, lambda: evals < max_evals)
        bar.close()
    _report(info, scores, grid, best, began)
    return grid


def _compass(grid: list[int], best: float, error: Callable[[Sequence[int]], float],
             schedule: NoiseSchedule, budget: Callable[[], bool]) -> tuple[list[int], float]:  # fmt: skip
    """Compass search (Kolda, Lewis and Torczon 2003, sec. 3.3) on the grid's points after the
    first, in u = the fraction of the log-SNR range from t = 0: move one point by +-delta, keep a
    move that lowers the error, halve delta when none does, stop when the moves no longer change
    the integer grid or the budget is spent."""
    lam = log_snr(schedule.alphas_cumprod.clamp_min(A_FLOOR))  # as the log-SNR grids read it
    u_of = (lam[0] - lam) / (lam[0] - lam[-1])  # 0 at t = 0, 1 at t = T-1, increasing in t
    tried = {tuple(grid)}
    delta = 0.5 / max(len(grid), 2)
    while delta > 1e-3 and budget():
        moved = False
        for k in range(1, len(grid)):
            for sign in (1.0, -1.0):
                target = u_of[grid[k]].item() + sign * delta
                t = int(torch.searchsorted(u_of, torch.tensor([target], dtype=u_of.dtype)))
                t = min(t, schedule.T - 1)
                lo = grid[k + 1] + 1 if k + 1 < len(grid) else 0
                cand = [*grid[:k], min(max(t, lo), grid[k - 1] - 1), *grid[k + 1 :]]
                if tuple(cand) in tried or not budget():
                    continue
                tried.add(tuple(cand))
                e = error(cand)
                if e < best:
                    grid, best, moved = cand, e, True
                    break
        if not moved:
            delta /= 2
    return grid, best


def _report(info: dict | None, scores: dict, grid: list[int], best: float | None, began: float) -> None:
    if info is not None:
        info.update(start_errors=scores, error=best, timesteps=grid, seconds=time.perf_counter() - began)


# ---- stored grids ---------------------------------------------------------------------------------
def run_folder(checkpoint: str | os.PathLike) -> Path:
    """The run folder of a checkpoint folder (<run>/checkpoints/step-XXXXXX) or the folder itself."""
    path = Path(checkpoint).resolve()
    return path.parent.parent if path.parent.name == "checkpoints" else path


def _key(sampler: str, calls: int) -> str:
    return f"{sampler}@{calls}"


def read_tuned(run: str | os.PathLike) -> dict:
    file = run_folder(run) / TUNED_FILE
    if not file.is_file():
        return {}
    try:
        data = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise BadFile(f"{file} is not readable JSON ({e}); delete it and run `ddim tune` again") from None
    if not isinstance(data, dict):
        raise BadFile(f"{file} is not a tuned-grid file; delete it and run `ddim tune` again")
    return data


def store_tuned(run: str | os.PathLike, sampler: str, calls: int, entry: dict) -> Path:
    """Add (or replace) the grid of `sampler` at `calls` in <run>/tuned-grids.json, atomically
    (a temporary file renamed into place)."""
    file = run_folder(run) / TUNED_FILE
    data = read_tuned(run)
    data[_key(sampler, calls)] = entry
    tmp = file.with_name(f".{TUNED_FILE}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, file)
    return file


def tuned_grid(run: str | os.PathLike | None, sampler: str, steps: int) -> list[int]:
    """The stored grid of `sampler` with `steps` points for a run (or one of its checkpoints);
    MissingFile naming the `ddim tune` command when there is none."""
    if run is None:
        raise BadValue("spacing 'tuned' reads the grids `ddim tune` stored in a run folder: pass the run")
    calls = model_calls(sampler, steps)
    entry = read_tuned(run).get(_key(sampler, calls))
    if entry is None:
        folder = run_folder(run)
        raise MissingFile(
            f"no tuned grid for {sampler} at {steps} steps in {folder / TUNED_FILE}; run "
            f"`ddim tune --checkpoint {folder} --sampler {sampler} --calls {calls}` first"
        )
    grid = entry.get("timesteps") if isinstance(entry, dict) else None
    if not isinstance(grid, list) or len(grid) != steps:
        raise BadFile(
            f"{run_folder(run) / TUNED_FILE}: entry {_key(sampler, calls)} is damaged; run `ddim tune` again"
        )
    return [int(t) for t in grid]
