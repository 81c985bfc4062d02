import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxddpm as jd
from jaxddpm import diffusion


@pytest.fixture(scope="module")
def schedule():
    return jd.make_schedule()


def test_q_sample_moments_over_many_draws(schedule):
    n = 200_000
    x0 = jnp.array([0.7, -0.3])[None, :, None, None] * jnp.ones((n, 2, 1, 1))
    t = jnp.full((n,), 150)
    x_t = jd.q_sample(schedule, x0, t, jax.random.normal(jax.random.key(0), x0.shape))
    mean, var = np.asarray(x_t.mean(0))[:, 0, 0], np.asarray(x_t.var(0))[:, 0, 0]
    a = float(schedule.sqrt_alphas_cumprod[150])
    np.testing.assert_allclose(mean, a * np.array([0.7, -0.3]), atol=5 * np.sqrt(1 / n))
    np.testing.assert_allclose(var, 1 - a**2, rtol=0.02)


def test_predict_x0_from_eps_inverts_q_sample(schedule):
    k1, k2 = jax.random.split(jax.random.key(1))
    x0 = jax.random.uniform(k1, (4, 8, 8, 3), minval=-1, maxval=1)
    noise = jax.random.normal(k2, x0.shape)
    t = jnp.array([0, 5, 150, 299])
    x_t = jd.q_sample(schedule, x0, t, noise)
    chex.assert_trees_all_close(jd.predict_x0_from_eps(schedule, x_t, t, noise), x0, atol=2e-4)


def test_posterior_mean_given_true_x0_equals_reverse_mean_given_true_eps(schedule):
    """With the true noise, the DDPM reverse mean is the posterior mean."""
    k1, k2 = jax.random.split(jax.random.key(2))
    x0 = jax.random.uniform(k1, (3, 4, 4, 1), minval=-1, maxval=1)
    noise = jax.random.normal(k2, x0.shape)
    t = jnp.array([1, 100, 299])
    x_t = jd.q_sample(schedule, x0, t, noise)
    mean, _, _ = jd.q_posterior(schedule, x0, x_t, t)
    chex.assert_trees_all_close(jd.p_mean(schedule, noise, x_t, t), mean, atol=1e-5)


def test_p_sample_step_adds_no_noise_at_t0(schedule):
    x = jnp.ones((2, 4, 4, 3))
    eps = 0.5 * x
    t = jnp.array([0, 0])
    a = jd.p_sample_step(schedule, eps, x, t, jnp.zeros_like(x))
    b = jd.p_sample_step(schedule, eps, x, t, 100.0 * jnp.ones_like(x))
    chex.assert_trees_all_equal(a, b)


def test_p_sample_step_adds_posterior_std_noise_elsewhere(schedule):
    x = jnp.ones((2, 4, 4, 3))
    t = jnp.array([0, 10])
    noise = jnp.ones_like(x)
    moved = jd.p_sample_step(schedule, 0 * x, x, t, noise) - jd.p_sample_step(schedule, 0 * x, x, t, 0 * noise)
    np.testing.assert_allclose(moved[0], 0.0)
    # The difference of two order-1 float32 values: exact to about one ulp of 1.0.
    np.testing.assert_allclose(moved[1], np.sqrt(schedule.posterior_variance[10]), rtol=0, atol=2.4e-7)


def test_p_sample_step_variance_and_clipping_options(schedule):
    """fixed_large adds beta_t-scaled noise; clip_x0 takes the posterior mean of the clipped
    x0 prediction, which is the article's mean wherever the prediction lies in [-1, 1]."""
    k1, k2, k3 = jax.random.split(jax.random.key(3), 3)
    x0 = jax.random.uniform(k1, (3, 4, 4, 1), minval=-0.9, maxval=0.9)
    eps, noise = jax.random.normal(k2, x0.shape), jax.random.normal(k3, x0.shape)
    t = jnp.array([0, 40, 250])
    x_t = jd.q_sample(schedule, x0, t, eps)
    plain = jd.p_sample_step(schedule, eps, x_t, t, noise)
    # Predictions inside [-1, 1]: clipping changes nothing but the rounding.
    chex.assert_trees_all_close(jd.p_sample_step(schedule, eps, x_t, t, noise, clip_x0=True), plain, atol=1e-5)
    large = jd.p_sample_step(schedule, eps, x_t, t, noise, variance="fixed_large")
    expected = jd.p_mean(schedule, eps, x_t, t) + jnp.sqrt(schedule.betas[t])[:, None, None, None] * noise
    chex.assert_trees_all_close(large[1:], expected[1:], atol=1e-6)
    chex.assert_trees_all_equal(large[0], plain[0])  # no noise at t = 0 either way
    # A prediction outside [-1, 1]: the mean given the clipped x0.
    far = x_t + 5.0
    x0_pred = jnp.clip(jd.predict_x0_from_eps(schedule, far, t, eps), -1.0, 1.0)
    mean = jd.q_posterior(schedule, x0_pred, far, t)[0]
    clipped = jd.p_sample_step(schedule, eps, far, t, noise, clip_x0=True)
    chex.assert_trees_all_close(clipped[0], mean[0], atol=1e-6)
    assert float(jnp.abs(clipped - jd.p_sample_step(schedule, eps, far, t, noise)).max()) > 0.1
    with pytest.raises(ValueError, match="variance 'learned' is unknown; allowed: fixed_small, fixed_large"):
        jd.p_sample_step(schedule, eps, x_t, t, noise, variance="learned")


def test_loss_is_mse_of_noise_prediction(schedule):
    x0 = jnp.zeros((2, 2, 2, 1))
    noise = jnp.ones_like(x0)
    loss = jd.diffusion_loss(schedule, lambda x_t, t: 0.5 * noise, x0, jnp.array([3, 4]), noise)
    assert float(loss) == pytest.approx(0.25)


def test_functions_are_vmap_safe(schedule):
    x0 = jnp.ones((5, 4, 4, 1))
    t = jnp.arange(5)
    noise = jnp.full(x0.shape, 0.3)
    batched = jd.q_sample(schedule, x0, t, noise)
    per_example = jax.vmap(lambda x, t_, n: jd.q_sample(schedule, x[None], t_[None], n[None])[0])(x0, t, noise)
    chex.assert_trees_all_close(batched, per_example)


def _toy_eps(x, t):
    return 0.1 * x + 0.001 * t[:, None, None, None].astype(x.dtype)


def test_sample_shape_finite_and_traces_once():
    schedule = jd.make_schedule(num_timesteps=20)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def run(key):
        return jd.sample(schedule, _toy_eps, key, (3, 8, 8, 2))

    for seed in range(3):
        x = run(jax.random.key(seed))
        assert x.shape == (3, 8, 8, 2)
        assert bool(jnp.all(jnp.isfinite(x)))


def test_sample_is_one_scan_not_a_host_loop():
    schedule = jd.make_schedule(num_timesteps=20)
    calls = []

    def eps(x, t):
        calls.append(1)  # runs once per trace, never per step
        return _toy_eps(x, t)

    jax.jit(lambda k: jd.sample(schedule, eps, k, (1, 4, 4, 1)))(jax.random.key(0))
    assert len(calls) == 1


def test_sample_trajectory_records_requested_steps():
    schedule = jd.make_schedule(num_timesteps=20)
    key = jax.random.key(3)
    final, traj = jax.jit(lambda k: jd.sample(schedule, _toy_eps, k, (2, 4, 4, 1), trajectory_steps=(20, 10, 0)))(key)
    assert traj.shape == (3, 2, 4, 4, 1)
    chex.assert_trees_all_equal(traj[2], final)
    init_key, _ = jax.random.split(key)
    chex.assert_trees_all_equal(traj[0], jax.random.normal(init_key, (2, 4, 4, 1)))
    assert not np.allclose(traj[1], traj[0])


def test_sample_matches_a_python_loop_of_steps():
    schedule = jd.make_schedule(num_timesteps=10)
    key = jax.random.key(4)
    shape = (2, 4, 4, 1)
    init_key, step_key = jax.random.split(key)
    x = jax.random.normal(init_key, shape)
    for i in reversed(range(10)):
        t = jnp.full((2,), i)
        x = jd.p_sample_step(schedule, _toy_eps(x, t), x, t, jax.random.normal(jax.random.fold_in(step_key, i), shape))
    chex.assert_trees_all_close(jd.sample(schedule, _toy_eps, key, shape), x, atol=1e-6)


def test_sample_rejects_trajectory_steps_out_of_range():
    with pytest.raises(ValueError, match="trajectory step 11 is outside"):
        jd.sample(jd.make_schedule(num_timesteps=10), _toy_eps, jax.random.key(0), (1, 2, 2, 1), trajectory_steps=[11])


# DDIM, x0 and v prediction and min-SNR weighting, on a short schedule with a smooth
# stand-in for a trained noise predictor.
SHAPE = (3, 8, 8, 2)


@pytest.fixture(scope="module")
def short_schedule():
    return jd.make_schedule("linear", 40, 1e-3, 0.2)


def fake_eps(x, t):
    """A smooth, t-dependent stand-in for a trained noise predictor."""
    return 0.5 * jnp.tanh(x) * (1.0 + t[:, None, None, None] / 40.0)


@pytest.mark.parametrize("prediction", diffusion.PREDICTIONS)
def test_prediction_targets_round_trip(short_schedule, prediction):
    schedule = short_schedule
    k1, k2 = jax.random.split(jax.random.key(0))
    x0 = jax.random.uniform(k1, SHAPE, minval=-1, maxval=1)
    noise = jax.random.normal(k2, SHAPE)
    t = jnp.array([0, 17, 39])
    x_t = jd.q_sample(schedule, x0, t, noise)
    target = diffusion.prediction_target(schedule, prediction, x0, t, noise)
    x0_back, eps_back = diffusion.split_prediction(schedule, prediction, x_t, t, target)
    np.testing.assert_allclose(x0_back, x0, atol=2e-4)
    np.testing.assert_allclose(eps_back, noise, atol=2e-4)


def test_min_snr_weights(short_schedule):
    schedule = short_schedule
    t = jnp.arange(40)
    ratio = np.asarray(diffusion.snr(schedule, t))
    for prediction, expected in [
        ("eps", np.minimum(ratio, 5) / ratio),
        ("x0", np.minimum(ratio, 5)),
        ("v", np.minimum(ratio, 5) / (ratio + 1)),
    ]:
        np.testing.assert_allclose(diffusion.min_snr_weights(schedule, t, prediction, 5.0), expected, rtol=1e-5)
    # A gamma above every SNR leaves noise prediction unweighted: the article's loss.
    x0, noise, out = (jax.random.normal(jax.random.key(i), SHAPE) for i in range(3))
    tt = jnp.array([1, 5, 30])
    plain = diffusion.prediction_loss(schedule, out, x0, tt, noise)
    assert float(plain) == float(jd.noise_mse(noise, out))
    huge = diffusion.prediction_loss(schedule, out, x0, tt, noise, min_snr_gamma=1e9)
    np.testing.assert_allclose(huge, plain, rtol=1e-6)


def test_ddim_timesteps():
    assert diffusion.ddim_timesteps(300, 300).tolist() == list(range(299, -1, -1))
    ts = diffusion.ddim_timesteps(300, 50)
    assert len(ts) == 50 and ts[0] == 299 and ts[-1] == 0 and np.all(np.diff(ts) < 0)
    with pytest.raises(ValueError, match="DDIM steps must lie in"):
        diffusion.ddim_timesteps(300, 301)


def test_ddim_eta_one_full_steps_is_the_ancestral_step_in_mean_and_variance(short_schedule):
    schedule = short_schedule
    x = jax.random.normal(jax.random.key(1), SHAPE)
    t = jnp.array([1, 20, 39])
    eps = fake_eps(x, t)
    zero, noise = jnp.zeros(SHAPE), jax.random.normal(jax.random.key(2), SHAPE)
    mean = diffusion.ddim_step(schedule, x, t, t - 1, eps, zero, eta=1.0)
    np.testing.assert_allclose(mean, jd.p_mean(schedule, eps, x, t), atol=1e-5)
    std = (diffusion.ddim_step(schedule, x, t, t - 1, eps, noise, eta=1.0) - mean) / noise
    expected = np.sqrt(np.asarray(schedule.posterior_variance)[np.asarray(t)])[:, None, None, None]
    np.testing.assert_allclose(std, np.broadcast_to(expected, SHAPE), rtol=1e-3)
    # Whole chains: with the same key, DDIM(T steps, eta = 1) retraces the ancestral sampler.
    key = jax.random.key(3)
    ancestral = jd.sample(schedule, fake_eps, key, SHAPE)
    ddim = diffusion.ddim_sample(schedule, fake_eps, key, SHAPE, num_steps=40, eta=1.0)
    np.testing.assert_allclose(ddim, ancestral, atol=1e-4)


def test_ddim_eta_zero_is_deterministic_given_the_initial_noise(short_schedule):
    schedule = short_schedule
    x = jax.random.normal(jax.random.key(1), SHAPE)
    t, t_prev = jnp.array([39, 20, 5]), jnp.array([30, 10, -1])
    eps = fake_eps(x, t)
    a = diffusion.ddim_step(schedule, x, t, t_prev, eps, jax.random.normal(jax.random.key(5), SHAPE), eta=0.0)
    b = diffusion.ddim_step(schedule, x, t, t_prev, eps, jax.random.normal(jax.random.key(6), SHAPE), eta=0.0)
    np.testing.assert_array_equal(a, b)
    # Same initial noise, different keys (so different step noise): the same chain result.
    x_T = jax.random.normal(jax.random.key(7), SHAPE)
    run = lambda k, eta: diffusion.ddim_sample(schedule, fake_eps, jax.random.key(k), SHAPE, num_steps=10, eta=eta, x_T=x_T)  # noqa: E731
    np.testing.assert_array_equal(run(8, 0.0), run(9, 0.0))
    assert not np.allclose(run(8, 1.0), run(9, 1.0))  # with eta = 1 the step noise matters


def test_fewer_ddim_steps_trace_the_model_once(short_schedule):
    schedule = short_schedule
    calls = []

    def eps_fn(x, t):
        calls.append(1)
        return fake_eps(x, t)

    run = jax.jit(lambda key: diffusion.ddim_sample(schedule, eps_fn, key, SHAPE, num_steps=7))
    a = run(jax.random.key(0))
    run(jax.random.key(1))
    assert len(calls) == 1 and a.shape == SHAPE and np.all(np.isfinite(a))
