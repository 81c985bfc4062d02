"""DDIM, the extra schedules, x0/v prediction, min-SNR weighting, classifier-free guidance
and the residual U-Net."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxddpm as jd
from jaxddpm import diffusion
from jaxddpm.schedule import COSINE_MAX_BETA, COSINE_OFFSET
from jaxddpm.trainer import make_sampler
from jaxddpm.unet import DDPMUNet

SHAPE = (3, 8, 8, 2)


@pytest.fixture(scope="module")
def schedule():
    return jd.make_schedule("linear", 40, 1e-3, 0.2)


def fake_eps(x, t):
    """A smooth, t-dependent stand-in for a trained noise predictor."""
    return 0.5 * jnp.tanh(x) * (1.0 + t[:, None, None, None] / 40.0)


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


@pytest.mark.parametrize("prediction", diffusion.PREDICTIONS)
def test_prediction_targets_round_trip(schedule, prediction):
    k1, k2 = jax.random.split(jax.random.key(0))
    x0 = jax.random.uniform(k1, SHAPE, minval=-1, maxval=1)
    noise = jax.random.normal(k2, SHAPE)
    t = jnp.array([0, 17, 39])
    x_t = jd.q_sample(schedule, x0, t, noise)
    target = diffusion.prediction_target(schedule, prediction, x0, t, noise)
    x0_back, eps_back = diffusion.split_prediction(schedule, prediction, x_t, t, target)
    np.testing.assert_allclose(x0_back, x0, atol=2e-4)
    np.testing.assert_allclose(eps_back, noise, atol=2e-4)


def test_min_snr_weights(schedule):
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


def test_ddim_eta_one_full_steps_is_the_ancestral_step_in_mean_and_variance(schedule):
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


def test_ddim_eta_zero_is_deterministic_given_the_initial_noise(schedule):
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


def test_fewer_ddim_steps_trace_the_model_once(schedule):
    calls = []

    def eps_fn(x, t):
        calls.append(1)
        return fake_eps(x, t)

    run = jax.jit(lambda key: diffusion.ddim_sample(schedule, eps_fn, key, SHAPE, num_steps=7))
    a = run(jax.random.key(0))
    run(jax.random.key(1))
    assert len(calls) == 1 and a.shape == SHAPE and np.all(np.isfinite(a))


@pytest.fixture(scope="module")
def conditional_model():
    model = jd.SimpleUNet(channels=(4, 8), out_channels=2, time_emb_dim=8, num_classes=3)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 2)), jnp.zeros((1,), jnp.int32), False, jnp.zeros((1,), jnp.int32))
    # Make the label embedding matter: random, not small, values.
    emb = variables["params"]["label_emb"]["embedding"]
    variables = jax.tree.map(lambda x: x, variables)
    variables["params"]["label_emb"]["embedding"] = 3.0 * jax.random.normal(jax.random.key(1), emb.shape)
    return model, variables


def test_guidance_zero_and_one_are_the_unconditional_and_conditional_predictions(schedule, conditional_model):
    model, variables = conditional_model
    labels = jnp.array([0, 2, 1])
    key = jax.random.key(4)
    uncond = jd.sample(schedule, lambda x, t: model.apply(variables, x, t, False), key, SHAPE)
    cond = jd.sample(schedule, lambda x, t: model.apply(variables, x, t, False, labels), key, SHAPE)
    assert not np.allclose(uncond, cond, atol=1e-3)
    g0 = make_sampler(model, schedule, SHAPE, guidance=0.0)(variables, key, labels)
    g1 = make_sampler(model, schedule, SHAPE, guidance=1.0)(variables, key, labels)
    g3 = make_sampler(model, schedule, SHAPE, guidance=3.0)(variables, key, labels)
    np.testing.assert_allclose(g0, uncond, atol=1e-4)
    np.testing.assert_allclose(g1, cond, atol=1e-4)
    assert not np.allclose(g3, cond, atol=1e-3)


def test_ddpm_unet_shapes_dropout_and_conditioning():
    model = DDPMUNet(out_channels=2, base_channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(4,), dropout=0.5, norm_groups=4, num_classes=2)
    x, t, y = jnp.ones((2, 8, 8, 2)), jnp.array([3, 7]), jnp.array([0, 1])
    variables = model.init(jax.random.key(0), x, t, False, y)
    names = set(variables["params"])
    assert {"down_1_attn_0", "up_1_attn_0", "mid_attn"} <= names and not {"down_0_attn_0", "up_0_attn_0"} & names  # 4x4 only
    out = model.apply(variables, x, t, False, y)
    assert out.shape == (2, 8, 8, 2)
    np.testing.assert_array_equal(out, 0.0)  # the output convolution starts at zero
    # Perturb the output layer so outputs depend on the inputs, then check dropout and labels.
    params = jax.tree.map(lambda p: p + 0.1, variables["params"])
    train = [model.apply({"params": params}, x, t, True, y, rngs={"dropout": jax.random.key(k)}) for k in (1, 2)]
    assert not np.allclose(train[0], train[1])
    evals = [model.apply({"params": params}, x, t, False, y) for _ in range(2)]
    np.testing.assert_array_equal(evals[0], evals[1])
    assert not np.allclose(model.apply({"params": params}, x, t, False, 1 - y), evals[0])


def test_a_conditional_model_learns_to_separate_two_classes():
    """Class 0: bright top half; class 1: bright bottom half. After training, samples drawn
    for each label must show their class's bright half (a simple classifier on samples)."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 512).astype(np.int32)
    images = np.full((512, 8, 8, 1), -0.8, np.float32)
    images[labels == 0, :4] = 0.8
    images[labels == 1, 4:] = 0.8
    images += rng.normal(0, 0.05, images.shape).astype(np.float32)

    schedule = jd.make_schedule("linear", 50, 1e-3, 0.2)
    model = jd.SimpleUNet(channels=(16, 32), out_channels=1, time_emb_dim=16, num_classes=2)
    tx = optax.adam(2e-3)
    state = jd.create_train_state(model, tx, jax.random.key(0), (8, 8, 1))
    step = jax.jit(
        lambda s, i, k: jd.train_step(
            s, jnp.asarray(images)[i], k, model=model, tx=tx, schedule=schedule, ema_decay=0.9,
            labels=jnp.asarray(labels)[i], label_dropout=0.1,
        )
    )
    key = jax.random.key(1)
    for n in range(400):
        state, _ = step(state, rng.integers(0, 512, 32), key)
    wanted = jnp.array([0, 1] * 16)
    sampler = make_sampler(model, schedule, (32, 8, 8, 1), guidance=2.0)
    samples = np.asarray(sampler({"params": state.params, "batch_stats": state.batch_stats}, jax.random.key(2), wanted))
    predicted = (samples[:, 4:].mean(axis=(1, 2, 3)) > samples[:, :4].mean(axis=(1, 2, 3))).astype(int)
    accuracy = np.mean(predicted == np.asarray(wanted))
    assert accuracy >= 0.9, accuracy


def test_every_option_end_to_end_from_the_command_line(tmp_path, capsys):
    from jaxddpm import cli
    from tests.helpers import tiny_argv

    workdir = str(tmp_path / "run")
    options = dict(
        model__name="ddpm_unet", model__base_channels="8", model__channel_mult="(1, 2)", model__num_res_blocks="1",
        model__attention_resolutions="(4,)", model__norm_groups="4", model__num_classes="10",
        diffusion__schedule="cosine", diffusion__prediction="v", diffusion__min_snr_gamma="5.0",
        sample__sampler="ddim", sample__steps="4", sample__guidance="2.0",
    )
    assert cli.main(["train", "--workdir", workdir, *tiny_argv(**options)]) == 0
    out = str(tmp_path / "seven.png")
    argv = ["sample", "--workdir", workdir, "--num", "4", "--sampler", "ddim", "--steps", "5", "--guidance", "3.0", "--label", "7", "--out", out]
    assert cli.main(argv) == 0
    saved = np.load(out.replace(".png", ".npz"))
    assert saved["samples"].shape == (4, 8, 8, 1) and saved["labels"].tolist() == [7] * 4
    assert cli.main(["sample", "--workdir", workdir, "--num", "2", "--sampler", "ancestral", "--out", str(tmp_path / "a.png")]) == 0
    capsys.readouterr()
    assert cli.main(["sample", "--workdir", workdir, "--sampler", "ddim", "--steps", "500", "--out", str(tmp_path / "b.png")]) == 2
    assert capsys.readouterr().err.strip() == "error: --steps=500 must lie in [1, 10] (diffusion.num_timesteps)"
    assert cli.main(["sample", "--workdir", workdir, "--label", "10", "--out", str(tmp_path / "c.png")]) == 2
    assert "must lie in [0, 10)" in capsys.readouterr().err
    assert not (tmp_path / "b.png").exists() and not (tmp_path / "c.png").exists()


def test_a_conditional_model_needs_labelled_data(tmp_path, capsys):
    from jaxddpm import cli
    from tests.helpers import tiny_argv

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(10):
        from PIL import Image

        Image.fromarray(np.full((8, 8), 20 * i, np.uint8)).save(folder / f"{i}.png")
    argv = tiny_argv(data__source="folder", data__holdout=0, data__path=str(folder), model__num_classes="3")
    assert cli.main(["train", "--workdir", str(tmp_path / "run"), *argv]) == 2
    assert "model.num_classes=3 needs labels in [0, 3) but the dataset has no labels; set model.num_classes=0" in capsys.readouterr().err
