"""Evaluation: sample-quality metrics (FID, KID, precision/recall) on pluggable image features.

`evaluate(samples, reference, features)` is the entry point; `metrics` holds the metrics on
feature arrays, `features` the extractors (the shipped digit classifier, FID Inception-v3),
`samples` the reading of the images to score, a batch at a time.
"""

from ddim.evaluation.features import (
    DigitClassifier,
    DigitFeatures,
    FeatureFn,
    InceptionFeatures,
    embed,
    get_features,
)
from ddim.evaluation.metrics import (
    compute_metrics,
    evaluate,
    feature_statistics,
    frechet_distance,
    kid,
    precision_recall,
    reference_features,
)
from ddim.evaluation.samples import NpzImages, load_samples, open_samples

__all__ = [
    "DigitClassifier",
    "DigitFeatures",
    "FeatureFn",
    "InceptionFeatures",
    "compute_metrics",
    "embed",
    "evaluate",
    "feature_statistics",
    "frechet_distance",
    "get_features",
    "kid",
    "load_samples",
    "NpzImages",
    "open_samples",
    "precision_recall",
    "reference_features",
]
