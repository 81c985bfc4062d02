import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxddpm as jd
from jaxddpm.schedule import COSINE_MAX_BETA, COSINE_OFFSET, tables_from_betas


def closed_forms(T=300, start=1e-4, end=0.02):
    """The tables written out term by term with Python floats."""
    betas = [start + (end - start) * i / (T - 1) for i in range(T)]
    acp = [math.prod(1.0 - b for b in betas[: i + 1]) for i in range(T)]
    acp_prev = [1.0] + acp[:-1]
    pv = [betas[i] * (1 - acp_prev[i]) / (1 - acp[i]) for i in range(T)]
    return dict(
        betas=betas,
        alphas=[1 - b for b in betas],
        alphas_cumprod=acp,
        alphas_cumprod_prev=acp_prev,
        sqrt_recip_alphas=[1 / math.sqrt(1 - b) for b in betas],
        sqrt_alphas_cumprod=[math.sqrt(a) for a in acp],
        sqrt_one_minus_alphas_cumprod=[math.sqrt(1 - a) for a in acp],
        sqrt_recip_alphas_cumprod=[1 / math.sqrt(a) for a in acp],
        sqrt_recipm1_alphas_cumprod=[math.sqrt(1 / a - 1) for a in acp],
        posterior_variance=pv,
        posterior_log_variance_clipped=[math.log(pv[max(i, 1)]) for i in range(T)],
        posterior_mean_coef1=[betas[i] * math.sqrt(acp_prev[i]) / (1 - acp[i]) for i in range(T)],
        posterior_mean_coef2=[(1 - acp_prev[i]) * math.sqrt(1 - betas[i]) / (1 - acp[i]) for i in range(T)],
    )


def test_float64_tables_match_closed_forms():
    expected = closed_forms()
    got = tables_from_betas(np.linspace(1e-4, 0.02, 300))
    assert set(got) == set(expected)
    for name, values in expected.items():
        np.testing.assert_allclose(got[name], values, rtol=1e-12, atol=1e-15, err_msg=name)


def test_make_schedule_is_float64_rounded_once():
    schedule = jd.make_schedule()
    expected = closed_forms()
    assert schedule.num_timesteps == 300
    for name, values in expected.items():
        table = getattr(schedule, name)
        assert table.dtype == jnp.float32 and table.shape == (300,)
        np.testing.assert_array_equal(np.asarray(table), np.asarray(values, np.float64).astype(np.float32), err_msg=name)


def test_alphas_cumprod_is_decreasing_and_in_unit_interval():
    acp = np.asarray(jd.make_schedule().alphas_cumprod)
    assert np.all(np.diff(acp) < 0)
    assert 0 < acp[-1] < acp[0] < 1


def test_posterior_is_the_bayes_posterior_of_the_forward_process():
    """q(x_{t-1} | x_t, x_0) from Gaussian conjugacy, for every t >= 1."""
    t = tables_from_betas(np.linspace(1e-4, 0.02, 300))
    rng = np.random.default_rng(0)
    x0, x_t = rng.standard_normal(2)
    for i in range(1, 300):
        prior_var = 1 - t["alphas_cumprod"][i - 1]  # q(x_{t-1} | x_0)
        prior_mean = math.sqrt(t["alphas_cumprod"][i - 1]) * x0
        lik_scale, lik_var = math.sqrt(t["alphas"][i]), t["betas"][i]  # q(x_t | x_{t-1})
        precision = 1 / prior_var + lik_scale**2 / lik_var
        mean = (prior_mean / prior_var + lik_scale * x_t / lik_var) / precision
        got_mean = t["posterior_mean_coef1"][i] * x0 + t["posterior_mean_coef2"][i] * x_t
        assert got_mean == pytest.approx(mean, rel=1e-9)
        assert t["posterior_variance"][i] == pytest.approx(1 / precision, rel=1e-9)
    # At t = 0 the posterior collapses onto x0.
    assert t["posterior_variance"][0] == 0
    assert t["posterior_mean_coef1"][0] * x0 + t["posterior_mean_coef2"][0] * x_t == pytest.approx(x0)


def test_q_posterior_uses_the_tables():
    s = jd.make_schedule(num_timesteps=50)
    x0 = jnp.ones((3, 2, 2, 1))
    x_t = 2 * jnp.ones((3, 2, 2, 1))
    t = jnp.array([0, 10, 49])
    mean, var, log_var = jd.q_posterior(s, x0, x_t, t)
    assert mean.shape == var.shape == log_var.shape == x0.shape
    expected = s.posterior_mean_coef1[t] + 2 * s.posterior_mean_coef2[t]
    np.testing.assert_allclose(mean[:, 0, 0, 0], expected, rtol=1e-6)
    np.testing.assert_allclose(var[:, 1, 1, 0], s.posterior_variance[t], rtol=1e-6)


def test_schedule_is_a_pytree_usable_under_jit():
    s = jd.make_schedule(num_timesteps=10)
    leaves = jax.tree.leaves(s)
    assert len(leaves) == 13
    doubled = jax.jit(lambda s: jax.tree.map(lambda x: 2 * x, s))(s)
    np.testing.assert_allclose(doubled.betas, 2 * s.betas)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(kind="quadratic-ish"), "schedule kind 'quadratic-ish' is unknown; allowed: cosine, linear, quadratic, sigmoid"),
        (dict(num_timesteps=0), "num_timesteps must be a positive integer"),
        (dict(num_timesteps=2.5), "num_timesteps must be a positive integer"),
        (dict(beta_start=0.0), "betas must lie in (0, 1)"),
        (dict(beta_end=1.0), "betas must lie in (0, 1)"),
        (dict(beta_start=0.02, beta_end=1e-4), "betas must not decrease"),
    ],
)
def test_make_schedule_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        jd.make_schedule(**kwargs)


def test_cosine_schedule_matches_its_closed_form():
    T = 300
    s = jd.make_schedule("cosine", T)
    f = lambda t: np.cos((t / T + COSINE_OFFSET) / (1 + COSINE_OFFSET) * np.pi / 2) ** 2  # noqa: E731
    betas = np.minimum(1 - f(np.arange(1, T + 1)) / f(np.arange(T)), COSINE_MAX_BETA)
    np.testing.assert_allclose(np.asarray(s.betas), betas, rtol=1e-6)
    unclipped = betas < COSINE_MAX_BETA
    abar = f(np.arange(1, T + 1)) / f(0)
    np.testing.assert_allclose(np.asarray(s.alphas_cumprod)[unclipped], abar[unclipped], rtol=1e-5, atol=1e-9)
    assert float(s.betas[-1]) == pytest.approx(COSINE_MAX_BETA)  # the last step is clipped


def test_quadratic_and_sigmoid_schedules():
    q = np.asarray(jd.make_schedule("quadratic", 10, 1e-4, 0.02).betas, np.float64)
    np.testing.assert_allclose(np.sqrt(q), np.linspace(1e-2, np.sqrt(0.02), 10), rtol=1e-6)
    sg = np.asarray(jd.make_schedule("sigmoid", 101, 1e-4, 0.02).betas, np.float64)
    assert np.all(np.diff(sg) > 0) and sg[50] == pytest.approx((1e-4 + 0.02) / 2, rel=1e-5)
