"""Layers shared by the models: the sinusoidal time embedding, PyTorch-convention batch
normalisation, group normalisation, the class-label embedding and the 4x4, stride-2
transposed convolution."""

from __future__ import annotations

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxddpm.kernels import ConvPolicy, conv_transpose_4x4_s2

Dtype = Any


def sinusoidal_embedding(t: jax.Array, dim: int, dtype: Dtype = jnp.float32, *, flip_sin_to_cos: bool = False,
                         freq_shift: float = 1.0) -> jax.Array:
    """Sinusoidal timestep embedding: ``[sin(t * f_k), cos(t * f_k)]`` (``[cos, sin]`` with
    ``flip_sin_to_cos``).

    The frequencies are ``f_k = exp(-k * log(10000) / (dim // 2 - freq_shift))`` for
    k < dim // 2 (``freq_shift`` 1 is the article's and the original DDPM code's; diffusers
    calls the two options ``flip_sin_to_cos`` and ``freq_shift`` too). They are computed in
    float64 and rounded once to ``dtype``.
    """
    half = dim // 2
    if half < 2:
        raise ValueError(f"embedding dim must be at least 4, got {dim}")
    if half - freq_shift <= 0:
        raise ValueError(f"freq_shift must be below dim // 2 = {half}, got {freq_shift}")
    freqs = np.exp(np.arange(half, dtype=np.float64) * -(math.log(10000.0) / (half - freq_shift)))
    angles = t.astype(dtype)[:, None] * jnp.asarray(freqs, dtype=dtype)[None, :]
    parts = [jnp.cos(angles), jnp.sin(angles)] if flip_sin_to_cos else [jnp.sin(angles), jnp.cos(angles)]
    return jnp.concatenate(parts, axis=-1)


class BatchNorm(nn.Module):
    """Batch normalisation over N, H, W with PyTorch's conventions.

    ``momentum`` is PyTorch's (weight of the new batch statistic), the batch variance used
    for normalising is the biased one, and the running variance is updated with the
    unbiased one (times n / (n - 1)), as ``torch.nn.BatchNorm2d`` does. Variables are
    named like Flax's: params ``scale``/``bias``, batch_stats ``mean``/``var``.
    """

    momentum: float = 0.1
    epsilon: float = 1e-5
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        features = x.shape[-1]
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((features,), self.param_dtype))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((features,), self.param_dtype))
        scale = self.param("scale", nn.initializers.ones, (features,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (features,), self.param_dtype)

        if train:
            axes = tuple(range(x.ndim - 1))
            # Statistics in at least float32, whatever the compute dtype.
            xs = x.astype(jnp.promote_types(x.dtype, jnp.float32))
            mean = jnp.mean(xs, axis=axes, keepdims=True)
            var = jnp.mean(jnp.square(xs - mean), axis=axes)
            mean = mean.reshape(features)
            if not self.is_initializing():
                n = math.prod(x.shape[:-1])
                unbiased = var * (n / max(n - 1, 1))
                m = self.momentum
                ra_mean.value = ((1 - m) * ra_mean.value + m * mean).astype(self.param_dtype)
                ra_var.value = ((1 - m) * ra_var.value + m * unbiased).astype(self.param_dtype)
        else:
            mean, var = ra_mean.value, ra_var.value

        mul = scale * jax.lax.rsqrt(var + self.epsilon)
        shift = bias - mean * mul
        as_channels = (1,) * (x.ndim - 1) + (features,)
        mul, shift = mul.reshape(as_channels).astype(self.dtype), shift.reshape(as_channels).astype(self.dtype)
        return (x.astype(self.dtype) * mul + shift).astype(self.dtype)


def _group_sums(a: jax.Array, groups: int) -> jax.Array:
    """Sums of an NHWC array over each sample's pixels and channel group: (N, groups). The
    pixels are summed first, per channel, and the few channels of a group after."""
    n, h, w, c = a.shape
    return jnp.sum(a.reshape(n, h * w, c), axis=1).reshape(n, groups, c // groups).sum(axis=-1)


def _per_channel(a: jax.Array, channels: int) -> jax.Array:
    """(N, groups) -> (N, 1, 1, channels): each group's value for each of its channels."""
    return jnp.repeat(a, channels // a.shape[1], axis=1)[:, None, None, :]


def _group_norm_forward(x, scale, bias, groups: int, epsilon: float):
    c = x.shape[-1]
    count = x.shape[1] * x.shape[2] * (c // groups)
    mean = _group_sums(x, groups) / count
    var = jnp.maximum(_group_sums(jnp.square(x), groups) / count - jnp.square(mean), 0.0)
    inv = jax.lax.rsqrt(var + epsilon)
    x_hat = (x - _per_channel(mean, c)) * _per_channel(inv, c)
    return x_hat * scale.reshape(-1, 1, 1, c) + bias.reshape(-1, 1, 1, c), (x_hat, inv, scale)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def group_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, groups: int, epsilon: float) -> jax.Array:
    """Group normalisation of an NHWC array: ``(x - mean) / sqrt(var + epsilon) * scale + bias``
    with the mean and (biased) variance of each sample's pixels in each of ``groups`` equal
    groups of channels; ``scale`` and ``bias`` have one value per channel, (C,), or one per
    sample and channel, (N, C).

    The function of ``flax.linen.GroupNorm`` (and PyTorch's ``GroupNorm``), computed in
    fewer and faster passes on XLA:CPU: the statistics sum over pixels before channels, and
    the gradient is written out (two group sums of the cotangent) rather than left to
    autodiff. The quickstart's training step takes 7-11% less time than with Flax's
    (``python scripts/bench_group_norm.py``; experiments/bench/README.md).
    """
    return _group_norm_forward(x, scale, bias, groups, epsilon)[0]


def _group_norm_fwd(x, scale, bias, groups, epsilon):
    return _group_norm_forward(x, scale, bias, groups, epsilon)


def _group_norm_bwd(groups, epsilon, residuals, dy):
    x_hat, inv, scale = residuals
    c = dy.shape[-1]
    count = dy.shape[1] * dy.shape[2] * (c // groups)
    g = dy * scale.reshape(-1, 1, 1, c)
    mean_g = _group_sums(g, groups) / count
    mean_gx = _group_sums(g * x_hat, groups) / count
    dx = _per_channel(inv, c) * (g - _per_channel(mean_g, c) - x_hat * _per_channel(mean_gx, c))
    axes = (1, 2) if scale.ndim == 2 else (0, 1, 2)  # per sample and channel, or per channel
    return dx, jnp.sum(dy * x_hat, axis=axes), jnp.sum(dy, axis=axes)


group_norm.defvjp(_group_norm_fwd, _group_norm_bwd)


class GroupNorm(nn.Module):
    """``flax.linen.GroupNorm`` for NHWC inputs (the same parameters, ``scale`` and
    ``bias``, and the same function up to float rounding), computed by `group_norm`.
    Statistics are in float32 or wider whatever the compute dtype, as Flax's are. Its
    written-out gradient (``jax.custom_vjp``) cannot be differentiated in forward mode
    (``jax.jvp``); Flax's GroupNorm can.

    ``modulation``, a pair (s, b) of (N, C) arrays, returns ``GroupNorm(x) * (1 + s) + b``
    per sample (the adaptive GroupNorm of Nichol & Dhariwal 2021), folded into the
    normalisation's own scale and bias rather than applied in another pass over x."""

    num_groups: int = 32
    epsilon: float = 1e-6
    dtype: Dtype | None = None
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, modulation: tuple[jax.Array, jax.Array] | None = None) -> jax.Array:
        n, c = x.shape[0], x.shape[-1]
        if x.ndim != 4 or c % self.num_groups:
            raise ValueError(f"GroupNorm needs NHWC input with channels divisible by num_groups={self.num_groups}, got shape {x.shape}")
        scale = self.param("scale", nn.initializers.ones, (c,), self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (c,), self.param_dtype)
        wide = jnp.promote_types(jnp.promote_types(x.dtype, jnp.float32), self.param_dtype)
        scale, bias = scale.astype(wide), bias.astype(wide)
        if modulation is not None:
            if any(m.shape != (n, c) for m in modulation):
                raise ValueError(f"GroupNorm modulation needs two arrays of shape {(n, c)} (samples, channels), "
                                 f"got {[tuple(m.shape) for m in modulation]}")
            s, b = (m.astype(wide) for m in modulation)
            scale, bias = scale[None, :] * (1 + s), bias[None, :] * (1 + s) + b
        y = group_norm(x.astype(wide), scale, bias, self.num_groups, self.epsilon)
        return y.astype(self.dtype if self.dtype is not None else jnp.promote_types(x.dtype, self.param_dtype))


def label_embedding(num_classes: int, features: int, labels: jax.Array | None, batch: int, **kw) -> jax.Array | float:
    """Embedding of class labels (``num_classes`` = the null label), or 0 for an
    unconditional model. Must be called inside a compact module; creates "label_emb"."""
    if num_classes <= 0:
        if labels is not None:
            raise ValueError("labels were given to a model with num_classes=0")
        return 0.0
    if labels is None:
        labels = jnp.full((batch,), num_classes, jnp.int32)
    return nn.Embed(num_classes + 1, features, name="label_emb", **kw)(labels)


class ConvTranspose4x4(nn.Module):
    """A 4x4, stride-2, padding-1 transposed convolution that doubles H and W."""

    features: int
    conv_policy: ConvPolicy = ConvPolicy()
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        shape = (4, 4, x.shape[-1], self.features)
        kernel = self.param("kernel", nn.initializers.lecun_normal(), shape, self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
        y = conv_transpose_4x4_s2(x.astype(self.dtype), kernel.astype(self.dtype), self.conv_policy)
        return y + bias.astype(self.dtype).reshape(1, 1, 1, self.features)
