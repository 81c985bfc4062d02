"""The discretised decoder likelihood, Gaussian KL and the variational bound (bits/dim)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxddpm as jd
from jaxddpm import data, likelihood


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
