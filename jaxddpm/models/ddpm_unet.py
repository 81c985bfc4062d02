"""A stronger noise predictor: the residual U-Net family of the original DDPM code.

Residual blocks with GroupNorm and SiLU, the time (and optional class) embedding added
inside every block, dropout, and self-attention at chosen feature-map sizes. The call
signature matches `SimpleUNet`, so samplers, losses and the trainer take either.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxddpm.models.layers import label_embedding, sinusoidal_embedding

Dtype = Any


def _groups(channels: int, max_groups: int) -> int:
    """The largest group count <= max_groups that divides ``channels``."""
    return next(g for g in range(min(max_groups, channels), 0, -1) if channels % g == 0)


class ResBlock(nn.Module):
    features: int
    dropout: float = 0.0
    norm_groups: int = 32
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, emb: jax.Array, train: bool) -> jax.Array:
        kw = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        h = nn.GroupNorm(_groups(x.shape[-1], self.norm_groups), name="norm1", **kw)(x)
        h = nn.Conv(self.features, (3, 3), name="conv1", **kw)(nn.silu(h))
        h = h + nn.Dense(self.features, name="emb_proj", **kw)(nn.silu(emb))[:, None, None, :]
        h = nn.GroupNorm(_groups(self.features, self.norm_groups), name="norm2", **kw)(h)
        h = nn.Dropout(self.dropout, deterministic=not train)(nn.silu(h))
        h = nn.Conv(self.features, (3, 3), name="conv2", kernel_init=nn.initializers.zeros, **kw)(h)
        if x.shape[-1] != self.features:
            x = nn.Conv(self.features, (1, 1), name="skip", **kw)(x)
        return x + h


class AttentionBlock(nn.Module):
    """Single-head self-attention over the H*W positions, residual."""

    norm_groups: int = 32
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kw = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        b, hgt, wid, c = x.shape
        h = nn.GroupNorm(_groups(c, self.norm_groups), name="norm", **kw)(x).reshape(b, hgt * wid, c)
        q, k, v = jnp.split(nn.Dense(3 * c, name="qkv", **kw)(h), 3, axis=-1)
        weights = jax.nn.softmax(jnp.einsum("bqc,bkc->bqk", q, k) / jnp.sqrt(c).astype(q.dtype), axis=-1)
        h = jnp.einsum("bqk,bkc->bqc", weights, v)
        h = nn.Dense(c, name="proj", kernel_init=nn.initializers.zeros, **kw)(h)
        return x + h.reshape(b, hgt, wid, c)


class DDPMUNet(nn.Module):
    """Residual U-Net (Ho et al. 2020 family).

    Level i has ``base_channels * channel_mult[i]`` channels and ``num_res_blocks`` residual
    blocks; every level but the last halves H and W. Attention follows each residual block
    whose feature map is one of ``attention_resolutions`` (side lengths in pixels).
    """

    out_channels: int = 3
    base_channels: int = 64
    channel_mult: Sequence[int] = (1, 2, 2)
    num_res_blocks: int = 2
    attention_resolutions: Sequence[int] = (8,)
    dropout: float = 0.1
    norm_groups: int = 32
    num_classes: int = 0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def fast_in_loops(self) -> bool:
        """Whether training steps stay fast inside a compiled loop on JAX's backend: not on
        the CPU, where XLA:CPU runs this model's gradient convolutions slowly inside loops."""
        return jax.default_backend() != "cpu"

    @nn.compact
    def __call__(self, x: jax.Array, t: jax.Array, train: bool, labels: jax.Array | None = None) -> jax.Array:
        kw = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        block_kw = dict(dropout=self.dropout, norm_groups=self.norm_groups, **kw)
        emb_dim = 4 * self.base_channels
        emb = sinusoidal_embedding(t, self.base_channels, self.dtype)
        emb = nn.Dense(emb_dim, name="time_dense1", **kw)(emb)
        emb = nn.Dense(emb_dim, name="time_dense2", **kw)(nn.silu(emb))
        emb = emb + label_embedding(self.num_classes, emb_dim, labels, t.shape[0], **kw)

        def attend(h, name):
            if h.shape[1] in self.attention_resolutions:
                return AttentionBlock(self.norm_groups, name=name, **kw)(h)
            return h

        h = nn.Conv(self.base_channels, (3, 3), name="init_conv", **kw)(x.astype(self.dtype))
        skips = [h]
        last = len(self.channel_mult) - 1
        for level, mult in enumerate(self.channel_mult):
            for i in range(self.num_res_blocks):
                h = ResBlock(self.base_channels * mult, name=f"down_{level}_res_{i}", **block_kw)(h, emb, train)
                h = attend(h, f"down_{level}_attn_{i}")
                skips.append(h)
            if level != last:
                h = nn.Conv(h.shape[-1], (3, 3), strides=(2, 2), name=f"down_{level}_resample", **kw)(h)
                skips.append(h)

        h = ResBlock(h.shape[-1], name="mid_res_0", **block_kw)(h, emb, train)
        h = AttentionBlock(self.norm_groups, name="mid_attn", **kw)(h)
        h = ResBlock(h.shape[-1], name="mid_res_1", **block_kw)(h, emb, train)

        for level in reversed(range(len(self.channel_mult))):
            for i in range(self.num_res_blocks + 1):
                h = jnp.concatenate([h, skips.pop()], axis=-1)
                h = ResBlock(self.base_channels * self.channel_mult[level], name=f"up_{level}_res_{i}", **block_kw)(h, emb, train)
                h = attend(h, f"up_{level}_attn_{i}")
            if level != 0:
                b, hgt, wid, c = h.shape
                h = jax.image.resize(h, (b, 2 * hgt, 2 * wid, c), "nearest")
                h = nn.Conv(c, (3, 3), name=f"up_{level}_resample", **kw)(h)

        h = nn.silu(nn.GroupNorm(_groups(h.shape[-1], self.norm_groups), name="out_norm", **kw)(h))
        return nn.Conv(self.out_channels, (3, 3), name="out_conv", kernel_init=nn.initializers.zeros, **kw)(h)
