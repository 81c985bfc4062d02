"""The article's SimpleUNet as a Flax Linen module (NHWC).

Module and parameter names mirror the PyTorch model's attribute names (``down_blocks_0``
for ``down_blocks.0`` and so on) so that weights convert by a fixed table.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any
UPSAMPLE_IMPLS = ("phases", "subpixel", "dilated")


def sinusoidal_embedding(t: jax.Array, dim: int, dtype: Dtype = jnp.float32) -> jax.Array:
    """Sinusoidal timestep embedding: ``[sin(t * f_k), cos(t * f_k)]``.

    The frequencies are ``f_k = exp(-k * log(10000) / (dim // 2 - 1))`` for k < dim // 2.
    They are computed in float64 and rounded once to ``dtype``.
    """
    half = dim // 2
    if half < 2:
        raise ValueError(f"embedding dim must be at least 4, got {dim}")
    freqs = np.exp(np.arange(half, dtype=np.float64) * -(math.log(10000.0) / (half - 1)))
    angles = t.astype(dtype)[:, None] * jnp.asarray(freqs, dtype=dtype)[None, :]
    return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


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


# Sub-pixel form of a 4x4, stride-2, padding-1 transposed convolution. Output row 2m + a
# reads input rows m - 1 + a and m + a through kernel rows 3 - a and 1 - a. On the input
# padded by one, all four output phases are one 3x3 convolution whose kernel at
# (row r, col c, phase a, b) is the transposed kernel at (3 + a - 2r, 3 + b - 2c), or zero
# where r - a or c - b is outside {0, 1}.
def _subpixel_gather() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rows = np.zeros((3, 3, 2, 2), np.int32)
    cols = np.zeros((3, 3, 2, 2), np.int32)
    mask = np.zeros((3, 3, 2, 2), np.float32)
    for r in range(3):
        for c in range(3):
            for a in range(2):
                for b in range(2):
                    if 0 <= r - a <= 1 and 0 <= c - b <= 1:
                        rows[r, c, a, b] = 3 + a - 2 * r
                        cols[r, c, a, b] = 3 + b - 2 * c
                        mask[r, c, a, b] = 1.0
    return rows, cols, mask


_SUBPIXEL_ROWS, _SUBPIXEL_COLS, _SUBPIXEL_MASK = _subpixel_gather()
_NHWC = ("NHWC", "HWIO", "NHWC")


def _conv_stride2(u: jax.Array, kernel: jax.Array) -> jax.Array:
    """The adjoint of the transposed convolution: a 4x4, stride-2, padding-1 convolution
    from the output channels back to the input channels with the same kernel."""
    return jax.lax.conv_general_dilated(u, kernel.transpose(0, 1, 3, 2), (2, 2), ((1, 1), (1, 1)), dimension_numbers=_NHWC)


def _dilated(x: jax.Array, kernel: jax.Array) -> jax.Array:
    return jax.lax.conv_general_dilated(
        x, kernel[::-1, ::-1], (1, 1), ((2, 2), (2, 2)), lhs_dilation=(2, 2), dimension_numbers=_NHWC
    )


def _interleave(phase) -> jax.Array:
    """The image whose pixel (2i + a, 2j + b) is pixel (i, j) of ``phase(a, b)``, for four
    (N, H, W, C) phases: (N, 2H, 2W, C)."""
    rows = [jnp.stack([phase(a, b) for b in range(2)], axis=3) for a in range(2)]
    n, h, w, _, c = rows[0].shape
    return jnp.stack(rows, axis=2).reshape(n, 2 * h, 2 * w, c)


def _phases(x: jax.Array, kernel: jax.Array) -> jax.Array:
    _, h, w, _ = x.shape
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))

    def phase(a, b):
        k_ab = kernel[3 - a :: -2, 3 - b :: -2]  # kernel rows 3 - a, 1 - a; columns 3 - b, 1 - b
        window = xp[:, a : a + h + 1, b : b + w + 1]
        return jax.lax.conv_general_dilated(window, k_ab, (1, 1), "VALID", dimension_numbers=_NHWC)

    return _interleave(phase)


def _subpixel(x: jax.Array, kernel: jax.Array) -> jax.Array:
    n, h, w, _ = x.shape
    c_out = kernel.shape[-1]
    k3 = kernel[_SUBPIXEL_ROWS, _SUBPIXEL_COLS] * jnp.asarray(_SUBPIXEL_MASK, kernel.dtype)[..., None, None]
    # (3, 3, a, b, in, out) -> (3, 3, in, a, b, out)
    k3 = k3.transpose(0, 1, 4, 2, 3, 5).reshape(3, 3, -1, 4 * c_out)
    y = jax.lax.conv_general_dilated(x, k3, (1, 1), ((1, 1), (1, 1)), dimension_numbers=_NHWC)
    y = y.reshape(n, h, w, 2, 2, c_out).transpose(0, 1, 3, 2, 4, 5)
    return y.reshape(n, 2 * h, 2 * w, c_out)


def _with_adjoint_vjp(forward, canonical_kernel_grad: bool):
    """``forward`` with a hand-written VJP built from the strided convolution it is the
    transpose of: d/dx is that convolution of the cotangent, d/dkernel its kernel VJP,
    computed as a canonical convolution (`_conv_kernel_grad`, fast on XLA:CPU inside
    loops) or by autodiff (XLA's own form). Both are far faster than the autodiff of the
    forward forms."""

    @jax.custom_vjp
    def f(x, kernel):
        return forward(x, kernel)

    def f_fwd(x, kernel):
        return forward(x, kernel), (x, kernel)

    def f_bwd(residuals, dy):
        x, kernel = residuals
        dx = _conv_stride2(dy, kernel)
        if canonical_kernel_grad:
            # The kernel gradient of _conv_stride2(dy, k) at cotangent x, for its kernel
            # k.transpose(0, 1, 3, 2), transposed back.
            return dx, _conv_kernel_grad(dy, x, 2).transpose(0, 1, 3, 2)
        # The transpose of the linear map k -> _conv_stride2(dy, k): autodiff's kernel
        # gradient, without the forward convolution jax.vjp would also trace.
        return dx, jax.linear_transpose(lambda k: _conv_stride2(dy, k), kernel)(x)[0]

    f.defvjp(f_fwd, f_bwd)
    return f


# upsample impl -> conv impl ("cpu" or "xla", as resolved by `_resolved`) -> function
_IMPLS = {
    "dilated": {"cpu": _dilated, "xla": _dilated},  # plain autodiff: the reference formulation
    "phases": {"cpu": _with_adjoint_vjp(_phases, True), "xla": _with_adjoint_vjp(_phases, False)},
    "subpixel": {"cpu": _with_adjoint_vjp(_subpixel, True), "xla": _with_adjoint_vjp(_subpixel, False)},
}


def conv_transpose_4x4_s2(x: jax.Array, kernel: jax.Array, impl: str = "phases", conv_impl: str = "auto") -> jax.Array:
    """PyTorch's ``conv_transpose2d(x, w, stride=2, padding=1)`` for 4x4 kernels, NHWC.

    ``kernel`` has shape (4, 4, in, out), i.e. the PyTorch weight (in, out, 4, 4)
    transposed by (2, 3, 0, 1). All implementations compute the same function:
    ``"dilated"`` convolves the zero-dilated input with the flipped kernel; ``"phases"``
    computes the four output phases as four 2x2 convolutions; ``"subpixel"`` as one 3x3
    convolution followed by depth-to-space. The last two carry hand-written VJPs, whose
    kernel gradient follows ``conv_impl`` (see `make_conv_general_dilated`).
    """
    if impl not in _IMPLS:
        raise ValueError(f"upsample impl {impl!r} is unknown; allowed: {', '.join(UPSAMPLE_IMPLS)}")
    return _IMPLS[impl][_resolved(conv_impl)](x, kernel)


# Convolutions tuned for XLA:CPU (see experiments/bench/README.md). Outside
# differentiation (sampling, evaluation), 3x3 convolutions on at most 32x32 pixels use
# Winograd F(2x2, 3x3) (2.25x fewer multiplications). Under differentiation the forward
# passes are XLA's own; the kernel gradients are XLA's convolutions in canonical form
# (`_conv_kernel_grad`), except 3x3 ones on 8x8 to 16x16 pixels with >= 2^17 weights,
# which use Winograd (`_winograd_kernel_grad`); the input gradients are computed in forms
# that XLA:CPU runs faster than the autodiff of the forward pass:
# - 3x3 on at most 32x32 pixels with >= 128 channels in and out: Winograd;
# - other 3x3, stride 1, padding 1, at most 8x8 pixels and wide: nine per-tap matrix
#   products (the autodiff form flips and transposes a large kernel and is ~2x slower);
# - 4x4, stride 2, padding 1: the transposed convolution computed as four 2x2
#   convolutions on the cotangent (`_phases`), where autodiff convolves a zero-dilated
#   cotangent (4x the multiplications); for outputs of at most 4x4 pixels, one matrix
#   product with the kernel's 16 taps and col2im (8x8x1024 -> 4x4x1024 at batch 16:
#   59 -> 26 ms, most of it the phase slices of the 64 MB kernel;
#   scripts/bench_conv_grads.py times each form of each layer);
# - else: the canonical convolution with the flipped kernel (`_conv3x3_input_grad`).
# 1x1 convolutions are matrix products.
CONV_IMPLS = ("auto", "xla", "cpu")
_TAPS_MAX_PIXELS = 64
_TAPS_MIN_WEIGHTS = 2**19
_WINOGRAD_MAX_PIXELS = 32 * 32
_WINOGRAD_MIN_CHANNELS = 64
_S2_GEMM_MAX_PIXELS = 4 * 4
_WINOGRAD_KERNEL_GRAD_PIXELS = (8 * 8, 16 * 16)
_WINOGRAD_KERNEL_GRAD_MIN_WEIGHTS = 2**17


def _conv(x: jax.Array, kernel: jax.Array, stride: int, precision=None) -> jax.Array:
    return jax.lax.conv_general_dilated(
        x, kernel, (stride, stride), ((1, 1), (1, 1)), dimension_numbers=_NHWC, precision=precision
    )


# XLA:CPU runs a convolution fast (Eigen) only in its canonical form: NHWC input, HWIO
# kernel, NHWC output. Autodiff's gradient convolutions are not in that form; XLA:CPU
# rewrites them with transposes, but only in a program's top-level computation, not
# inside loops (lax.scan, fori_loop), where they ran 15-50x slower. The gradients below
# are written as canonical convolutions of explicitly transposed operands: the same
# transposes and sums as XLA's rewrite (equal to autodiff bit for bit in float64), in
# every computation.
def _conv_kernel_grad(x: jax.Array, dy: jax.Array, stride: int, precision=None) -> jax.Array:
    """d/dkernel of ``_conv(x, kernel, stride)`` at cotangent ``dy``: the correlation of
    x and dy over batch and pixels, as a convolution with batch C and features N."""
    xt = x.transpose(3, 1, 2, 0)  # (C, H, W, N)
    dyk = dy.transpose(1, 2, 0, 3)  # (P, Q, N, O) as the kernel
    out = jax.lax.conv_general_dilated(
        xt, dyk, (1, 1), ((1, 1), (1, 1)), rhs_dilation=(stride, stride), dimension_numbers=_NHWC, precision=precision
    )
    return out.transpose(1, 2, 0, 3)  # (C, kh, kw, O) -> (kh, kw, C, O)


def _conv3x3_input_grad(dy: jax.Array, kernel: jax.Array, precision=None) -> jax.Array:
    """d/dx of ``_conv(x, kernel, 1)``: the convolution with the flipped, in/out-swapped kernel."""
    return _conv(dy, kernel[::-1, ::-1].transpose(0, 1, 3, 2), 1, precision)


# Winograd F(2x2, 3x3) (Lavin & Gray 2016): a 3x3, padding-1 convolution computed on
# 4x4 input tiles (stride 2) as 16 matrix products over channels, 16 multiplications
# per 2x2 outputs instead of 36. With d a tile, g the kernel and Y the 2x2 outputs:
# Y = AT [(G g G^T) * (BT d BT^T)] AT^T, elementwise in the middle.
_WINO_BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float64)
_WINO_G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], np.float64)
_WINO_AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float64)
# The input gradient is the convolution with the flipped, in/out-swapped kernel. Its
# transform is the same u with tile rows and columns permuted (G J = P G, P swapping rows
# 0 and 3), so the data and output transforms take the permutation instead.
_WINO_SWAP = np.eye(4)[[3, 1, 2, 0]]
_WINOGRAD_MIN_CHANNELS_INPUT_GRAD = 128


def _winograd_kernel(kernel: jax.Array) -> jax.Array:
    """(3, 3, C, O) -> (16, C, O): G g G^T for each channel pair, tile index k * 4 + l."""
    gg = jnp.asarray(np.kron(_WINO_G, _WINO_G), kernel.dtype)
    c, o = kernel.shape[2:]
    return (gg @ kernel.reshape(9, c * o)).reshape(16, c, o)


def _lincomb(parts: list, coefficients: np.ndarray):
    out = None
    for c, p in zip(coefficients, parts):
        if c != 0:
            term = p if c == 1 else -p if c == -1 else p * c
            out = term if out is None else out + term
    return out


def _winograd_tiles(x: jax.Array, bt: np.ndarray) -> tuple[jax.Array, tuple[int, int, int]]:
    """The data transform BT d BT^T of every 4x4 input tile (stride 2) of the padding-1
    NHWC ``x``: (16, tiles, C), tile index k * 4 + l, and the tile grid (B, nh, nw)."""
    b, h, w, c = x.shape
    nh, nw = -(-h // 2), -(-w // 2)
    xp = jnp.pad(x, ((0, 0), (1, 1 + 2 * nh - h), (1, 1 + 2 * nw - w), (0, 0)))
    rows = [xp[:, i : i + 2 * nh - 1 : 2] for i in range(4)]  # tile row i of every tile
    v = []
    for row in (_lincomb(rows, bt[k]) for k in range(4)):
        cols = [row[:, :, j : j + 2 * nw - 1 : 2] for j in range(4)]
        v.extend(_lincomb(cols, bt[m]) for m in range(4))
    return jnp.stack(v).reshape(16, b * nh * nw, c), (b, nh, nw)


def _winograd_conv3x3(x: jax.Array, u: jax.Array, flipped: bool = False, precision=None) -> jax.Array:
    """3x3, stride-1, padding-1 convolution of NHWC ``x`` with the kernel whose transform
    is ``u`` (`_winograd_kernel`); any H and W (odd sizes are padded to whole tiles).
    ``flipped``: with that kernel flipped and its in/out channels swapped instead (the
    input gradient of the convolution, ``x`` being the output cotangent)."""
    bt, at = (_WINO_SWAP @ _WINO_BT, _WINO_AT @ _WINO_SWAP) if flipped else (_WINO_BT, _WINO_AT)
    _, h, w, _ = x.shape
    v, (b, nh, nw) = _winograd_tiles(x, bt)
    prod = jnp.einsum("tnc,toc->tno" if flipped else "tnc,tco->tno", v, u, precision=precision).reshape(4, 4, b, nh, nw, -1)
    y = []
    for p in range(2):
        row = _lincomb([prod[k] for k in range(4)], at[p])
        y.append(jnp.stack([_lincomb([row[m] for m in range(4)], at[q]) for q in range(2)]))
    y = jnp.stack(y).transpose(2, 3, 0, 4, 1, 5).reshape(b, 2 * nh, 2 * nw, -1)
    return y[:, :h, :w]


def _winograd_kernel_grad(x: jax.Array, dy: jax.Array, precision=None) -> jax.Array:
    """d/dkernel of the 3x3, stride-1, padding-1 convolution of ``x`` at cotangent ``dy``
    through Winograd F(2x2, 3x3): y = AT [u * v] AT^T per tile is linear in u, so
    du = sum over tiles of (AT^T dy AT) * v (one matrix product per tile position), and
    d/dkernel = G^T du G."""
    v, (b, nh, nw) = _winograd_tiles(x, _WINO_BT)
    _, h, w, o = dy.shape
    dyp = jnp.pad(dy, ((0, 0), (0, 2 * nh - h), (0, 2 * nw - w), (0, 0)))
    rows = [dyp[:, p::2] for p in range(2)]  # output row p of every tile
    dm = []
    for row in (_lincomb(rows, _WINO_AT[:, k]) for k in range(4)):
        cols = [row[:, :, q::2] for q in range(2)]
        dm.extend(_lincomb(cols, _WINO_AT[:, m]) for m in range(4))
    dm = jnp.stack(dm).reshape(16, b * nh * nw, o)
    du = jnp.einsum("tnc,tno->tco", v, dm, precision=precision)
    gg = jnp.asarray(np.kron(_WINO_G, _WINO_G).T, du.dtype)
    return (gg @ du.reshape(16, -1)).reshape(3, 3, x.shape[-1], o)


def _use_winograd(x_shape: Sequence[int], kernel_shape: Sequence[int], stride: int) -> bool:
    """Where Winograd was measured faster than XLA:CPU's convolution in the sampling chain
    (experiments/bench): images of at most 32x32 pixels, at least 64 channels in and out
    (with fewer, its tile transforms cost more than the multiplications it saves, and they
    make a program several times slower to compile)."""
    return (stride == 1 and x_shape[1] * x_shape[2] <= _WINOGRAD_MAX_PIXELS
            and min(kernel_shape[2:]) >= _WINOGRAD_MIN_CHANNELS)


def _use_winograd_kernel_grad(dy_shape: Sequence[int], kernel_shape: Sequence[int]) -> bool:
    """Where the Winograd kernel gradient was measured faster than XLA's inside a training
    loop (experiments/bench): 8x8 to 16x16 pixels, wide kernels."""
    lo, hi = _WINOGRAD_KERNEL_GRAD_PIXELS
    return lo <= dy_shape[1] * dy_shape[2] <= hi and kernel_shape[2] * kernel_shape[3] >= _WINOGRAD_KERNEL_GRAD_MIN_WEIGHTS


def _conv3x3_input_grad_taps(dy: jax.Array, kernel: jax.Array, precision=None) -> jax.Array:
    _, h, w, _ = dy.shape
    padded = jnp.pad(dy, ((0, 0), (1, 1), (1, 1), (0, 0)))
    dx = None
    for i in range(3):
        for j in range(3):
            window = padded[:, 2 - i : 2 - i + h, 2 - j : 2 - j + w]
            term = jnp.einsum("bhwo,co->bhwc", window, kernel[i, j], precision=precision)
            dx = term if dx is None else dx + term
    return dx


def _conv_stride2_input_grad_gemm(dy: jax.Array, kernel: jax.Array, precision=None) -> jax.Array:
    """d/dx of ``_conv(x, kernel, 2)`` (4x4 kernel, padding 1) as one matrix product of the
    cotangent with the kernel's 16 taps side by side, then each tap's product added at its
    place in the padded input (col2im). On small images this skips the transposed and
    phase-sliced copies of a large kernel that `_phases` needs."""
    n, p, q, _ = dy.shape
    c = kernel.shape[2]
    z = jnp.einsum("npqo,ko->npqk", dy, kernel.reshape(16 * c, -1), precision=precision).reshape(n, p, q, 4, 4, c)
    # Padded input row 2r + a (a in {0, 1}) gets tap a from output row r and tap a + 2 from
    # output row r - 1; the same for columns.
    shifts = {0: ((0, 1),), 1: ((1, 0),)}

    def phase(a, b):  # (n, p + 1, q + 1, c): padded rows 2r + a, columns 2s + b
        terms = [jnp.pad(z[:, :, :, a + 2 * di, b + 2 * dj], ((0, 0), *shifts[di], *shifts[dj], (0, 0)))
                 for di in range(2) for dj in range(2)]
        return sum(terms[1:], terms[0])

    return _interleave(phase)[:, 1:-1, 1:-1]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _tuned_conv(x: jax.Array, kernel: jax.Array, stride: int, precision=None) -> jax.Array:
    # Not differentiated (sampling, evaluation): Winograd where it pays. Under
    # differentiation the forward pass stays XLA's: Winograd's different rounding in a
    # training step's forward pass measurably changed which small gradients flip sign
    # (python -m parity); the input gradient may use it (`_tuned_conv_bwd`).
    if _use_winograd(x.shape, kernel.shape, stride):
        return _winograd_conv3x3(x, _winograd_kernel(kernel), precision=precision).astype(x.dtype)
    return _conv(x, kernel, stride, precision)


def _tuned_conv_fwd(x, kernel, stride, precision):
    return _conv(x, kernel, stride, precision), (x, kernel)


# The forms of the gradients by stride, (cotangent, kernel, precision) -> d/dx and
# (x, cotangent, stride, precision) -> d/dkernel; `_grad_forms` picks them by shape.
_INPUT_GRADS = {
    1: {
        "xla": _conv3x3_input_grad,
        "taps": _conv3x3_input_grad_taps,
        "winograd": lambda dy, kernel, precision: _winograd_conv3x3(dy, _winograd_kernel(kernel), flipped=True, precision=precision),
    },
    2: {
        "phases": lambda dy, kernel, precision: _phases(dy, kernel.transpose(0, 1, 3, 2)),
        "gemm": _conv_stride2_input_grad_gemm,
    },
}
_KERNEL_GRADS = {
    1: {"xla": _conv_kernel_grad, "winograd": lambda x, dy, stride, precision: _winograd_kernel_grad(x, dy, precision)},
    2: {"xla": _conv_kernel_grad},
}


def _grad_forms(stride: int, dy_shape: Sequence[int], kernel_shape: Sequence[int]) -> tuple[str, str]:
    """The names of the input and kernel gradient forms `_tuned_conv` uses for a shape."""
    pixels, weights = dy_shape[1] * dy_shape[2], kernel_shape[2] * kernel_shape[3]
    if stride == 2:  # the adjoint of this convolution is a transposed convolution
        return ("gemm" if pixels <= _S2_GEMM_MAX_PIXELS else "phases"), "xla"
    kernel_grad = "winograd" if _use_winograd_kernel_grad(dy_shape, kernel_shape) else "xla"
    if _use_winograd(dy_shape, kernel_shape, stride) and min(kernel_shape[2:]) >= _WINOGRAD_MIN_CHANNELS_INPUT_GRAD:
        return "winograd", kernel_grad
    if pixels <= _TAPS_MAX_PIXELS and weights >= _TAPS_MIN_WEIGHTS:
        return "taps", kernel_grad
    return "xla", kernel_grad


def _tuned_conv_bwd(stride, precision, residuals, dy):
    x, kernel = residuals
    input_grad, kernel_grad = _grad_forms(stride, dy.shape, kernel.shape)
    dx = _INPUT_GRADS[stride][input_grad](dy, kernel, precision)
    dkernel = _KERNEL_GRADS[stride][kernel_grad](x, dy, stride, precision)
    return dx.astype(x.dtype), dkernel.astype(kernel.dtype)


_tuned_conv.defvjp(_tuned_conv_fwd, _tuned_conv_bwd)


def _is_plain_nhwc(x_shape, kernel_shape, lhs_dilation, rhs_dilation, dimension_numbers, groups) -> bool:
    """Whether a convolution is 2-D, NHWC/HWIO/NHWC, ungrouped and undilated."""
    if groups != 1 or len(x_shape) != 4 or any(d not in (None, 1) for d in (*(lhs_dilation or ()), *(rhs_dilation or ()))):
        return False
    return jax.lax.conv_dimension_numbers(x_shape, kernel_shape, _NHWC) == jax.lax.conv_dimension_numbers(
        x_shape, kernel_shape, dimension_numbers
    )


def _tunable(x_shape, kernel_shape, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers, groups) -> int:
    """The stride of a convolution `_tuned_conv` computes, or 0 if it does not."""
    if not _is_plain_nhwc(x_shape, kernel_shape, lhs_dilation, rhs_dilation, dimension_numbers, groups):
        return 0
    if isinstance(padding, str) or tuple(map(tuple, padding)) != ((1, 1), (1, 1)):
        return 0
    k, strides = tuple(kernel_shape[:2]), tuple(window_strides)
    if k == (3, 3) and strides == (1, 1):
        return 1
    if k == (4, 4) and strides == (2, 2) and x_shape[1] % 2 == 0 and x_shape[2] % 2 == 0:
        return 2
    return 0


def _is_pointwise(x_shape, kernel_shape, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers, groups) -> bool:
    """Whether a convolution is 1x1, stride 1, unpadded, NHWC/HWIO, ungrouped and undilated."""
    if tuple(kernel_shape[:2]) != (1, 1) or tuple(window_strides) != (1, 1):
        return False
    if padding not in ("VALID", "SAME") and (isinstance(padding, str) or tuple(map(tuple, padding)) != ((0, 0), (0, 0))):
        return False
    return _is_plain_nhwc(x_shape, kernel_shape, lhs_dilation, rhs_dilation, dimension_numbers, groups)


def _resolved(impl: str) -> str:
    """``"cpu"`` or ``"xla"``: ``impl``, with ``"auto"`` resolved by JAX's default backend."""
    if impl not in CONV_IMPLS:
        raise ValueError(f"conv impl {impl!r} is unknown; allowed: {', '.join(CONV_IMPLS)}")
    return impl if impl != "auto" else ("cpu" if jax.default_backend() == "cpu" else "xla")


def make_conv_general_dilated(impl: str):
    """A drop-in for ``lax.conv_general_dilated`` (as ``nn.Conv(conv_general_dilated=...)``).

    ``"xla"``: XLA's convolution and its autodiff. ``"cpu"``: Winograd for undifferentiated
    3x3 convolutions on small images, the hand-written gradients above for 3x3/stride-1
    and 4x4/stride-2 convolutions (padding 1, NHWC), which stay fast inside loops, and
    1x1 convolutions as matrix products; anything else is XLA's.
    ``"auto"``: ``"cpu"`` when JAX's default backend is the CPU, else ``"xla"``. All compute the same function.
    """
    use = _resolved(impl)

    def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                             dimension_numbers=None, feature_group_count=1, precision=None, **kwargs):
        stride = 0
        if use == "cpu" and not kwargs:
            stride = _tunable(lhs.shape, rhs.shape, window_strides, padding, lhs_dilation, rhs_dilation,
                              dimension_numbers, feature_group_count)
        if stride:
            return _tuned_conv(lhs, rhs, stride, precision)
        if use == "cpu" and not kwargs and _is_pointwise(lhs.shape, rhs.shape, window_strides, padding, lhs_dilation,
                                                          rhs_dilation, dimension_numbers, feature_group_count):
            # A 1x1 convolution is a matrix product; as one, its gradients are too (in loops as well).
            return jnp.einsum("nhwc,co->nhwo", lhs, rhs[0, 0], precision=precision)
        return jax.lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
            dimension_numbers=dimension_numbers, feature_group_count=feature_group_count, precision=precision, **kwargs,
        )

    return conv_general_dilated


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
    impl: str = "phases"
    conv_impl: str = "auto"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        shape = (4, 4, x.shape[-1], self.features)
        kernel = self.param("kernel", nn.initializers.lecun_normal(), shape, self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros, (self.features,), self.param_dtype)
        y = conv_transpose_4x4_s2(x.astype(self.dtype), kernel.astype(self.dtype), self.impl, self.conv_impl)
        return y + bias.astype(self.dtype).reshape(1, 1, 1, self.features)


class ConvBlock(nn.Module):
    """conv3x3-ReLU-BN, add the projected time embedding, conv3x3-ReLU-BN, resample by 2."""

    features: int
    upsample: bool = False
    upsample_impl: str = "phases"
    conv_impl: str = "auto"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, t_emb: jax.Array, train: bool) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        ckw = dict(kw, conv_general_dilated=make_conv_general_dilated(self.conv_impl))
        pad1 = ((1, 1), (1, 1))
        h = nn.Conv(self.features, (3, 3), padding=pad1, name="conv1", **ckw)(x)
        h = BatchNorm(name="bn1", **kw)(nn.relu(h), train)
        time_emb = nn.relu(nn.Dense(self.features, name="time_mlp", **kw)(t_emb))
        h = h + time_emb[:, None, None, :]
        h = nn.Conv(self.features, (3, 3), padding=pad1, name="conv2", **ckw)(h)
        h = BatchNorm(name="bn2", **kw)(nn.relu(h), train)
        if self.upsample:
            return ConvTranspose4x4(self.features, self.upsample_impl, self.conv_impl, name="transform", **kw)(h)
        return nn.Conv(self.features, (4, 4), strides=(2, 2), padding=pad1, name="transform", **ckw)(h)


class SimpleUNet(nn.Module):
    """The article's U-Net noise predictor ``eps(x_t, t)``.

    ``channels`` are the widths of the down path (the up path mirrors them); each of the
    ``len(channels) - 1`` levels halves H and W, so image sizes must be divisible by
    ``2 ** (len(channels) - 1)``. The defaults give the article's 62,438,883 parameters.
    """

    channels: Sequence[int] = (64, 128, 256, 512, 1024)
    out_channels: int = 3
    time_emb_dim: int = 32
    upsample_impl: str = "phases"
    conv_impl: str = "auto"  # auto | xla | cpu: how convolution gradients are computed (same math)
    num_classes: int = 0  # > 0: class-conditional, label num_classes meaning "no label"
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(
        self, x_BxHxWxC: jax.Array, t_B: jax.Array, train: bool, labels_B: jax.Array | None = None
    ) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        t_emb = sinusoidal_embedding(t_B, self.time_emb_dim, self.dtype)
        t_emb = nn.relu(nn.Dense(self.time_emb_dim, name="time_mlp", **kw)(t_emb))
        t_emb = t_emb + label_embedding(self.num_classes, self.time_emb_dim, labels_B, t_B.shape[0], **kw)

        conv = make_conv_general_dilated(self.conv_impl)
        x = nn.Conv(self.channels[0], (3, 3), padding=((1, 1), (1, 1)), name="init_conv", conv_general_dilated=conv, **kw)(x_BxHxWxC)
        skips = []
        for i, features in enumerate(self.channels[1:]):
            x = ConvBlock(features, conv_impl=self.conv_impl, name=f"down_blocks_{i}", **kw)(x, t_emb, train)
            skips.append(x)
        up_channels = tuple(reversed(self.channels))
        for i, features in enumerate(up_channels[1:]):
            x = jnp.concatenate([x, skips.pop()], axis=-1)
            block = ConvBlock(
                features, upsample=True, upsample_impl=self.upsample_impl, conv_impl=self.conv_impl, name=f"up_blocks_{i}", **kw
            )
            x = block(x, t_emb, train)
        return nn.Conv(self.out_channels, (1, 1), name="final_conv", conv_general_dilated=conv, **kw)(x)
