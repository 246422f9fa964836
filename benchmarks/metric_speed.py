"""Speed of `ddim.evaluation`: one `evaluate` of N samples end to end, then each metric alone,
with pytorch-fid's Frechet distance (scipy's sqrtm) as the anchor for ours (eigh) in the same run.

The samples are reference images with Gaussian noise added (sigma 0.3), so the figures are
non-trivial; `evaluate` runs twice, first with an empty reference cache (reference features
extracted and written), then with it filled. The metric rows use random features of the given
widths (128: digit features, 2048: Inception pool3). pytorch-fid's scipy/numpy calls use their
own thread pools, which --threads does not limit. On a loaded shared CPU, compare --threads 1 and
2: two spinning threads can be several times slower than one.
Run: python benchmarks/metric_speed.py --reference /work/shared/data/mnist --n 2000 --threads 1
"""

import argparse
import tempfile
import time
from collections.abc import Callable

import torch

from ddim.data import load_dataset
from ddim.evaluation import (
    evaluate,
    feature_statistics,
    frechet_distance,
    get_features,
    kid,
    precision_recall,
)


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reference", default="digits", help="dataset name or folder")
    parser.add_argument("--features", default="digits", help="digits or inception")
    parser.add_argument("--n", type=int, default=2000, help="number of samples")
    parser.add_argument("--n-reference", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)

    real = load_dataset(args.reference, split="test" if args.reference != "digits" else "train").images
    idx = torch.randint(len(real), (args.n,), generator=g)
    samples = (real[idx] + 0.3 * torch.randn(real[idx].shape, generator=g)).clamp(-1, 1)
    features = get_features(args.features)
    shape = tuple(samples.shape[1:])
    print(f"evaluate: {args.n} samples {shape} vs {args.reference}, {args.features} features")
    print(f"{'run':<28} {'seconds':>8}  fid (floor)        kid (floor)          precision, recall (floor)")
    with tempfile.TemporaryDirectory() as cache:
        for run in ("cold cache (extract + write)", "warm cache"):
            options = {"n_reference": args.n_reference, "cache_dir": cache}
            seconds, r = timed(lambda: evaluate(samples, args.reference, features, **options))  # noqa: B023
            pr, pr_floor = (
                f"{r['precision']:.3f}, {r['recall']:.3f}",
                f"{r['precision_floor']:.3f}, {r['recall_floor']:.3f}",
            )
            print(
                f"{run:<28} {seconds:>8.2f}  {r['fid']:.3f} ({r['fid_floor']:.3f})"
                f"  {r['kid']:.5f} ({r['kid_floor']:.5f})  {pr} ({pr_floor})"
            )
    print(f"(n_reference = {r['n_reference']} per half, n_floor = {r['n_floor']})\n")

    print(f"{'metric (N fake vs 5000 real)':<34} {'D':>5} {'seconds':>8} {'value':>12}")
    for d in (128, 2048):
        fake, ref = torch.randn(args.n, d, generator=g), torch.randn(5000, d, generator=g) * 1.1
        for name, seconds, value in metric_rows(fake, ref):
            print(f"{name:<34} {d:>5} {seconds:>8.2f} {value:>12.5f}")


def metric_rows(fake: torch.Tensor, ref: torch.Tensor) -> list[tuple[str, float, float]]:
    """(name, seconds, value) of each metric on one pair of feature sets."""
    t_stats, (stats_f, stats_r) = timed(lambda: (feature_statistics(fake), feature_statistics(ref)))
    rows = [("mean + covariance (both sets)", t_stats, float("nan"))]
    rows.append(("frechet_distance (ours, eigh)", *timed(lambda: frechet_distance(*stats_f, *stats_r))))
    try:
        from pytorch_fid.fid_score import calculate_frechet_distance

        arrays = [s.numpy() for s in (*stats_f, *stats_r)]
        rows.append(("  pytorch-fid (scipy sqrtm)", *timed(lambda: calculate_frechet_distance(*arrays))))
    except ImportError:
        rows.append(("  pytorch-fid: not installed", float("nan"), float("nan")))
    t, (v, _) = timed(lambda: kid(fake, ref))
    rows.append(("kid (100 subsets of 1000)", t, v))
    t, (v, _) = timed(lambda: precision_recall(ref, fake))
    rows.append(("precision (k = 3; + recall)", t, v))
    return rows


if __name__ == "__main__":
    main()
