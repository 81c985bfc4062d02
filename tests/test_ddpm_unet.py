"""The residual U-Net (`jaxddpm.DDPMUNet`, jaxddpm/models/ddpm_unet.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxddpm.models import DDPMUNet


@pytest.mark.slow
def test_ddpm_unet_shapes_dropout_and_conditioning():
    model = DDPMUNet(out_channels=2, base_channels=8, channel_mult=(1, 2), num_res_blocks=1, attention_resolutions=(4,), dropout=0.5, norm_groups=4, num_classes=2)
    x, t, y = jnp.ones((2, 8, 8, 2)), jnp.array([3, 7]), jnp.array([0, 1])
    # Compiled: op by op, this model's few forward passes took most of the test's time.
    variables = jax.jit(lambda k: model.init(k, x, t, False, y))(jax.random.key(0))
    names = set(variables["params"])
    assert {"down_1_attn_0", "up_1_attn_0", "mid_attn"} <= names and not {"down_0_attn_0", "up_0_attn_0"} & names  # 4x4 only
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
