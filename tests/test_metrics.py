"""The Fréchet distance and the classifier score."""

import numpy as np
import pytest
import scipy.linalg

from jaxddpm import metrics


def test_frechet_distance_against_independent_computations():
    rng = np.random.default_rng(0)
    # Diagonal covariances: |mu1 - mu2|^2 + sum (sqrt(s1) - sqrt(s2))^2.
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    s1, s2 = rng.uniform(0.5, 2, 5), rng.uniform(0.5, 2, 5)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(s1) - np.sqrt(s2)) ** 2)
    assert metrics.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-10)
    # Full covariances: tr sqrt(S1 S2) = tr sqrt(S1^(1/2) S2 S1^(1/2)), computed with eigh.
    a, b = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
    c1, c2 = a @ a.T + 0.1 * np.eye(6), b @ b.T + 0.1 * np.eye(6)

    def psd_sqrt(m):
        w, v = np.linalg.eigh(m)
        return (v * np.sqrt(np.clip(w, 0, None))) @ v.T

    r = psd_sqrt(c1)
    expected = np.sum((mu1[:1] - mu2[:1]) ** 2) + np.trace(c1) + np.trace(c2) - 2 * np.trace(psd_sqrt(r @ c2 @ r))
    mu1_6, mu2_6 = np.pad(mu1[:1], (0, 5)), np.pad(mu2[:1], (0, 5))
    assert metrics.frechet_distance(mu1_6, c1, mu2_6, c2) == pytest.approx(expected, rel=1e-8)
    assert metrics.frechet_distance(mu1_6, c1, mu1_6, c1) == pytest.approx(0.0, abs=1e-6)
    # From samples of the two Gaussians, the statistics give the analytic value.
    x = rng.multivariate_normal(mu1_6, c1, 200_000)
    y = rng.multivariate_normal(mu2_6, c2, 200_000)
    assert metrics.frechet_distance(*metrics.feature_statistics(x), *metrics.feature_statistics(y)) == pytest.approx(expected, rel=0.02)
    assert np.allclose(scipy.linalg.sqrtm(c1) @ scipy.linalg.sqrtm(c1), c1)


def test_classifier_score():
    probs = np.array([[0.95, 0.05, 0.0], [0.5, 0.5, 0.0], [0.0, 0.02, 0.98], [0.91, 0.09, 0.0]])
    score = metrics.classifier_score(probs, threshold=0.9)
    assert score["confident_share"] == 0.75 and score["classes_present"] == 2 and score["class_counts"] == [2, 0, 1]


def test_knn_radii_and_nearest_distances_against_brute_force():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(12, 3)), rng.normal(size=(5, 3))
    d = np.linalg.norm(x[:, None] - x[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    np.testing.assert_allclose(metrics.knn_radii(x, k=3), np.sort(d, axis=1)[:, 2], rtol=1e-12)
    np.testing.assert_allclose(metrics.nearest_distances(y, x), np.linalg.norm(y[:, None] - x[None], axis=-1).min(1), rtol=1e-12)


def test_precision_and_recall_tell_quality_from_coverage():
    rng = np.random.default_rng(1)
    real = rng.normal(size=(400, 2))
    same = metrics.precision_recall(real, rng.normal(size=(400, 2)))
    assert same["precision"] > 0.85 and same["recall"] > 0.85
    far = metrics.precision_recall(real, rng.normal(size=(400, 2)) + 20)
    assert far["precision"] == 0.0 and far["recall"] == 0.0
    collapsed = metrics.precision_recall(real, 0.1 * rng.normal(size=(400, 2)))  # all near the mode
    assert collapsed["precision"] > 0.95 and collapsed["recall"] < 0.3


def test_memorisation_counts_copies():
    rng = np.random.default_rng(2)
    training, held_out = rng.normal(size=(500, 8)), rng.normal(size=(300, 8))
    copies = metrics.memorisation(training[:100] + 1e-6, training, held_out)
    assert copies["share_closer_than_held_out"] == 1.0
    fresh = metrics.memorisation(rng.normal(size=(400, 8)), training, held_out)
    assert 0.0 < fresh["share_closer_than_held_out"] < 0.15 and fresh["expected_without_copying"] == 0.05
