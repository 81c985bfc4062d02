"""The residual U-Net (`jaxddpm.DDPMUNet`, jaxddpm/models/ddpm_unet.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxddpm.models import DDPMUNet


@pytest.mark.slow
def test_ddpm_unet_shapes_dropout_and_conditioning():
    # With the time and class embedding as a scale and shift of each block's second GroupNorm.
    model = DDPMUNet(out_channels=2, base_channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(4,), dropout=0.5,
                     norm_groups=4, num_classes=2, time_scale_shift=True)
    x, t, y = jnp.ones((2, 8, 8, 2)), jnp.array([3, 7]), jnp.array([0, 1])
    # Compiled: op by op, this model's few forward passes took most of the test's time.
    variables = jax.jit(lambda k: model.init(k, x, t, False, y))(jax.random.key(0))
    names = set(variables["params"])
    assert {"down_1_attn_0", "up_1_attn_0", "mid_attn"} <= names and not {"down_0_attn_0", "up_0_attn_0"} & names  # 4x4 only
    assert "up_1_resample" in names
    no_conv = model.clone(upsample_conv=False)
    assert "up_1_resample" not in jax.eval_shape(lambda k: no_conv.init(k, x, t, False, y), jax.random.key(0))["params"]
    apply_eval = jax.jit(lambda params, labels: model.apply({"params": params}, x, t, False, labels))
    apply_train = jax.jit(lambda params, key: model.apply({"params": params}, x, t, True, y, rngs={"dropout": key}))
    out = apply_eval(variables["params"], y)
    assert out.shape == (2, 8, 8, 2)
    np.testing.assert_array_equal(out, 0.0)  # the output convolution starts at zero
    # Perturb the output layer so outputs depend on the inputs, then check dropout and labels.
    params = jax.tree.map(lambda p: p + 0.1, variables["params"])
    train = [apply_train(params, jax.random.key(k)) for k in (1, 2)]
    assert not np.allclose(train[0], train[1])
    evals = [apply_eval(params, y) for _ in range(2)]
    np.testing.assert_array_equal(evals[0], evals[1])
    assert not np.allclose(apply_eval(params, 1 - y), evals[0])
    # jvp_compatible (Flax's GroupNorm, the scale and shift applied after it): the same
    # function, and forward-mode autodiff works through it.
    forward = model.clone(jvp_compatible=True)
    out, tangent = jax.jit(lambda params, x: jax.jvp(lambda x: forward.apply({"params": params}, x, t, False, y), (x,), (x,)))(params, x)
    np.testing.assert_allclose(out, evals[0], rtol=1e-5, atol=1e-5)
    assert tangent.shape == x.shape and np.all(np.isfinite(tangent)) and np.abs(tangent).max() > 0


def test_group_norm_matches_flax_in_value_and_gradient():
    """`jaxddpm.models.GroupNorm` computes flax.linen.GroupNorm's function and gradients
    (float64: to rounding; float32: to a few units in the last place), also with a per-sample
    scale and shift folded in, keeps bfloat16 compute with float32 statistics, and names what
    is wrong with a bad input."""
    import flax.linen as nn

    from jaxddpm.models import GroupNorm

    def compare(dtype, groups, shape, rtol, modulated=False):
        ours = GroupNorm(groups, epsilon=1e-5, dtype=dtype, param_dtype=dtype)
        theirs = nn.GroupNorm(groups, epsilon=1e-5, dtype=dtype, param_dtype=dtype)
        kx, ks, kb, kd, km = jax.random.split(jax.random.key(groups), 5)
        x = (3.0 * jax.random.normal(kx, shape) + 2.0).astype(dtype)  # an offset mean tests the variance formula
        params = {"scale": jax.random.normal(ks, shape[-1:], dtype), "bias": jax.random.normal(kb, shape[-1:], dtype)}
        dy = jax.random.normal(kd, shape, dtype)
        mod = tuple(jax.random.normal(km, (2, shape[0], shape[-1]), dtype)) if modulated else ()

        def run(module):
            if not modulated:
                f = jax.jit(lambda p, x: module.apply({"params": p}, x))
            elif module is ours:
                f = jax.jit(lambda p, x, s, b: module.apply({"params": p}, x, modulation=(s, b)))
            else:
                f = jax.jit(lambda p, x, s, b: module.apply({"params": p}, x) * (1 + s[:, None, None]) + b[:, None, None])
            y, vjp = jax.vjp(f, params, x, *mod)
            return (y, *jax.tree.leaves(vjp(dy)))

        for a, b in zip(run(ours), run(theirs), strict=True):
            assert a.dtype == b.dtype == dtype
            np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * float(jnp.abs(b).max()))
        with pytest.raises(TypeError, match="forward-mode"):  # the written-out gradient: reverse mode only
            jax.jvp(lambda x: ours.apply({"params": params}, x), (x,), (dy,))

    compare(jnp.float32, 16, (2, 4, 4, 16), 2e-5)  # one channel per group, as in the quickstart
    with jax.enable_x64(True):
        compare(jnp.float64, 2, (2, 4, 4, 8), 1e-12)  # groups of 4 channels
        compare(jnp.float64, 2, (3, 4, 4, 8), 1e-12, modulated=True)
    x = jnp.linspace(-1, 1, 2 * 4 * 4 * 8).reshape(2, 4, 4, 8)
    y, _ = GroupNorm(4, dtype=jnp.bfloat16).init_with_output(jax.random.key(0), x.astype(jnp.bfloat16))
    assert y.dtype == jnp.bfloat16
    with pytest.raises(ValueError, match=r"divisible by num_groups=3, got shape \(2, 4, 4, 8\)"):
        GroupNorm(3).init(jax.random.key(0), x)
    with pytest.raises(ValueError, match=r"modulation needs two arrays of shape \(2, 8\) \(samples, channels\), got \[\(8,\), \(2, 8\)\]"):
        GroupNorm(4).init(jax.random.key(0), x, modulation=(jnp.ones(8), jnp.ones((2, 8))))
