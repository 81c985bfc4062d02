"""The article's SimpleUNet and its layers."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxddpm as jd
from jaxddpm.kernels import ConvPolicy
from jaxddpm.kernels import CONV_IMPLS, UPSAMPLE_IMPLS

TINY = dict(channels=(4, 8, 16), out_channels=3, time_emb_dim=8)


def count(tree):
    return sum(x.size for x in jax.tree.leaves(tree))


def test_full_model_has_the_articles_parameter_count():
    model = jd.SimpleUNet()
    variables = jax.eval_shape(
        lambda x, t: model.init(jax.random.key(0), x, t, train=False),
        jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32),
        jax.ShapeDtypeStruct((1,), jnp.int32),
    )
    assert count(variables["params"]) == 62_438_883


@pytest.mark.parametrize("impl", UPSAMPLE_IMPLS)
def test_tiny_model_output_shape_equals_input_shape(impl):
    model = jd.SimpleUNet(**TINY, conv_policy=ConvPolicy(upsample=impl))
    x = jnp.ones((2, 16, 16, 3))
    t = jnp.array([0, 299])
    variables = jax.jit(lambda k: model.init(k, x, t, train=False))(jax.random.key(0))
    y, updates = jax.jit(lambda v: model.apply(v, x, t, train=True, mutable=["batch_stats"]))(variables)
    assert y.shape == x.shape
    assert jax.jit(lambda v: model.apply(v, x, t, train=False))(variables).shape == x.shape
    assert jax.tree.structure(updates["batch_stats"]) == jax.tree.structure(variables["batch_stats"])


@pytest.mark.slow
def test_conv_impls_give_the_same_model_and_gradients():
    x = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
    t = jnp.array([3, 250])
    models = {impl: jd.SimpleUNet(**TINY, conv_policy=ConvPolicy(impl=impl)) for impl in CONV_IMPLS}
    variables = jax.jit(lambda k: models["xla"].init(k, x, t, train=False))(jax.random.key(0))
    grads = {}
    for impl, model in models.items():
        def loss(params):
            out, _ = model.apply({**variables, "params": params}, x, t, train=True, mutable=["batch_stats"])
            return jnp.mean(out**2)
        grads[impl] = jax.jit(jax.grad(loss))(variables["params"])  # compiled, as training runs it
    for impl in ("auto", "cpu"):
        chex.assert_trees_all_close(grads[impl], grads["xla"], atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="conv impl 'fast' is unknown; allowed: auto, xla, cpu"):
        ConvPolicy(impl="fast")
    with pytest.raises(ValueError, match="upsample impl 'nearest' is unknown; allowed: phases, subpixel, dilated"):
        ConvPolicy(upsample="nearest")


def test_sinusoidal_embedding_formula():
    t = jnp.array([0, 1, 7, 299])
    emb = jd.sinusoidal_embedding(t, 32)
    assert emb.shape == (4, 32)
    half = 16
    for row, tv in zip(np.asarray(emb), [0, 1, 7, 299]):
        freqs = [math.exp(-k * math.log(10000) / (half - 1)) for k in range(half)]
        expected = [math.sin(tv * f) for f in freqs] + [math.cos(tv * f) for f in freqs]
        np.testing.assert_allclose(row, expected, atol=5e-5)


def test_batchnorm_follows_pytorch_conventions():
    bn = jd.BatchNorm(momentum=0.1)
    x = jax.random.normal(jax.random.key(0), (4, 3, 3, 2)) * 3 + 1
    variables = bn.init(jax.random.key(1), x, train=True)
    chex.assert_trees_all_equal(variables["batch_stats"]["mean"], jnp.zeros(2))  # init does not update
    y, updates = bn.apply(variables, x, train=True, mutable=["batch_stats"])
    flat = np.asarray(x).reshape(-1, 2)
    n = flat.shape[0]
    np.testing.assert_allclose(updates["batch_stats"]["mean"], 0.1 * flat.mean(0), rtol=1e-5)
    np.testing.assert_allclose(updates["batch_stats"]["var"], 0.9 + 0.1 * flat.var(0) * n / (n - 1), rtol=1e-5)
    normalised = (flat - flat.mean(0)) / np.sqrt(flat.var(0) + 1e-5)
    np.testing.assert_allclose(np.asarray(y).reshape(-1, 2), normalised, atol=1e-5)


def test_model_runs_in_bfloat16_with_float32_params():
    model = jd.SimpleUNet(**TINY, dtype=jnp.bfloat16)
    x = jnp.ones((2, 16, 16, 3))
    variables = jax.jit(lambda k: model.init(k, x, jnp.array([1, 2]), train=False))(jax.random.key(0))
    assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(variables))
    y, _ = jax.jit(lambda v: model.apply(v, x, jnp.array([1, 2]), train=True, mutable=["batch_stats"]))(variables)
    assert y.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(y)))



def test_the_model_says_whether_its_training_steps_may_run_in_a_loop():
    """`jaxddpm train` runs train.steps_per_call steps per call only where the model's
    gradient convolutions stay fast inside a loop (on the CPU: the policy's CPU forms)."""
    from jaxddpm import config as config_lib, factory

    config = config_lib.load_config("flowers64")
    on_cpu = jax.default_backend() == "cpu"
    assert jd.SimpleUNet(**TINY).fast_in_loops()
    assert jd.SimpleUNet(**TINY, conv_policy=ConvPolicy(impl="xla")).fast_in_loops() == (not on_cpu)
    assert jd.DDPMUNet().fast_in_loops() == (not on_cpu)
    assert factory.steps_per_call(config, factory.build_model(config)) == config.train.steps_per_call == 8
    assert factory.steps_per_call(config, jd.DDPMUNet()) == (1 if on_cpu else 8)
