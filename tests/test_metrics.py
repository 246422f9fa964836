"""Tests for ddim.evaluation: metrics against closed forms, the shipped digit features, evaluate."""

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ddim.data import load_dataset, to_uint8
from ddim.errors import BadFile, BadValue
from ddim.evaluation import (
    DigitFeatures,
    InceptionFeatures,
    compute_metrics,
    evaluate,
    feature_statistics,
    frechet_distance,
    get_features,
    kid,
    load_samples,
    precision_recall,
)
from ddim.evaluation.features import DIGIT_HEADS, _fid_inception

ASSET = Path(__file__).parents[1] / "src/ddim/assets/digit_classifier.safetensors"


def _random_psd(d: int, g: torch.Generator) -> torch.Tensor:
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    return a @ a.T / d + 0.1 * torch.eye(d, dtype=torch.float64)


# ---- Frechet distance ------------------------------------------------------------------------


def test_frechet_distance_1d_closed_form():
    # |m1 - m2|^2 + (s1 - s2)^2 for N(m1, s1^2), N(m2, s2^2)
    fd = frechet_distance([1.5], [[4.0]], [-0.5], [[0.25]])
    assert fd == pytest.approx(2.0**2 + (2.0 - 0.5) ** 2, rel=1e-12)


def test_frechet_distance_commuting_covariances_closed_form():
    g = torch.Generator().manual_seed(0)
    d = 6
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    a, b = torch.rand(2, d, generator=g, dtype=torch.float64) + torch.tensor(
        [[0.1], [0.0]], dtype=torch.float64
    )
    mu1, mu2 = torch.randn(2, d, generator=g, dtype=torch.float64)
    expected = float(((mu1 - mu2) ** 2).sum() + ((a.sqrt() - b.sqrt()) ** 2).sum())
    assert frechet_distance(mu1, torch.diag(a), mu2, torch.diag(b)) == pytest.approx(expected, rel=1e-10)
    s1, s2 = q @ torch.diag(a) @ q.T, q @ torch.diag(b) @ q.T  # same eigenvectors: they commute
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_matches_scipy_sqrtm():
    linalg = pytest.importorskip("scipy.linalg")
    g = torch.Generator().manual_seed(1)
    s1, s2 = _random_psd(20, g), _random_psd(20, g)
    mu1, mu2 = torch.randn(20, generator=g, dtype=torch.float64), torch.zeros(20, dtype=torch.float64)
    covmean = linalg.sqrtm(s1.numpy() @ s2.numpy()).real  # the pytorch-fid formula
    expected = float(mu1 @ mu1) + np.trace(s1.numpy() + s2.numpy() - 2 * covmean)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-8)
    assert abs(frechet_distance(mu1, s1, mu1, s1)) < 1e-9


def test_feature_statistics_match_numpy():
    x = torch.randn(50, 4, generator=torch.Generator().manual_seed(2))
    mu, sigma = feature_statistics(x)
    np.testing.assert_allclose(mu.numpy(), x.double().numpy().mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma.numpy(), np.cov(x.double().numpy(), rowvar=False), rtol=1e-10)


# ---- KID ---------------------------------------------------------------------------------------


def test_kid_unbiased_estimator_by_hand():
    # d = 1, k(x, y) = (xy + 1)^3. x = {0, 1}, y = {2, 3}:
    # within x: k(0, 1) = 1; within y: k(2, 3) = 343; across: 1, 1, 27, 64 -> mean 23.25.
    # MMD^2_u = 2 * 1 / 2 + 2 * 343 / 2 - 2 * 23.25 = 297.5; every subset of size 2 is the whole set.
    mean, std = kid([[0.0], [1.0]], [[2.0], [3.0]], subset_size=2, n_subsets=3)
    assert mean == pytest.approx(297.5, rel=1e-12)
    assert std == pytest.approx(0.0, abs=1e-9)


def test_kid_unbiased_for_the_same_law_positive_for_shifted():
    # 400 independent pairs of small sets from one law: the estimates average to zero, within
    # three standard errors (the biased V-statistic would be positive)
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(2, 400, 20, 3, generator=g, dtype=torch.float64)
    values = torch.tensor([kid(a, b, subset_size=20, n_subsets=1)[0] for a, b in zip(x, y)])
    assert abs(values.mean()) < 3 * values.std() / len(values) ** 0.5
    same, _ = kid(x.flatten(0, 1), y.flatten(0, 1), subset_size=500, n_subsets=5)
    shifted, _ = kid(x.flatten(0, 1), y.flatten(0, 1) + 0.5, subset_size=500, n_subsets=5)
    assert abs(same) < 0.02 and shifted > 1.0  # measured -0.007 and 1.46


# ---- precision and recall -----------------------------------------------------------------------


def test_precision_recall_point_clouds():
    g = torch.Generator().manual_seed(4)
    a = torch.randn(200, 2, generator=g)
    assert precision_recall(a, a) == (1.0, 1.0)
    assert precision_recall(a, a + 100.0) == (0.0, 0.0)
    two_clusters = torch.cat([a, a + 100.0])
    precision, recall = precision_recall(two_clusters, a[:150])  # fake: part of one cluster
    assert precision == 1.0
    assert recall < 0.55
    noisy = a[:150] + 0.3 * torch.randn(150, 2, generator=g)  # partly covered both ways
    figures = precision_recall(two_clusters, noisy)
    assert 0 < min(figures) and max(figures) < 1
    for distances in (1, 450, 10**6):  # row blocks of 1, of a few, of all: the same figures
        assert precision_recall(two_clusters, noisy, distances=distances) == figures


# ---- digit features -------------------------------------------------------------------------------


def test_shipped_classifier_is_small_and_classifies_digits():
    assert ASSET.stat().st_size < 1_000_000
    digits = load_dataset("digits")  # 16x16; the extractor resizes to 28x28
    logits = DigitFeatures().logits(digits.images)
    head = DIGIT_HEADS.index("digits")
    accuracy = (logits[:, 10 * head : 10 * head + 10].argmax(1) == digits.labels).float().mean()
    assert accuracy > 0.97  # measured 0.997 (80% of these were training data)


def test_digit_features_separate_classes():
    digits = load_dataset("digits")
    f = DigitFeatures()(digits.images)
    assert f.shape == (len(digits), 128)
    perm = torch.randperm(len(f), generator=torch.Generator().manual_seed(5))
    fit, held = perm[: len(f) // 2], perm[len(f) // 2 :]
    centroids = torch.stack([f[fit][digits.labels[fit] == c].mean(0) for c in range(10)])
    predicted = torch.cdist(f[held], centroids).argmin(1)
    assert (predicted == digits.labels[held]).float().mean() > 0.95  # measured 0.988


def test_digit_features_fd_real_halves_far_below_noise():
    images = load_dataset("digits").images
    perm = torch.randperm(len(images), generator=torch.Generator().manual_seed(6))
    fn = DigitFeatures()
    half_a, half_b = fn(images[perm[:800]]), fn(images[perm[800:1600]])
    noise = fn(torch.rand(800, 1, 16, 16, generator=torch.Generator().manual_seed(7)) * 2 - 1)
    real = frechet_distance(*feature_statistics(half_a), *feature_statistics(half_b))
    fake = frechet_distance(*feature_statistics(half_a), *feature_statistics(noise))
    assert 0 < real < fake / 50  # measured 1.15 and 186


# ---- evaluate ---------------------------------------------------------------------------------------


class StandIn(torch.nn.Module):
    """A tiny fixed random network in place of a real extractor: conv, ReLU, pool -> 32-d."""

    id = "stand-in-v1"

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 8, 3, padding=1)
        g = torch.Generator().manual_seed(0)
        self.conv.weight.data = torch.randn(8, 1, 3, 3, generator=g) / 3
        self.conv.bias.data = torch.randn(8, generator=g) / 3
        self.calls = 0

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return F.adaptive_avg_pool2d(F.relu(self.conv(x)), 2).flatten(1)


def test_evaluate_reports_floor_and_caches(tmp_path):
    fn = StandIn()
    real = load_dataset("digits").images[:400]
    noise = torch.rand(400, 1, 16, 16, generator=torch.Generator().manual_seed(8)) * 2 - 1
    options = {"n_reference": 1000, "cache_dir": tmp_path, "kid_subsets": 10}
    good = evaluate(real, "digits", fn, **options)
    assert len(list(tmp_path.glob("digits-stand-in-v1-*.npz"))) == 1
    calls = fn.calls
    bad = evaluate(noise, "digits", fn, **options)
    assert fn.calls - calls == 2  # the reference came from the cache; only the samples were embedded
    assert (good["n_samples"], good["n_reference"], good["n_floor"]) == (400, 500, 400)
    assert bad["fid_floor"] == good["fid_floor"] and bad["kid_floor"] == good["kid_floor"]
    assert good["fid"] < 3 * good["fid_floor"] + 1e-3 < bad["fid"] / 10
    assert bad["kid"] > 10 * abs(good["kid"]) and bad["precision"] < 0.2 < good["precision"]
    assert all(math.isfinite(v) for v in good.values())


def test_compute_metrics_and_npz_samples(tmp_path):
    images = load_dataset("digits").images[:300]
    np.savez(tmp_path / "samples.npz", to_uint8(images))  # uint8 [N, H, W, C], key arr_0
    loaded = load_samples(tmp_path / "samples.npz")
    assert loaded.shape == images.shape and (loaded - images).abs().max() < 1 / 127
    np.savez(tmp_path / "generated.npz", images=to_uint8(images), other=np.zeros(3))  # `ddim generate --npz`
    torch.testing.assert_close(load_samples(tmp_path / "generated.npz"), loaded)
    f = StandIn()(images)
    m = compute_metrics(f, f, kid_subsets=5)
    assert m["fid"] == pytest.approx(0.0, abs=1e-6) and m["precision"] == m["recall"] == 1.0
    with pytest.raises(ValueError, match="unknown features"):
        get_features("vgg")


# ---- Inception (pytorch-fid convention) ----------------------------------------------------------


def test_inception_missing_or_wrong_weights_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="pt_inception-2015-12-05-6726825d.pth"):
        InceptionFeatures(weights=tmp_path / "nowhere.pth")
    torch.save({"fc.weight": torch.zeros(3)}, tmp_path / "wrong.pth")
    with pytest.raises(ValueError, match="not the FID Inception state dict"):
        InceptionFeatures(weights=tmp_path / "wrong.pth")
    (tmp_path / "damaged.pth").write_bytes(b"PK\x03\x04 not a torch file")
    with pytest.raises(BadFile, match=r"cannot read .*damaged\.pth .*download pt_inception"):
        InceptionFeatures(weights=tmp_path / "damaged.pth")


def test_inception_without_torchvision_names_the_fix(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)
    monkeypatch.setitem(sys.modules, "torchvision.models", None)
    with pytest.raises(BadValue, match=r"need torchvision: pip install \"ddim\[torchvision\]\""):
        _fid_inception()


@pytest.mark.slow
def test_inception_matches_pytorch_fid(tmp_path, monkeypatch):
    """Same (random) weights in our network and in pytorch-fid's InceptionV3: same pool3 features."""
    pytorch_fid = pytest.importorskip("pytorch_fid.inception")
    state = _fid_inception().state_dict()
    torch.save(state, tmp_path / "pt_inception-random.pth")
    with pytest.warns(UserWarning, match="FIDs will not compare"):
        ours = InceptionFeatures(weights=tmp_path / "pt_inception-random.pth")
    monkeypatch.setattr(pytorch_fid, "load_state_dict_from_url", lambda *args, **kwargs: state)
    theirs = pytorch_fid.InceptionV3([3]).eval()
    x = torch.rand(1, 1, 28, 28, generator=torch.Generator().manual_seed(9)) * 2 - 1
    with torch.no_grad():
        expected = theirs((x.repeat(1, 3, 1, 1) + 1) / 2)[0].flatten(1)  # it takes [0, 1] RGB
    got = ours(x)
    assert got.shape == (1, 2048)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


# ---- samples read a batch at a time ----------------------------------------------------------


def test_evaluate_streams_an_npz_a_batch_at_a_time(tmp_path, monkeypatch):
    """The same figures as from the tensor, and no read larger than one batch."""
    from ddim.evaluation import NpzImages

    real = load_dataset("digits").images[:300]
    np.savez(tmp_path / "s.npz", images=to_uint8(real))
    options = {"n_reference": 600, "cache_dir": None, "kid_subsets": 5, "batch_size": 64}
    reads = []
    original = NpzImages.__getitem__
    monkeypatch.setattr(
        NpzImages, "__getitem__", lambda self, rows: reads.append(rows) or original(self, rows)
    )
    from_file = evaluate(tmp_path / "s.npz", "digits", StandIn(), **options)
    from_tensor = evaluate(load_samples(tmp_path / "s.npz"), "digits", StandIn(), **options)
    assert from_file == from_tensor
    sizes = [len(range(*rows.indices(300))) for rows in reads[:-1]]  # the last read is load_samples'
    assert sum(sizes) == 300 and max(sizes) == 64
