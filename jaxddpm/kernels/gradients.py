"""Gradient forms of 3x3/stride-1 and 4x4/stride-2 (padding 1, NHWC) convolutions that
XLA:CPU runs fast, also inside loops (``lax.scan``, ``fori_loop``).

XLA:CPU runs a convolution fast (Eigen) only in its canonical form: NHWC input, HWIO kernel,
NHWC output. Autodiff's gradient convolutions are not in that form; XLA:CPU rewrites them
with transposes, but only in a program's top-level computation, not inside loops, where they
ran 15-50x slower. The forms below are canonical convolutions of explicitly transposed
operands (the same transposes and sums as XLA's rewrite: equal to autodiff bit for bit in
float64), per-tap matrix products, or Winograd. `ConvPolicy.grad_forms` picks one per shape.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxddpm.kernels import forms, winograd
from jaxddpm.kernels.forms import NHWC


def conv(x: jax.Array, kernel: jax.Array, stride: int, precision=None) -> jax.Array:
    """The padding-1 NHWC convolution the forms below differentiate."""
    return jax.lax.conv_general_dilated(
        x, kernel, (stride, stride), ((1, 1), (1, 1)), dimension_numbers=NHWC, precision=precision
    )


def conv_kernel_grad(x: jax.Array, dy: jax.Array, stride: int, precision=None) -> jax.Array:
    """d/dkernel of ``conv(x, kernel, stride)`` at cotangent ``dy``: the correlation of
    x and dy over batch and pixels, as a convolution with batch C and features N."""
    xt = x.transpose(3, 1, 2, 0)  # (C, H, W, N)
    dyk = dy.transpose(1, 2, 0, 3)  # (P, Q, N, O) as the kernel
    out = jax.lax.conv_general_dilated(
        xt, dyk, (1, 1), ((1, 1), (1, 1)), rhs_dilation=(stride, stride), dimension_numbers=NHWC, precision=precision
    )
    return out.transpose(1, 2, 0, 3)  # (C, kh, kw, O) -> (kh, kw, C, O)


def conv3x3_input_grad(dy: jax.Array, kernel: jax.Array, precision=None) -> jax.Array:
    """d/dx of ``conv(x, kernel, 1)``: the convolution with the flipped, in/out-swapped kernel."""
    return conv(dy, kernel[::-1, ::-1].transpose(0, 1, 3, 2), 1, precision)


def conv3x3_input_grad_taps(dy: jax.Array, kernel: jax.Array, precision=None) -> jax.Array:
    """d/dx of ``conv(x, kernel, 1)`` as nine per-tap matrix products: on small images with
    wide kernels, autodiff's form flips and transposes a large kernel and is about 2x slower."""
    _, h, w, _ = dy.shape
    padded = jnp.pad(dy, ((0, 0), (1, 1), (1, 1), (0, 0)))
    dx = None
    for i in range(3):
        for j in range(3):
            window = padded[:, 2 - i : 2 - i + h, 2 - j : 2 - j + w]
            term = jnp.einsum("bhwo,co->bhwc", window, kernel[i, j], precision=precision)
            dx = term if dx is None else dx + term
    return dx


def conv_stride2_input_grad_gemm(dy: jax.Array, kernel: jax.Array, precision=None) -> jax.Array:
    """d/dx of ``conv(x, kernel, 2)`` (4x4 kernel) as one matrix product of the cotangent
    with the kernel's 16 taps side by side, then each tap's product added at its place in
    the padded input (col2im). On small images this skips the transposed and phase-sliced
    copies of a large kernel that `forms.phases` needs."""
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

    return forms.interleave(phase)[:, 1:-1, 1:-1]


# By stride: (cotangent, kernel, precision) -> d/dx and (x, cotangent, stride, precision) -> d/dkernel.
INPUT_GRADS = {
    1: {
        "xla": conv3x3_input_grad,
        "taps": conv3x3_input_grad_taps,
        "winograd": lambda dy, kernel, precision: winograd.conv3x3(
            dy, winograd.transform_kernel(kernel), flipped=True, precision=precision),
    },
    2: {
        # The adjoint of a stride-2 convolution is a transposed convolution: four 2x2
        # convolutions on the cotangent, where autodiff convolves a zero-dilated one.
        "phases": lambda dy, kernel, precision: forms.phases(dy, kernel.transpose(0, 1, 3, 2)),
        "gemm": conv_stride2_input_grad_gemm,
    },
}
KERNEL_GRADS = {
    1: {"xla": conv_kernel_grad, "winograd": lambda x, dy, stride, precision: winograd.kernel_grad(x, dy, precision)},
    2: {"xla": conv_kernel_grad},
}
