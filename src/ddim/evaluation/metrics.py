"""Sample-quality metrics on feature arrays, and `evaluate`, which runs them against a dataset.

Owns the metrics, each on features [N, D] (any extractor from `features.py`), in float64:

- `frechet_distance` on (mean, covariance) from `feature_statistics`: FID (Heusel et al. 2017);
- `kid`: kernel inception distance (Binkowski et al. 2018), mean and std over random subsets;
- `precision_recall`: k-NN manifold precision and recall (Kynkaenniemi et al. 2019);
- `compute_metrics`: all of them for one pair of feature sets;
- `evaluate`: samples vs. a reference dataset, with the reference features cached on disk and the
  real-vs-real floor reported beside every figure (see `evaluate` for how the floor is made).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ddim.data import DATASET_NAMES, ImageFolder, load_dataset
from ddim.data.idx import is_idx_folder
from ddim.errors import BadValue
from ddim.evaluation.features import FeatureFn, embed, get_features
from ddim.evaluation.samples import NpzImages, open_samples, sample_shape

ArrayLike = Tensor | np.ndarray
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "ddim" / "reference"
_CACHE_VERSION = 1


def _f64(x: ArrayLike) -> Tensor:
    return torch.as_tensor(x).detach().to("cpu", torch.float64)


def feature_statistics(features: ArrayLike) -> tuple[Tensor, Tensor]:
    """Mean [D] and unbiased covariance [D, D] (divisor N - 1, as numpy's cov) in float64."""
    f = _f64(features)
    if f.ndim != 2 or len(f) < 2:
        raise BadValue(f"need features [N >= 2, D], got shape {tuple(f.shape)}")
    mu = f.mean(0)
    centred = f - mu
    return mu, centred.T @ centred / (len(f) - 1)


def _sqrtm_psd(s: Tensor) -> Tensor:
    """Square root of a symmetric positive semi-definite matrix by eigendecomposition."""
    lam, v = torch.linalg.eigh((s + s.T) / 2)
    return (v * lam.clamp(min=0).sqrt()) @ v.T


def frechet_distance(mu1: ArrayLike, sigma1: ArrayLike, mu2: ArrayLike, sigma2: ArrayLike) -> float:
    """Squared Frechet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2)."""
    mu1, mu2 = _f64(mu1).reshape(-1), _f64(mu2).reshape(-1)
    s1, s2 = _f64(sigma1).reshape(len(mu1), -1), _f64(sigma2).reshape(len(mu2), -1)
    if not (s1.shape == s2.shape == (len(mu1), len(mu1)) and mu1.shape == mu2.shape):
        shapes = [tuple(t.shape) for t in (mu1, s1, mu2, s2)]
        raise BadValue(f"shapes of (mu1, sigma1, mu2, sigma2) do not match: {shapes}")
    # Heusel et al. 2017, sec. 3: d^2 = |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2);
    # the trace of the root is the sum of the roots of the eigenvalues of S1^1/2 S2 S1^1/2 (PSD)
    root1 = _sqrtm_psd(s1)
    inner = root1 @ s2 @ root1
    tr_root = torch.linalg.eigvalsh((inner + inner.T) / 2).clamp(min=0).sqrt().sum()
    diff = mu1 - mu2
    return float(diff @ diff + s1.trace() + s2.trace() - 2 * tr_root)


def _polynomial_kernel(a: Tensor, b: Tensor) -> Tensor:
    return (a @ b.T / a.shape[1] + 1) ** 3  # Binkowski et al. 2018: k(x, y) = (x.y / d + 1)^3


def kid(
    x: ArrayLike, y: ArrayLike, *, subset_size: int = 1000, n_subsets: int = 100, seed: int = 0
) -> tuple[float, float]:
    """Kernel inception distance: (mean, std) over `n_subsets` of the unbiased MMD^2 between
    `subset_size` rows of x and of y, each subset drawn without replacement (seeded); the
    subset size is capped by the smaller set. Zero in expectation when x and y share a law."""
    x, y = _f64(x), _f64(y)
    m = min(subset_size, len(x), len(y))
    if m < 2 or x.shape[1:] != y.shape[1:]:
        raise BadValue(
            f"need two feature sets [N >= 2, D] with the same D, got {tuple(x.shape)}, {tuple(y.shape)}"
        )
    g = torch.Generator().manual_seed(seed)
    values = []
    for _ in range(n_subsets):
        a = x[torch.randperm(len(x), generator=g)[:m]]
        b = y[torch.randperm(len(y), generator=g)[:m]]
        kxx, kyy = _polynomial_kernel(a, a), _polynomial_kernel(b, b)
        # unbiased MMD^2_u (Gretton et al. 2012, Lemma 6): within-set sums leave out i = j
        within = (kxx.sum() - kxx.trace() + kyy.sum() - kyy.trace()) / (m * (m - 1))
        values.append(within - 2 * _polynomial_kernel(a, b).mean())
    v = torch.stack(values)
    return float(v.mean()), float(v.std(correction=0))


def _rows(against: Tensor, distances: int) -> int:
    """Rows per block so that a block's distances to `against` number about `distances`."""
    return max(1, distances // len(against))


def _knn_radii(x: Tensor, k: int, distances: int) -> Tensor:
    """Distance from each row of x to its k-th nearest other row (the k+1-th counts itself)."""
    blocks = x.split(_rows(x, distances))
    return torch.cat([torch.cdist(c, x).kthvalue(k + 1, dim=1).values for c in blocks])


def _covered(points: Tensor, centres: Tensor, radii: Tensor, distances: int) -> float:
    """Fraction of `points` inside at least one ball (centre, radius)."""
    blocks = points.split(_rows(centres, distances))
    inside = [(torch.cdist(c, centres) <= radii).any(1) for c in blocks]
    return float(torch.cat(inside).double().mean())


def precision_recall(
    real: ArrayLike, fake: ArrayLike, *, k: int = 3, distances: int = 2**22
) -> tuple[float, float]:
    """Improved precision and recall (Kynkaenniemi et al. 2019): each set's manifold is the union
    of balls around its points, radius = distance to the k-th nearest neighbour in the same set.
    precision = fraction of fake inside the real manifold; recall = fraction of real inside the
    fake manifold. Distances are computed in blocks of about `distances` (32 MB in float64), so
    memory does not grow with the square of the set sizes."""
    real, fake = _f64(real), _f64(fake)
    if min(len(real), len(fake)) <= k:
        raise BadValue(f"need more than k = {k} points in each set, got {len(real)} and {len(fake)}")
    precision = _covered(fake, real, _knn_radii(real, k, distances), distances)
    recall = _covered(real, fake, _knn_radii(fake, k, distances), distances)
    return precision, recall


def compute_metrics(
    real: ArrayLike,
    fake: ArrayLike,
    *,
    real_stats: tuple[ArrayLike, ArrayLike] | None = None,
    kid_subset_size: int = 1000,
    kid_subsets: int = 100,
    k: int = 3,
    seed: int = 0,
) -> dict[str, float]:
    """fid, kid, kid_std, precision, recall of `fake` against `real` features ([N, D] each);
    `real_stats` = (mu, sigma) of `real` when already known."""
    mu_r, sigma_r = real_stats if real_stats is not None else feature_statistics(real)
    kid_mean, kid_std = kid(real, fake, subset_size=kid_subset_size, n_subsets=kid_subsets, seed=seed)
    precision, recall = precision_recall(real, fake, k=k)
    return {
        "fid": frechet_distance(*feature_statistics(fake), mu_r, sigma_r),
        "kid": kid_mean,
        "kid_std": kid_std,
        "precision": precision,
        "recall": recall,
    }


def check_reference_size(reference: str | os.PathLike | Dataset, size: tuple[int, int]) -> None:
    """Refuse samples whose size differs from a reference folder of images: scoring them would
    resize the real images and measure the resizing. Named datasets and IDX folders are loaded
    at the samples' size, as training loads them."""
    if isinstance(reference, Dataset) or os.fspath(reference).lower().replace("_", "-") in DATASET_NAMES:
        return
    folder = Path(reference).expanduser()
    if not folder.is_dir() or is_idx_folder(folder):
        return
    stored = ImageFolder(folder).stored_size
    if stored != tuple(size):
        raise BadValue(
            f"the samples are {size[1]}x{size[0]} but the images in {folder} are {stored[1]}x{stored[0]}"
            " (width x height); score samples of the reference's size"
        )


def _cache_path(cache_dir: Path, key: dict) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]
    name = re.sub(r"[^\w.-]+", "_", f"{Path(key['dataset']).name}-{key['features']}")
    return cache_dir / f"{name}-{digest}.npz"


def reference_features(
    reference: str | os.PathLike | Dataset,
    features: FeatureFn,
    *,
    size: tuple[int, int] | None = None,
    channels: int | None = None,
    n_reference: int = 10_000,
    split: str = "train",
    root: str | os.PathLike | None = None,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = DEFAULT_CACHE,
    batch_size: int = 250,
) -> dict[str, Tensor]:
    """Features of two disjoint halves, "a" and "b", of `n_reference` seeded-random images of the
    reference (capped at its size), with "mu" and "sigma" of half a. A named dataset or folder is
    loaded at `size` and `channels` with `ddim.data.load_dataset`; a `Dataset` is used as it is.
    Cached in `cache_dir/<dataset>-<features id>-<hash of the full key>.npz` when `cache_dir`
    is set, the reference is not a `Dataset` object and the extractor has an `id`."""
    path = None
    feature_id = getattr(features, "id", None)
    if cache_dir is not None and feature_id and not isinstance(reference, Dataset):
        name = os.fspath(reference)  # a name wins over a folder, as in load_dataset
        dataset = name.lower() if name.lower() in DATASET_NAMES else str(Path(name).expanduser().resolve())
        key = {
            "dataset": dataset, "split": split, "size": list(size) if size else None, "channels": channels,
            "n_reference": n_reference, "seed": seed, "features": feature_id, "version": _CACHE_VERSION,
        }  # fmt: skip
        path = _cache_path(Path(cache_dir).expanduser(), key)
        if path.is_file():
            with np.load(path) as npz:
                if str(npz["key"]) == json.dumps(key, sort_keys=True):
                    return {k: torch.from_numpy(npz[k]) for k in ("a", "b", "mu", "sigma")}

    ds = reference
    if not isinstance(ds, Dataset):
        ds = load_dataset(reference, size=size, channels=channels, split=split, root=root)
    n = min(n_reference, len(ds))
    if n < 8:
        raise BadValue(f"the reference has {len(ds)} images and n_reference is {n_reference}; need 8 or more")
    idx = torch.randperm(len(ds), generator=torch.Generator().manual_seed(seed))[:n]
    images = getattr(ds, "images", None)
    images = images[idx] if isinstance(images, Tensor) else torch.stack([ds[int(i)][0] for i in idx])
    f = embed(features, images, batch_size)
    a, b = f[: n // 2], f[n // 2 : 2 * (n // 2)]
    mu, sigma = feature_statistics(a)
    out = {"a": a, "b": b, "mu": mu, "sigma": sigma}
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as fh:
            arrays = {name: value.numpy() for name, value in out.items()}
            np.savez(fh, key=np.array(json.dumps(key, sort_keys=True)), **arrays)
        os.replace(tmp, path)  # atomic: a concurrent reader never sees half a file
    return out


def evaluate(
    samples: Tensor | str | os.PathLike,
    reference: str | os.PathLike | Dataset,
    features: str | FeatureFn = "digits",
    *,
    n_reference: int = 10_000,
    split: str = "train",
    root: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = DEFAULT_CACHE,
    seed: int = 0,
    batch_size: int = 250,
    kid_subset_size: int = 1000,
    kid_subsets: int = 100,
    k: int = 3,
) -> dict[str, float]:
    """FID, KID (mean, std), precision and recall of `samples` against `reference`, each with its
    real-vs-real floor.

    `samples`: images [N, C, H, W] in [-1, 1], an .npz or a folder of images, read a batch at a
    time (see `ddim.evaluation.samples`). `reference`: a dataset name or folder
    (`ddim.data.load_dataset`, loaded at the samples' size and channels, `split` and `root`
    passed on; a folder of images must hold images of the samples' size, see
    `check_reference_size`) or a `Dataset`. `features`:
    "digits", "inception" or a callable (see `ddim.evaluation.features`).

    The floor: `n_reference` reference images (capped at the dataset's size) are split into two
    disjoint halves, A and B. Each figure compares the samples with A; its "<name>_floor" compares
    the first `n_floor` = min(N, |B|) images of B with A, the same comparison made with real
    images in place of samples and the same set sizes when N <= |B| (FID and KID subsets depend
    on them). A floor is what a perfect generator would score; figures near it cannot be told
    apart from real data at this sample size. Reference features are cached (`reference_features`).
    Returns floats keyed fid, kid, kid_std, precision, recall, each also with "_floor", and the
    counts n_samples, n_reference (= |A|) and n_floor.
    """
    images = open_samples(samples)  # read a batch at a time: memory stays flat for any N
    fn = get_features(features)
    channels, *size = sample_shape(images)
    size = tuple(size)
    check_reference_size(reference, size)
    ref = reference_features(
        reference, fn, size=size, channels=channels, n_reference=n_reference, split=split, root=root,
        seed=seed, cache_dir=cache_dir, batch_size=batch_size,
    )  # fmt: skip
    try:
        fake = embed(fn, images, batch_size)
    finally:
        if isinstance(images, NpzImages):
            images.close()
    n_floor = min(len(fake), len(ref["b"]))
    options = dict(
        real_stats=(ref["mu"], ref["sigma"]),
        kid_subset_size=kid_subset_size,
        kid_subsets=kid_subsets,
        k=k,
        seed=seed,
    )
    result: dict[str, float] = {"n_samples": len(fake), "n_reference": len(ref["a"]), "n_floor": n_floor}
    figures = compute_metrics(ref["a"], fake, **options)
    floors = compute_metrics(ref["a"], ref["b"][:n_floor], **options)
    for name, value in figures.items():
        result[name], result[f"{name}_floor"] = value, floors[name]
    return result
