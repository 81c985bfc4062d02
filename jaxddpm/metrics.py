"""Sample-quality metrics: the Fréchet distance between feature statistics (FID when the
features are Inception-v3's pool features), and the classifier score of the quickstart.

A feature network is any function from uint8 NHWC images to (N, D) float features, so the
same pipeline runs with the standard Inception network, the quickstart's digit classifier,
or a small stand-in in tests.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Callable

import numpy as np
import scipy.linalg

from jaxddpm.files import atomic_write

FeatureFn = Callable[[np.ndarray], np.ndarray]


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (unbiased, float64) of (N, D) features."""
    features = np.asarray(features, np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"feature statistics need an (N >= 2, D) array, got shape {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)), the Fréchet distance of two Gaussians.

    As in pytorch-fid: a singular product gets a small diagonal offset, and an imaginary
    part left by rounding in the matrix square root is dropped.
    """
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"statistics of different dimensions: {mu1.shape} vs {mu2.shape}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)  # singular products are handled below
        covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * 1e-6
        covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    if np.iscomplexobj(covmean):
        covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * np.trace(covmean))


def batched_features(feature_fn: FeatureFn, images_u8: np.ndarray, batch_size: int = 256) -> np.ndarray:
    return np.concatenate([np.asarray(feature_fn(images_u8[i : i + batch_size])) for i in range(0, len(images_u8), batch_size)])


def reference_statistics(
    feature_fn: FeatureFn, images_u8: np.ndarray, cache_dir: str, name: str
) -> tuple[np.ndarray, np.ndarray]:
    """Feature statistics of a dataset, cached under ``cache_dir`` by ``name`` (the feature
    network and dataset) and a hash of the images, so a changed dataset is recomputed."""
    digest = hashlib.sha1(np.ascontiguousarray(images_u8).tobytes()).hexdigest()[:12]
    path = os.path.join(cache_dir, f"stats-{name}-{digest}.npz")
    if os.path.exists(path):
        with np.load(path) as f:
            return f["mu"], f["sigma"]
    mu, sigma = feature_statistics(batched_features(feature_fn, images_u8))
    try:
        os.makedirs(cache_dir, exist_ok=True)
        with atomic_write(path, "wb") as f:
            np.savez(f, mu=mu, sigma=sigma)
    except OSError:
        pass  # the cache is an optimisation
    return mu, sigma


def fid(feature_fn: FeatureFn, samples_u8: np.ndarray, reference: tuple[np.ndarray, np.ndarray]) -> float:
    """Fréchet distance of the samples' features to reference statistics."""
    mu, sigma = feature_statistics(batched_features(feature_fn, samples_u8))
    return frechet_distance(mu, sigma, *reference)


def classifier_score(probs: np.ndarray, threshold: float = 0.9) -> dict:
    """Share of images labelled with probability >= ``threshold``, and class coverage
    (classes among the confident labels, and the smallest per-class count)."""
    probs = np.asarray(probs)
    confident = probs.max(axis=1) >= threshold
    counts = np.bincount(probs.argmax(axis=1)[confident], minlength=probs.shape[1])
    return {
        "confident_share": float(confident.mean()),
        "classes_present": int(np.sum(counts > 0)),
        "num_classes": int(probs.shape[1]),
        "min_class_count": int(counts.min()),
        "class_counts": counts.tolist(),
        "threshold": threshold,
    }
