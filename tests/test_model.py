import math
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxddpm as jd
from jaxddpm import model as model_lib
from jaxddpm.model import CONV_IMPLS, UPSAMPLE_IMPLS

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
    model = jd.SimpleUNet(**TINY, upsample_impl=impl)
    x = jnp.ones((2, 16, 16, 3))
    t = jnp.array([0, 299])
    variables = jax.jit(lambda k: model.init(k, x, t, train=False))(jax.random.key(0))
    y, updates = jax.jit(lambda v: model.apply(v, x, t, train=True, mutable=["batch_stats"]))(variables)
    assert y.shape == x.shape
    assert jax.jit(lambda v: model.apply(v, x, t, train=False))(variables).shape == x.shape
    assert jax.tree.structure(updates["batch_stats"]) == jax.tree.structure(variables["batch_stats"])


def test_upsample_implementations_agree():
    k1, k2 = jax.random.split(jax.random.key(0))
    x = jax.random.normal(k1, (2, 5, 7, 6))
    kernel = jax.random.normal(k2, (4, 4, 6, 5))
    outs = [jd.conv_transpose_4x4_s2(x, kernel, impl) for impl in UPSAMPLE_IMPLS]
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
        got = jd.conv_transpose_4x4_s2(jnp.asarray(x, jnp.float32), jnp.asarray(k, jnp.float32), impl)
        np.testing.assert_allclose(got, expected, atol=1e-5, err_msg=impl)


@pytest.mark.parametrize("case,input_grad", [
    ("3x3", "taps"), ("3x3", "winograd"), ("3x3", "xla-input-grad"), ("3x3", "winograd-kernel-grad"),
    ("4x4-stride2", "phases"), ("4x4-stride2", "gemm"),
])
def test_cpu_convolution_gradients_equal_autodiff(monkeypatch, case, input_grad):
    """The hand-written input/kernel gradients of conv_impl="cpu" equal XLA's autodiff."""
    monkeypatch.setattr(model_lib, "_TAPS_MIN_WEIGHTS", 1 if input_grad == "taps" else 2**40)
    monkeypatch.setattr(model_lib, "_S2_GEMM_MAX_PIXELS", 2**40 if input_grad == "gemm" else 0)
    if input_grad == "winograd":  # also for this test's few channels
        monkeypatch.setattr(model_lib, "_WINOGRAD_MIN_CHANNELS_INPUT_GRAD", 1)
        monkeypatch.setattr(model_lib, "_WINOGRAD_MIN_CHANNELS", 1)
    # the Winograd kernel gradient (with XLA's input gradient) only in its own case
    monkeypatch.setattr(model_lib, "_WINOGRAD_KERNEL_GRAD_PIXELS", (1, 2**40) if input_grad == "winograd-kernel-grad" else (0, 0))
    monkeypatch.setattr(model_lib, "_WINOGRAD_KERNEL_GRAD_MIN_WEIGHTS", 1)
    size, strides = ((3, 3), (1, 1)) if case == "3x3" else ((4, 4), (2, 2))
    k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(k1, (2, 8, 6, 5))
    kernel = jax.random.normal(k2, (*size, 5, 7))
    out_shape = jax.eval_shape(lambda: jax.lax.conv_general_dilated(x, kernel, strides, ((1, 1), (1, 1)),
                                                                    dimension_numbers=("NHWC", "HWIO", "NHWC"))).shape
    cotangent = jax.random.normal(k3, out_shape)
    results = {}
    for impl in ("xla", "cpu"):
        conv = model_lib.make_conv_general_dilated(impl)
        f = lambda x, k: conv(x, k, strides, ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC"))  # noqa: E731
        y, vjp = jax.vjp(f, x, kernel)
        results[impl] = (y, *vjp(cotangent))
    assert results["cpu"][0].shape == out_shape
    chex.assert_trees_all_close(results["cpu"], results["xla"], atol=1e-4, rtol=1e-5)
    jaxpr = str(jax.make_jaxpr(jax.grad(lambda x: jnp.sum(model_lib.make_conv_general_dilated("cpu")(
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
def test_winograd_convolution_equals_xla(shape, monkeypatch):
    """F(2x2, 3x3) Winograd (conv_impl="cpu" outside differentiation, up to 32x32 pixels and
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
    u = model_lib._winograd_kernel(kernel)
    np.testing.assert_allclose(model_lib._winograd_conv3x3(x, u), expected, atol=2e-5, rtol=1e-5)
    np.testing.assert_allclose(model_lib._winograd_conv3x3(dy, u, flipped=True), vjp(dy)[0], atol=2e-5, rtol=1e-5)
    _, kernel_vjp = jax.vjp(lambda k: jax.lax.conv_general_dilated(x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=dims,
                                                                   precision="highest"), kernel)
    np.testing.assert_allclose(model_lib._winograd_kernel_grad(x, dy), kernel_vjp(dy)[0], atol=1e-4, rtol=1e-5)
    conv = model_lib.make_conv_general_dilated("cpu")
    jaxpr = lambda x: str(jax.make_jaxpr(lambda x: conv(x, kernel, (1, 1), ((1, 1), (1, 1)), dimension_numbers=dims))(x))  # noqa: E731
    assert "conv_general_dilated" in jaxpr(x)  # fewer than 64 channels: XLA's convolution
    monkeypatch.setattr(model_lib, "_WINOGRAD_MIN_CHANNELS", min(c, o))
    assert "conv_general_dilated" not in jaxpr(x)  # Winograd ran
    big = jnp.zeros((1, 64, 32, c))  # more than 32x32 pixels: XLA's convolution
    assert "conv_general_dilated" in jaxpr(big)


@pytest.mark.slow
def test_conv_impls_give_the_same_model_and_gradients():
    x = jax.random.normal(jax.random.key(1), (2, 16, 16, 3))
    t = jnp.array([3, 250])
    models = {impl: jd.SimpleUNet(**TINY, conv_impl=impl) for impl in CONV_IMPLS}
    variables = jax.jit(lambda k: models["xla"].init(k, x, t, train=False))(jax.random.key(0))
    grads = {}
    for impl, model in models.items():
        def loss(params):
            out, _ = model.apply({**variables, "params": params}, x, t, train=True, mutable=["batch_stats"])
            return jnp.mean(out**2)
        grads[impl] = jax.jit(jax.grad(loss))(variables["params"])  # compiled, as training runs it
    for impl in ("auto", "cpu"):
        chex.assert_trees_all_close(grads[impl], grads["xla"], atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="allowed: auto, xla, cpu"):
        model_lib.make_conv_general_dilated("fast")


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


def test_upsample_gradients_match_plain_autodiff():
    """The hand-written VJPs equal autodiff of the dilated (reference) form."""
    k1, k2, k3 = jax.random.split(jax.random.key(1), 3)
    x = jax.random.normal(k1, (2, 4, 6, 8))
    kernel = jax.random.normal(k2, (4, 4, 8, 5))
    weights = jax.random.normal(k3, (2, 8, 12, 5))

    def loss(impl, conv_impl="auto"):
        return lambda x, k: jnp.sum(weights * jd.conv_transpose_4x4_s2(x, k, impl, conv_impl) ** 2)

    expected = jax.grad(loss("dilated"), argnums=(0, 1))(x, kernel)
    for impl in ("subpixel", "phases"):
        for conv_impl in ("cpu", "xla"):  # the kernel gradient as a canonical convolution, or by autodiff
            got = jax.jit(jax.grad(loss(impl, conv_impl), argnums=(0, 1)))(x, kernel)
            chex.assert_trees_all_close(got, expected, rtol=1e-4, atol=1e-3)
    with pytest.raises(ValueError, match="conv impl 'cudnn' is unknown; allowed: auto, xla, cpu"):
        jd.conv_transpose_4x4_s2(x, kernel, "phases", "cudnn")


@pytest.mark.slow
def test_cpu_convolutions_stay_canonical_inside_a_training_loop():
    """XLA:CPU runs a convolution fast only in canonical form (NHWC input, HWIO kernel) and
    rewrites other forms only outside loops; conv_impl="cpu" writes its gradient
    convolutions canonically, so training steps inside fori_loop/scan stay fast. Plain
    autodiff ("xla") is the counterexample this test can tell apart."""
    found = {}
    for impl in ("cpu", "xla"):
        model = jd.SimpleUNet(**TINY, conv_impl=impl)
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
