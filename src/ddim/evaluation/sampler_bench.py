"""Sampler benchmarks: for one model, each sampler at each budget of model calls, the sample
quality (with its real-vs-real floor) and the wall time, measured after an untimed warm-up run
of one image so that no cell pays the start-up costs (lazy initialisation, allocations, kernel
selection); written as a markdown table, a CSV and a plot of the metric against model calls, one
line per sampler. A cell the sampler layer refuses (heun on too coarse a grid, ...) is left out
with a warning that gives the reason.

Every sampler starts from the same x_T (examples keyed by seed and index), so the differences in
the table are the samplers' own.
"""

from __future__ import annotations

import csv
import functools
import os
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ddim.errors import BadValue
from ddim.evaluation.metrics import evaluate
from ddim.generation import generate
from ddim.samplers import DEFAULT_SPACINGS, model_calls, steps_for_calls
from ddim.schedule import NoiseSchedule
from ddim.tuning import tuned_grid

COLUMNS = (
    "sampler",
    "spacing",
    "eta",
    "budget",
    "steps",
    "model_calls",
    "seconds",
    "fid",
    "fid_floor",
    "kid",
    "precision",
    "recall",
)


def bench_samplers(
    model: Callable[..., Tensor],
    schedule: NoiseSchedule,
    shape: Sequence[int],
    reference: str | os.PathLike,
    *,
    samplers: Iterable[str | tuple[str, float]] = ("ddim", "dpmpp_2m", "unipc", "heun"),
    calls: Iterable[int] = (5, 10, 20, 50, 100),
    n: int = 2000,
    prediction: str = "eps",
    self_condition: bool = False,
    tuned_from: str | os.PathLike | None = None,
    features: str = "digits",
    seed: int = 0,
    batch_size: int = 250,
    device: torch.device | str = "cpu",
    progress: bool = True,
    **evaluate_options,
) -> list[dict]:
    """One row per (sampler, budget): the metrics of n samples and the sampling wall time (after
    an untimed warm-up run of one image with the same options). A
    sampler is a name, "name@spacing" for another grid than its default, or (name, eta) for the
    stochastic DDIM family."""
    rows = []
    for entry in samplers:
        name, eta = entry if isinstance(entry, tuple) else (entry, 0.0)
        name, _, spacing = name.partition("@")
        spacing = spacing or DEFAULT_SPACINGS[name]
        for budget in calls:
            steps = min(steps_for_calls(name, budget), schedule.T)
            options = {
                "steps": steps,
                "sampler": name,
                # "tuned": the grid `ddim tune` stored in the run `tuned_from` (docs/tuning.md)
                "spacing": tuned_grid(tuned_from, name, steps) if spacing == "tuned" else spacing,
                "prediction": prediction,
                "self_condition": self_condition,
            }
            if eta:
                options["eta"] = eta
            run = functools.partial(
                generate, model, schedule, shape, seed=seed, batch_size=batch_size, device=device, **options
            )
            try:
                run(1, progress=False)  # the warm-up, untimed; a refused cell stops here, in a moment
            except BadValue as e:
                warnings.warn(f"{name} @{spacing} at {budget} model calls left out: {e}", stacklevel=2)
                continue
            started = time.perf_counter()
            images = run(n, progress=progress)
            seconds = time.perf_counter() - started
            scores = evaluate(images, reference, features, **evaluate_options)
            calls_used = model_calls(name, steps)
            rows.append(
                {
                    "sampler": name,
                    "spacing": spacing,
                    "eta": eta,
                    "budget": budget,
                    "steps": steps,
                    "model_calls": calls_used,
                    "seconds": seconds,
                    **{k: scores[k] for k in COLUMNS[7:]},
                }
            )
            if progress:
                tqdm.write(f"{name} eta={eta} steps={steps}: fid {scores['fid']:.3f} in {seconds:.1f} s")
    return rows


def label(row: dict) -> str:
    """The sampler's name, with its grid where that is not the default and its eta where not 0."""
    text = row["sampler"]
    if row["spacing"] != DEFAULT_SPACINGS[row["sampler"]]:
        text += f" @{row['spacing']}"
    return text if not row["eta"] else f"{text} (eta={row['eta']:g})"


def write_report(rows: list[dict], out_dir: str | os.PathLike, metric: str = "fid") -> list[Path]:
    """`out_dir/samplers.md`, `samplers.csv` and `samplers.png` (the metric against model calls)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "samplers.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        cells = [f"{r[c]:.4g}" if isinstance(r[c], float) else str(r[c]) for c in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    (out / "samplers.md").write_text("\n".join(lines) + "\n")
    fig, ax = plt.subplots(figsize=(6, 4))
    for name in dict.fromkeys(label(r) for r in rows):
        mine = [r for r in rows if label(r) == name]
        ax.plot([r["model_calls"] for r in mine], [r[metric] for r in mine], marker="o", label=name)
    floor = rows[0].get(f"{metric}_floor") if rows else None
    if floor is not None:
        ax.axhline(floor, color="gray", linestyle="--", label="real vs real")
    ax.set(xscale="log", yscale="log", xlabel="model calls", ylabel=metric.upper())
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "samplers.png", dpi=120)
    plt.close(fig)
    return [out / "samplers.md", out / "samplers.csv", out / "samplers.png"]
