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

from jaxddpm.kernels import ConvPolicy, make_conv_general_dilated
from jaxddpm.models.layers import GroupNorm, label_embedding, sinusoidal_embedding

Dtype = Any


PAD1 = ((1, 1), (1, 1))  # a 3x3, stride-1 convolution's padding ("SAME")


def _conv_kw(policy: ConvPolicy | None) -> dict:
    """nn.Conv's arguments for a convolution policy: XLA's own convolutions for None."""
    return {} if policy is None else {"conv_general_dilated": make_conv_general_dilated(policy)}


def _norm(jvp_compatible: bool) -> type[nn.Module]:
    """The group normalisation a block uses: jaxddpm's (written-out gradient, faster on
    XLA:CPU) or, for forward-mode autodiff, Flax's (the same function and parameters)."""
    return nn.GroupNorm if jvp_compatible else GroupNorm


def _groups(channels: int, max_groups: int) -> int:
    """The largest group count <= max_groups that divides ``channels``."""
    return next(g for g in range(min(max_groups, channels), 0, -1) if channels % g == 0)


class SplitDense(nn.Module):
    """``nn.Dense(parts * features)``, with the same parameters, whose output comes in
    ``parts`` pieces of ``features``, each computed from its slice of the kernel. XLA:CPU runs
    this faster than one product whose output is then sliced (for ``time_scale_shift``, 1.2%
    instead of 6.7% more time per quickstart training step; experiments/quickstart/README.md)."""

    features: int
    parts: int = 2
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> tuple[jax.Array, ...]:
        width = self.parts * self.features
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (x.shape[-1], width), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (width,), self.param_dtype)
        x, kernel, bias = (a.astype(self.dtype) for a in (x, kernel, bias))
        f, lead = self.features, (1,) * (x.ndim - 1)
        return tuple(x @ kernel[:, i * f:(i + 1) * f] + bias[i * f:(i + 1) * f].reshape(*lead, f) for i in range(self.parts))


class ResBlock(nn.Module):
    features: int
    dropout: float = 0.0
    norm_groups: int = 32
    norm_eps: float = 1e-6
    jvp_compatible: bool = False
    output_scale: float = 1.0  # the sum is divided by this (diffusers' output_scale_factor)
    time_scale_shift: bool = False  # see DDPMUNet.time_scale_shift
    conv_policy: ConvPolicy | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, emb: jax.Array, train: bool) -> jax.Array:
        kw = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        ckw = dict(kw, **_conv_kw(self.conv_policy))
        norm = lambda c, name: _norm(self.jvp_compatible)(_groups(c, self.norm_groups), epsilon=self.norm_eps, name=name, **kw)  # noqa: E731
        h = norm(x.shape[-1], "norm1")(x)
        h = nn.Conv(self.features, (3, 3), padding=PAD1, name="conv1", **ckw)(nn.silu(h))
        if self.time_scale_shift:
            scale, shift = SplitDense(self.features, name="emb_proj", **kw)(nn.silu(emb))
            if self.jvp_compatible:  # Flax's GroupNorm, then the modulation
                h = norm(self.features, "norm2")(h) * (1 + scale[:, None, None, :]) + shift[:, None, None, :]
            else:  # folded into the normalisation's scale and bias
                h = norm(self.features, "norm2")(h, modulation=(scale, shift))
        else:
            h = h + nn.Dense(self.features, name="emb_proj", **kw)(nn.silu(emb))[:, None, None, :]
            h = norm(self.features, "norm2")(h)
        h = nn.Dropout(self.dropout, deterministic=not train)(nn.silu(h))
        h = nn.Conv(self.features, (3, 3), padding=PAD1, name="conv2", kernel_init=nn.initializers.zeros, **ckw)(h)
        if x.shape[-1] != self.features:
            x = nn.Conv(self.features, (1, 1), name="skip", **ckw)(x)
        return x + h if self.output_scale == 1.0 else (x + h) / self.output_scale


class AttentionBlock(nn.Module):
    """Self-attention over the H*W positions, residual: one head over all channels, or heads
    of ``head_dim`` channels. ``qkv_layout`` "fused" keeps the query, key and value
    projections in one Dense layer (``qkv``), "separate" in three (``q``, ``k``, ``v``: the
    layout of diffusers' checkpoints); the two compute the same function."""

    norm_groups: int = 32
    norm_eps: float = 1e-6
    jvp_compatible: bool = False
    head_dim: int = 0  # 0: one head
    qkv_layout: str = "fused"
    output_scale: float = 1.0
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kw = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        b, hgt, wid, c = x.shape
        norm = _norm(self.jvp_compatible)(_groups(c, self.norm_groups), epsilon=self.norm_eps, name="norm", **kw)
        h = norm(x).reshape(b, hgt * wid, c)
        if self.qkv_layout == "fused":
            q, k, v = jnp.split(nn.Dense(3 * c, name="qkv", **kw)(h), 3, axis=-1)
        else:
            q, k, v = (nn.Dense(c, name=name, **kw)(h) for name in ("q", "k", "v"))
        heads = c // self.head_dim if self.head_dim else 1
        if heads == 1:
            weights = jax.nn.softmax(jnp.einsum("bqc,bkc->bqk", q, k) / jnp.sqrt(c).astype(q.dtype), axis=-1)
            h = jnp.einsum("bqk,bkc->bqc", weights, v)
        else:
            q, k, v = (a.reshape(b, hgt * wid, heads, c // heads) for a in (q, k, v))
            logits = jnp.einsum("bqhd,bkhd->bhqk", q, k) / jnp.sqrt(c // heads).astype(q.dtype)
            h = jnp.einsum("bhqk,bkhd->bqhd", jax.nn.softmax(logits, axis=-1), v).reshape(b, hgt * wid, c)
        h = nn.Dense(c, name="proj", kernel_init=nn.initializers.zeros, **kw)(h)
        out = x + h.reshape(b, hgt, wid, c)
        return out if self.output_scale == 1.0 else out / self.output_scale


# How the stride-2 convolution of a down level pads its input: "same" is XLA's SAME (for an
# even size, one row and column after: the original DDPM code's), "after" pads one row and
# column after (diffusers' downsample_padding=0), "both" one on every side (diffusers' 1).
DOWNSAMPLE_PADDINGS = {"same": "SAME", "after": ((0, 1), (0, 1)), "both": ((1, 1), (1, 1))}


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
    # Options that express other checkpoints of this family exactly (diffusers' UNet2DModel
    # names in brackets); the defaults are this model's own.
    time_flip_sin_to_cos: bool = False  # [flip_sin_to_cos]
    time_freq_shift: float = 1.0  # [freq_shift]
    downsample_padding: str = "same"  # [downsample_padding]: see DOWNSAMPLE_PADDINGS
    norm_eps: float = 1e-6  # [norm_eps]
    attention_head_dim: int = 0  # [attention_head_dim]; 0: one head
    qkv_layout: str = "fused"  # "separate": q, k, v projections as diffusers stores them
    mid_scale: float = 1.0  # [mid_block_scale_factor]
    # The time (and class) embedding scales and shifts each block's second normalisation,
    # h = norm(h) * (1 + scale) + shift (Nichol & Dhariwal 2021), instead of being added
    # before it (Ho et al.'s) [resnet_time_scale_shift="scale_shift"].
    time_scale_shift: bool = False
    # Each up level's nearest-neighbour upsampling is followed by a 3x3 convolution (Ho et
    # al.'s resamp_with_conv; diffusers' only form); False leaves it out.
    upsample_conv: bool = True
    # How convolutions are computed (same math): None is XLA's own; a `ConvPolicy` uses
    # jaxddpm's forms (Winograd for 3x3 convolutions outside differentiation, 1x1 ones as
    # matrix products), which XLA:CPU runs faster, in float64 by far.
    conv_policy: ConvPolicy | None = None
    # Group normalisation: jaxddpm.models.GroupNorm (a written-out gradient, faster on
    # XLA:CPU), or with jvp_compatible flax.linen.GroupNorm (the same function and parameters),
    # which jax.jvp (forward-mode autodiff) can differentiate.
    jvp_compatible: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    def fast_in_loops(self) -> bool:
        """Whether training steps stay fast inside a compiled loop on JAX's backend: not on
        the CPU, where XLA:CPU runs this model's gradient convolutions slowly inside loops."""
        return jax.default_backend() != "cpu"

    @nn.compact
    def __call__(self, x: jax.Array, t: jax.Array, train: bool, labels: jax.Array | None = None) -> jax.Array:
        kw = {"dtype": self.dtype, "param_dtype": self.param_dtype}
        norm_kw = dict(norm_groups=self.norm_groups, norm_eps=self.norm_eps, jvp_compatible=self.jvp_compatible, **kw)
        block_kw = dict(dropout=self.dropout, conv_policy=self.conv_policy, time_scale_shift=self.time_scale_shift, **norm_kw)
        ckw = dict(kw, **_conv_kw(self.conv_policy))
        attn_kw = dict(head_dim=self.attention_head_dim, qkv_layout=self.qkv_layout, **norm_kw)
        emb_dim = 4 * self.base_channels
        emb = sinusoidal_embedding(t, self.base_channels, self.dtype, flip_sin_to_cos=self.time_flip_sin_to_cos,
                                   freq_shift=self.time_freq_shift)
        emb = nn.Dense(emb_dim, name="time_dense1", **kw)(emb)
        emb = nn.Dense(emb_dim, name="time_dense2", **kw)(nn.silu(emb))
        emb = emb + label_embedding(self.num_classes, emb_dim, labels, t.shape[0], **kw)

        def attend(h, name):
            if h.shape[1] in self.attention_resolutions:
                return AttentionBlock(name=name, **attn_kw)(h)
            return h

        h = nn.Conv(self.base_channels, (3, 3), padding=PAD1, name="init_conv", **ckw)(x.astype(self.dtype))
        skips = [h]
        last = len(self.channel_mult) - 1
        for level, mult in enumerate(self.channel_mult):
            for i in range(self.num_res_blocks):
                h = ResBlock(self.base_channels * mult, name=f"down_{level}_res_{i}", **block_kw)(h, emb, train)
                h = attend(h, f"down_{level}_attn_{i}")
                skips.append(h)
            if level != last:
                h = nn.Conv(h.shape[-1], (3, 3), strides=(2, 2), padding=DOWNSAMPLE_PADDINGS[self.downsample_padding],
                            name=f"down_{level}_resample", **ckw)(h)
                skips.append(h)

        mid = dict(output_scale=self.mid_scale)
        h = ResBlock(h.shape[-1], name="mid_res_0", **mid, **block_kw)(h, emb, train)
        h = AttentionBlock(name="mid_attn", **mid, **attn_kw)(h)
        h = ResBlock(h.shape[-1], name="mid_res_1", **mid, **block_kw)(h, emb, train)

        for level in reversed(range(len(self.channel_mult))):
            for i in range(self.num_res_blocks + 1):
                h = jnp.concatenate([h, skips.pop()], axis=-1)
                h = ResBlock(self.base_channels * self.channel_mult[level], name=f"up_{level}_res_{i}", **block_kw)(h, emb, train)
                h = attend(h, f"up_{level}_attn_{i}")
            if level != 0:
                b, hgt, wid, c = h.shape
                h = jax.image.resize(h, (b, 2 * hgt, 2 * wid, c), "nearest")
                if self.upsample_conv:
                    h = nn.Conv(c, (3, 3), padding=PAD1, name=f"up_{level}_resample", **ckw)(h)

        norm = _norm(self.jvp_compatible)(_groups(h.shape[-1], self.norm_groups), epsilon=self.norm_eps, name="out_norm", **kw)
        h = nn.silu(norm(h))
        return nn.Conv(self.out_channels, (3, 3), padding=PAD1, name="out_conv", kernel_init=nn.initializers.zeros, **ckw)(h)
