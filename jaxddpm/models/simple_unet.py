"""The article's SimpleUNet as a Flax Linen module (NHWC).

Module and parameter names mirror the PyTorch model's attribute names (``down_blocks_0``
for ``down_blocks.0`` and so on) so that weights convert by a fixed table. How the
convolutions are computed is the ``conv_policy`` field's business (`jaxddpm.kernels`); the
model only says which convolutions there are.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxddpm.kernels import ConvPolicy, make_conv_general_dilated
from jaxddpm.models.layers import BatchNorm, ConvTranspose4x4, Dtype, label_embedding, sinusoidal_embedding

PAD1 = ((1, 1), (1, 1))


class ConvBlock(nn.Module):
    """conv3x3-ReLU-BN, add the projected time embedding, conv3x3-ReLU-BN, resample by 2."""

    features: int
    upsample: bool = False
    conv_policy: ConvPolicy = ConvPolicy()
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, t_emb: jax.Array, train: bool) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        conv = make_conv_general_dilated(self.conv_policy)
        h = nn.Conv(self.features, (3, 3), padding=PAD1, name="conv1", conv_general_dilated=conv, **kw)(x)
        h = BatchNorm(name="bn1", **kw)(nn.relu(h), train)
        time_emb = nn.relu(nn.Dense(self.features, name="time_mlp", **kw)(t_emb))
        h = h + time_emb[:, None, None, :]
        h = nn.Conv(self.features, (3, 3), padding=PAD1, name="conv2", conv_general_dilated=conv, **kw)(h)
        h = BatchNorm(name="bn2", **kw)(nn.relu(h), train)
        if self.upsample:
            return ConvTranspose4x4(self.features, self.conv_policy, name="transform", **kw)(h)
        return nn.Conv(self.features, (4, 4), strides=(2, 2), padding=PAD1, name="transform",
                       conv_general_dilated=conv, **kw)(h)


class SimpleUNet(nn.Module):
    """The article's U-Net noise predictor ``eps(x_t, t)``.

    ``channels`` are the widths of the down path (the up path mirrors them); each of the
    ``len(channels) - 1`` levels halves H and W, so image sizes must be divisible by
    ``2 ** (len(channels) - 1)``. The defaults give the article's 62,438,883 parameters.
    ``num_classes`` > 0 makes it class-conditional, label ``num_classes`` meaning "no label".
    """

    channels: Sequence[int] = (64, 128, 256, 512, 1024)
    out_channels: int = 3
    time_emb_dim: int = 32
    num_classes: int = 0
    conv_policy: ConvPolicy = ConvPolicy()
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def fast_in_loops(self) -> bool:
        """Whether training steps stay fast inside a compiled loop on JAX's backend: on the
        CPU only with the policy's CPU forms, whose gradient convolutions XLA:CPU runs fast
        inside loops too (XLA's own are 15-50x slower there)."""
        return self.conv_policy.resolved() == "cpu" or jax.default_backend() != "cpu"

    @nn.compact
    def __call__(
        self, x_BxHxWxC: jax.Array, t_B: jax.Array, train: bool, labels_B: jax.Array | None = None
    ) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        block_kw = dict(conv_policy=self.conv_policy, **kw)
        t_emb = sinusoidal_embedding(t_B, self.time_emb_dim, self.dtype)
        t_emb = nn.relu(nn.Dense(self.time_emb_dim, name="time_mlp", **kw)(t_emb))
        t_emb = t_emb + label_embedding(self.num_classes, self.time_emb_dim, labels_B, t_B.shape[0], **kw)

        conv = make_conv_general_dilated(self.conv_policy)
        x = nn.Conv(self.channels[0], (3, 3), padding=PAD1, name="init_conv", conv_general_dilated=conv, **kw)(x_BxHxWxC)
        skips = []
        for i, features in enumerate(self.channels[1:]):
            x = ConvBlock(features, name=f"down_blocks_{i}", **block_kw)(x, t_emb, train)
            skips.append(x)
        for i, features in enumerate(tuple(reversed(self.channels))[1:]):
            x = jnp.concatenate([x, skips.pop()], axis=-1)
            x = ConvBlock(features, upsample=True, name=f"up_blocks_{i}", **block_kw)(x, t_emb, train)
        return nn.Conv(self.out_channels, (1, 1), name="final_conv", conv_general_dilated=conv, **kw)(x)
