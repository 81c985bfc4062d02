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


def _squared_distances(a: np.ndarray, b: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """(len(a), len(b)) squared Euclidean distances, in float64, a chunk of rows at a time."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    b_sq = np.sum(b * b, axis=1)
    rows = [np.maximum(np.sum(part * part, axis=1)[:, None] + b_sq[None, :] - 2.0 * part @ b.T, 0.0)
            for part in np.array_split(a, max(1, -(-len(a) // chunk)))]
    return np.concatenate(rows)


def knn_radii(features: np.ndarray, k: int = 3) -> np.ndarray:
    """Each point's distance to its k-th nearest other point of the same set."""
    d = _squared_distances(features, features)
    np.fill_diagonal(d, np.inf)
    return np.sqrt(np.partition(d, k - 1, axis=1)[:, k - 1])


def precision_recall(real: np.ndarray, generated: np.ndarray, k: int = 3) -> dict:
    """Improved precision and recall (Kynkäänniemi et al. 2019) of ``generated`` against
    ``real`` features: precision is the share of generated points inside the real manifold
    (the union of balls around each real point reaching its k-th nearest real neighbour),
    recall the share of real points inside the generated manifold."""
    real_radii, generated_radii = knn_radii(real, k), knn_radii(generated, k)
    d = np.sqrt(_squared_distances(generated, real))  # (generated, real)
    precision = np.mean(np.any(d <= real_radii[None, :], axis=1))
    recall = np.mean(np.any(d <= generated_radii[:, None], axis=0))
    return {"precision": float(precision), "recall": float(recall), "k": k}


def nearest_distances(queries: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Each query's distance to its nearest point of ``reference``."""
    return np.sqrt(_squared_distances(queries, reference).min(axis=1))


def memorisation(samples: np.ndarray, training: np.ndarray, held_out: np.ndarray, quantile: float = 0.05) -> dict:
    """How many samples sit closer to a training image than held-out images typically do:
    the share of samples whose nearest training image is nearer than the ``quantile`` of the
    held-out images' nearest-training distances. A model that does not copy its training
    images gives about ``quantile``; one that copies gives more."""
    threshold = float(np.quantile(nearest_distances(held_out, training), quantile))
    share = float(np.mean(nearest_distances(samples, training) < threshold))
    return {"share_closer_than_held_out": share, "expected_without_copying": quantile, "threshold": threshold}
