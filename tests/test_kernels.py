"""jaxddpm.kernels: every convolution form against XLA's and a plain definition."""

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxddpm as jd
from jaxddpm.kernels import ConvPolicy, make_conv_general_dilated, winograd
from jaxddpm.kernels import UPSAMPLE_IMPLS

TINY = dict(channels=(4, 8, 16), out_channels=3, time_emb_dim=8)


def test_upsample_implementations_agree():
    k1, k2 = jax.random.split(jax.random.key(0))
    x = jax.random.normal(k1, (2, 5, 7, 6))
    kernel = jax.random.normal(k2, (4, 4, 6, 5))
    outs = [jd.conv_transpose_4x4_s2(x, kernel, ConvPolicy(upsample=impl)) for impl in UPSAMPLE_IMPLS]
    for out in outs:
        assert out.shape == (2, 10, 14, 5)
        chex.assert_trees_all_close(out, outs[0], atol=1e-5)


def test_conv_transpose_matches_a_scatter_definition():
    """y[2i - 1 + a, 2j - 1 + b] += x[i, j] @ K[a, b], cropped to 2H x 2W."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 3, 4, 2))
    k = rng.standard_normal((4, 4, 2, 3))
    full = np.zeros((1, 3 * 2 + 2, 4 * 2 + 2, 3))
    for i in range(3):
        for j in range(4):
            for a in range(4):
                for b in range(4):
                    full[0, 2 * i + a, 2 * j + b] += x[0, i, j] @ k[a, b]
    expected = full[:, 1:-1, 1:-1]
    for impl in UPSAMPLE_IMPLS:
        got = jd.conv_transpose_4x4_s2(jnp.asarray(x, jnp.float32), jnp.asarray(k, jnp.float32), ConvPolicy(upsample=impl))
        np.testing.assert_allclose(got, expected, atol=1e-5, err_msg=impl)


@pytest.mark.parametrize("case,input_grad", [
    ("3x3", "taps"), ("3x3", "winograd"), ("3x3", "xla-input-grad"), ("3x3", "winograd-kernel-grad"),
    ("4x4-stride2", "phases"), ("4x4-stride2", "gemm"),
])
def test_cpu_convolution_gradients_equal_autodiff(case, input_grad):
    """The hand-written input/kernel gradients of the "cpu" policy equal XLA's autodiff."""
    winograd_channels = 1 if input_grad == "winograd" else ConvPolicy.winograd_min_channels  # also for few channels
    policy = ConvPolicy(
        impl="cpu",
        taps_min_weights=1 if input_grad == "taps" else 2**40,
        s2_gemm_max_pixels=2**40 if input_grad == "gemm" else 0,
        winograd_min_channels=winograd_channels,
        winograd_input_grad_min_channels=winograd_channels,
        # the Winograd kernel gradient (with XLA's input gradient) only in its own case
        winograd_kernel_grad_pixels=(1, 2**40) if input_grad == "winograd-kernel-grad" else (0, 0),
        winograd_kernel_grad_min_weights=1,
    )
    size, strides = ((3, 3), (1, 1)) if case == "3x3" else ((4, 4), (2, 2))
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(k1, (2, 8, 6, 5))
    kernel = jax.random.normal(k2, (*size, 5, 7))
    out_shape = jax.eval_shape(lambda: jax.lax.conv_general_dilated(x, kernel, strides, ((1, 1), (1, 1)),
                                                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))).shape
    cotangent = jax.random.normal(k3, out_shape)
    results = {}
    for impl in ("xla", "cpu"):
        conv = make_conv_general_dilated(policy if impl == "cpu" else ConvPolicy(impl="xla"))
        f = lambda x, k: conv(x, k, strides, ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))  # noqa: E731
        y, vjp = jax.vjp(f, x, kernel)
        results[impl] = (y, *vjp(cotangent))
    assert results["cpu"][0].shape == out_shape
    chex.assert_trees_all_close(results["cpu"], results["xla"], atol=1e-4, rtol=1e-5)
    jaxpr = str(jax.make_jaxpr(jax.grad(lambda x: jnp.sum(make_conv_general_dilated(policy)(
        x, kernel, strides, ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")))))(x))
    # the taps / Winograd / one-product form must really have run (and only it)
    assert ("dot_general" in jaxpr) == (input_grad in ("taps", "winograd", "gemm", "winograd-kernel-grad")), jaxpr
    if case == "3x3":  # differentiated: the forward pass is XLA's convolution, not Winograd
        loss = lambda x, k: jnp.sum(f(x, k) ** 2)  # noqa: E731
        hlo = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(x, kernel).compile().as_text()
        # forward, + the input gradient unless the taps or Winograd form ran, + the kernel
        # gradient unless its Winograd form ran
        expected = 1 + (input_grad in ("xla-input-grad", "winograd-kernel-grad")) + (input_grad != "winograd-kernel-grad")
        assert hlo.count(" convolution(") == expected, hlo


@pytest.mark.parametrize("shape", [(2, 8, 8, 5, 7), (1, 7, 5, 3, 4), (3, 32, 32, 6, 2), (1, 3, 3, 2, 2)])
def test_winograd_convolution_equals_xla(shape):
    """F(2x2, 3x3) Winograd (the "cpu" policy outside differentiation, up to 32x32 pixels and
    from 64 channels), odd sizes included, its flipped form (the input gradient) and its
    kernel gradient, against XLA."""
    b, h, w, c, o = shape
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(k1, (b, h, w, c))
    kernel = jax.random.normal(k2, (3, 3, c, o)) / np.sqrt(9 * c)
    dy = jax.random.normal(k3, (b, h, w, o))
    dims = ("NHWC", "HWIO", "NHWC")
    expected, vjp = jax.vjp(lambda x: jax.lax.conv_general_dilated(x, kernel, (1, 1), ((1, 1), (1, 1)), dimension_numbers=dims,
                                                                   precision="highest"), x)
    u = winograd.transform_kernel(kernel)
    np.testing.assert_allclose(winograd.conv3x3(x, u), expected, atol=2e-5, rtol=1e-5)
    np.testing.assert_allclose(winograd.conv3x3(dy, u, flipped=True), vjp(dy)[0], atol=2e-5, rtol=1e-5)
    _, kernel_vjp = jax.vjp(lambda k: jax.lax.conv_general_dilated(x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=dims,
                                                                   precision="highest"), kernel)
    np.testing.assert_allclose(winograd.kernel_grad(x, dy), kernel_vjp(dy)[0], atol=1e-4, rtol=1e-5)
    def jaxpr(x, policy):
        conv = make_conv_general_dilated(policy)
        return str(jax.make_jaxpr(lambda x: conv(x, kernel, (1, 1), ((1, 1), (1, 1)), dimension_numbers=dims))(x))

    assert "conv_general_dilated" in jaxpr(x, ConvPolicy(impl="cpu"))  # fewer than 64 channels: XLA's convolution
    narrow = ConvPolicy(impl="cpu", winograd_min_channels=min(c, o))
    assert "conv_general_dilated" not in jaxpr(x, narrow)  # Winograd ran
    big = jnp.zeros((1, 64, 32, c))  # more than 32x32 pixels: XLA's convolution
    assert "conv_general_dilated" in jaxpr(big, narrow)


def test_upsample_gradients_match_plain_autodiff():
    """The hand-written VJPs equal autodiff of the dilated (reference) form."""
    k1, k2, k3 = jax.random.split(jax.random.key(1), 3)
    x = jax.random.normal(k1, (2, 4, 6, 8))
    kernel = jax.random.normal(k2, (4, 4, 8, 5))
    weights = jax.random.normal(k3, (2, 8, 12, 5))

    def loss(impl, conv_impl="auto"):
        policy = ConvPolicy(impl=conv_impl, upsample=impl)
        return lambda x, k: jnp.sum(weights * jd.conv_transpose_4x4_s2(x, k, policy) ** 2)

    expected = jax.grad(loss("dilated"), argnums=(0, 1))(x, kernel)
    for impl in ("subpixel", "phases"):
        for conv_impl in ("cpu", "xla"):  # the kernel gradient as a canonical convolution, or by autodiff
            got = jax.jit(jax.grad(loss(impl, conv_impl), argnums=(0, 1)))(x, kernel)
            chex.assert_trees_all_close(got, expected, rtol=1e-4, atol=1e-3)


@pytest.mark.slow
def test_cpu_convolutions_stay_canonical_inside_a_training_loop():
    """XLA:CPU runs a convolution fast only in canonical form (NHWC input, HWIO kernel) and
    rewrites other forms only outside loops; the "cpu" policy writes its gradient
    convolutions canonically, so training steps inside fori_loop/scan stay fast. Plain
    autodiff ("xla") is the counterexample this test can tell apart."""
    found = {}
    for impl in ("cpu", "xla"):
        model = jd.SimpleUNet(**TINY, conv_policy=ConvPolicy(impl=impl))
        tx = jd.make_optimizer(1e-3)
        schedule = jd.make_schedule(num_timesteps=10)
        state = jd.create_train_state(model, tx, jax.random.key(0), (16, 16, 3))
        x = jnp.zeros((2, 16, 16, 3))

        def loop(state, key):
            body = lambda i, s: jd.train_step(s, x, key, model=model, tx=tx, schedule=schedule)[0]  # noqa: E731
            return jax.lax.fori_loop(0, 2, body, state)

        hlo = jax.jit(loop).lower(state, jax.random.key(1)).compile().as_text()
        found[impl] = set(re.findall(r"convolution\(.*dim_labels=([^,]*)", hlo))
    assert found["cpu"] == {"b01f_01io->b01f"}, found
    assert found["xla"] - {"b01f_01io->b01f"}, found

