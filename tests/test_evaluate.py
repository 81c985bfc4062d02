"""Bits/dim, the Fréchet distance, the classifier score, and `jaxddpm eval` end to end."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

import jaxddpm as jd
from jaxddpm import cli, data, likelihood, metrics
from jaxddpm.evaluate import EvalError, evaluate
from jaxddpm.trainer import train_and_evaluate
from tests.helpers import tiny_config


def test_discretized_likelihood_sums_to_one_over_the_256_levels():
    grid = jnp.arange(256, dtype=jnp.float32) * (2.0 / 255.0) - 1.0
    for mean, log_scale in [(0.0, -1.0), (0.7, -4.0), (-0.99, -6.0), (0.3, 0.5)]:
        p = jnp.exp(likelihood.discretized_gaussian_log_likelihood(grid, jnp.float32(mean), jnp.float32(log_scale)))
        assert float(jnp.sum(p)) == pytest.approx(1.0, abs=1e-4)


def test_normal_kl_matches_the_closed_form():
    m1, v1, m2, v2 = 0.3, 0.5, -0.2, 2.0
    expected = np.log(np.sqrt(v2) / np.sqrt(v1)) + (v1 + (m1 - m2) ** 2) / (2 * v2) - 0.5
    got = likelihood.normal_kl(jnp.float32(m1), jnp.log(jnp.float32(v1)), jnp.float32(m2), jnp.log(jnp.float32(v2)))
    assert float(got) == pytest.approx(expected, rel=1e-5)


def test_the_bound_of_the_optimal_predictor_for_one_image_has_no_kl_terms():
    """For a dataset of one image x*, the optimal noise prediction is exact: every KL term
    vanishes and only the prior and the decoder remain."""
    schedule = jd.make_schedule("linear", 50, 1e-3, 0.2)
    x_star = data.to_model_range(jnp.asarray(np.random.default_rng(0).integers(0, 256, (1, 4, 4, 1), dtype=np.uint8)))

    def oracle(x_t, t):
        a = schedule.sqrt_alphas_cumprod[t][:, None, None, None]
        s = schedule.sqrt_one_minus_alphas_cumprod[t][:, None, None, None]
        return (x_t - a * x_star) / s

    prior, terms = likelihood.bpd_terms(schedule, oracle, x_star, jax.random.key(0))
    np.testing.assert_allclose(terms[1:], 0.0, atol=1e-3)
    bad_prior, bad_terms = likelihood.bpd_terms(schedule, lambda x, t: jnp.zeros_like(x), x_star, jax.random.key(0))
    assert float(bad_terms[1:].sum()) > 1.0
    np.testing.assert_allclose(prior, bad_prior)
    abar_T = float(schedule.alphas_cumprod[-1])
    kl = 0.5 * (-np.log(1 - abar_T) + (1 - abar_T) + abar_T * np.asarray(x_star) ** 2 - 1)
    assert float(prior[0]) == pytest.approx(kl.mean() / np.log(2), rel=1e-4)


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


def stand_in_features(images_u8):
    """A small fixed feature network: 4x4 average pools and their squares."""
    x = images_u8.astype(np.float32) / 255.0
    n, h, w, c = x.shape
    pooled = x.reshape(n, 4, h // 4, 4, w // 4, c).mean(axis=(2, 4)).reshape(n, -1)
    return np.concatenate([pooled, pooled**2], axis=1)


@pytest.fixture(scope="module")
def trained_workdir(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("eval") / "run")
    config = tiny_config(data__image_size="16", data__holdout="200", data__cache_dir=str(tmp_path_factory.mktemp("cache")), train__num_steps="30")
    train_and_evaluate(config, workdir)
    return workdir


def test_evaluate_end_to_end_with_a_stand_in_feature_network(trained_workdir, monkeypatch):
    monkeypatch.setattr("jaxddpm.classifier.TRAIN_STEPS", 60)  # a short classifier run
    results = evaluate(trained_workdir, ("bpd", "quality", "fid"), num_samples=40, batch_size=20, feature_fn=stand_in_features, feature_name="standin")
    bpd = results["bpd"]
    assert bpd["num_images"] == 200 and len(bpd["timestep_bpd"]) == 10 and np.isfinite(bpd["bpd"])
    assert bpd["bpd"] == pytest.approx(bpd["prior_bpd"] + sum(bpd["timestep_bpd"]), rel=1e-5)
    quality = results["quality"]
    assert 0 <= quality["samples"]["confident_share"] <= 1 and quality["real"]["num_classes"] == 10
    assert np.isfinite(results["fid"]["fid"]) and results["fid"]["fid"] >= 0
    for name in ("bpd", "quality", "fid"):
        saved = json.load(open(results[name]["path"]))
        assert saved["metric"] == name and saved["step"] == 30
    # The trained model's bound is lower than the freshly initialised model's.
    fresh = evaluate(trained_workdir, ("bpd",), fresh=True)["bpd"]
    assert fresh["step"] == 0 and fresh["bpd"] > bpd["bpd"]
    assert os.path.exists(os.path.join(trained_workdir, "eval", "bpd_step0_fresh_seed0.json"))


def test_eval_command_line_errors(trained_workdir, tmp_path, capsys):
    assert cli.main(["eval", "--workdir", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli.main(["eval", "--workdir", trained_workdir, "--metric", "is"]) == 2
    assert capsys.readouterr().err.strip() == "error: metric 'is' is unknown; allowed: bpd, quality, fid"
    with pytest.raises(EvalError, match="FID needs PyTorch and pytorch-fid|Inception weights were not found"):
        evaluate(trained_workdir, ("fid",), num_samples=4, batch_size=4)
