import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxddpm as jd

TINY = dict(channels=(8, 16, 32), out_channels=1, time_emb_dim=16)


@pytest.fixture(scope="module")
def setup():
    model = jd.SimpleUNet(**TINY)
    tx = jd.make_optimizer(1e-3)
    schedule = jd.make_schedule(num_timesteps=50)
    state = jd.create_train_state(model, tx, jax.random.key(0), (16, 16, 1))
    x = jnp.where(jnp.arange(16)[:, None] < 8, 1.0, -1.0)  # a fixed two-tone image
    batch = jnp.broadcast_to(x[None, :, :, None], (8, 16, 16, 1))
    return model, tx, schedule, state, batch


def test_loss_falls_on_a_fixed_batch(setup):
    model, tx, schedule, state, batch = setup
    step = jd.jit_train_step(model, tx, schedule, ema_decay=0.99)
    # A fixed evaluation draw of timesteps and noise, so the loss is comparable over time.
    t_eval = jnp.arange(batch.shape[0]) * (schedule.num_timesteps // batch.shape[0])
    noise_eval = jax.random.normal(jax.random.key(9), batch.shape)

    @jax.jit
    def eval_loss(state):
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        eps_fn = lambda x, t: model.apply(variables, x, t, train=True, mutable=["batch_stats"])[0]  # noqa: E731
        return jd.diffusion_loss(schedule, eps_fn, batch, t_eval, noise_eval)

    state = jax.tree.map(jnp.copy, state)
    before = float(eval_loss(state))
    key = jax.random.key(1)
    for _ in range(50):
        state, metrics = step(state, batch, key)
        assert np.isfinite(float(metrics["loss"]))
    after = float(eval_loss(state))
    # Deterministic evaluation: measured 1.20 -> 0.83 with these seeds; require a clear drop.
    assert after < 0.75 * before, (before, after)
    assert int(state.step) == 50


def test_step_counter_and_ema_follow_their_formulas(setup):
    model, tx, schedule, state, batch = setup
    state = jax.tree.map(jnp.copy, state)
    decay = 0.9
    new, metrics = jd.train_step(state, batch, jax.random.key(2), model=model, tx=tx, schedule=schedule, ema_decay=decay)
    assert int(new.step) == int(state.step) + 1
    expected = jax.tree.map(lambda e, p: decay * e + (1 - decay) * p, state.ema_params, new.params)
    chex.assert_trees_all_close(new.ema_params, expected, atol=1e-7)
    assert set(metrics) == {"loss", "grad_norm"}
    # Parameters and BatchNorm statistics both moved.
    assert not np.allclose(new.params["final_conv"]["kernel"], state.params["final_conv"]["kernel"])
    assert not np.allclose(new.batch_stats["down_blocks_0"]["bn1"]["mean"], state.batch_stats["down_blocks_0"]["bn1"]["mean"])


def test_train_step_randomness_comes_from_key_and_step(setup):
    model, tx, schedule, state, batch = setup
    kw = dict(model=model, tx=tx, schedule=schedule, ema_decay=0.9)
    a, ma = jd.train_step(state, batch, jax.random.key(3), **kw)
    b, mb = jd.train_step(state, batch, jax.random.key(3), **kw)
    c, mc = jd.train_step(state, batch, jax.random.key(4), **kw)
    assert float(ma["loss"]) == float(mb["loss"])
    assert float(ma["loss"]) != float(mc["loss"])


def test_train_step_compiles_once(setup):
    model, tx, schedule, state, batch = setup
    @chex.assert_max_traces(n=1)
    def traced(state, batch, key):
        return jd.train_step(state, batch, key, model=model, tx=tx, schedule=schedule, ema_decay=0.9)

    step = jax.jit(traced, donate_argnums=0)
    state = jax.tree.map(jnp.copy, state)
    for i in range(3):
        state, _ = step(state, batch + i, jax.random.key(5))
    assert int(state.step) == 3


@pytest.mark.parametrize("conditional", [False, True], ids=["unconditional", "labels"])
def test_train_steps_loop_equals_single_steps(setup, conditional):
    """jit_train_steps over a stack of S batches ends where S calls of jit_train_step do,
    with the same per-step metrics, in one dispatch."""
    model, tx, schedule, state, batch = setup
    kw = {}
    if conditional:
        model = jd.SimpleUNet(**TINY, num_classes=3)
        state = jd.create_train_state(model, tx, jax.random.key(0), (16, 16, 1))
        kw = dict(label_dropout=0.5)
    batches = jnp.stack([batch * (1.0 - 0.2 * i) for i in range(3)])
    labels = jnp.arange(3 * 8, dtype=jnp.int32).reshape(3, 8) % 3 if conditional else None
    key = jax.random.key(6)
    one = jax.jit(lambda s, b, lab: jd.train_step(s, b, key, model=model, tx=tx, schedule=schedule, ema_decay=0.9,
                                                   labels=lab, **kw))
    expected, losses = jax.tree.map(jnp.copy, state), []
    for i in range(3):
        expected, m = one(expected, batches[i], None if labels is None else labels[i])
        losses.append(float(m["loss"]))
    got, metrics = jax.jit(lambda s, b, lab: jd.train_steps(s, b, key, model=model, tx=tx, schedule=schedule,
                                                            ema_decay=0.9, labels=lab, **kw))(state, batches, labels)
    assert metrics["loss"].shape == (3,) and metrics["grad_norm"].shape == (3,)
    np.testing.assert_allclose(metrics["loss"], losses, rtol=1e-5)
    assert int(got.step) == 3
    chex.assert_trees_all_close(got, expected, rtol=1e-4, atol=1e-6)
    if not conditional:  # the compiled, donating wrapper runs the same loop
        donated, _ = jd.jit_train_steps(model, tx, schedule, ema_decay=0.9)(jax.tree.map(jnp.copy, state), batches, key)
        chex.assert_trees_all_close(donated, got, rtol=1e-5, atol=1e-7)
