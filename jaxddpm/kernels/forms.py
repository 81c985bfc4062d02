"""Forward forms of PyTorch's ``conv_transpose2d(x, w, stride=2, padding=1)`` for 4x4 kernels
(NHWC input, kernel (4, 4, in, out)), and the strided convolution it is the transpose of.

All compute the same function: `dilated` convolves the zero-dilated input with the flipped
kernel (what autodiff of a strided convolution does); `phases` computes the four output
phases as four 2x2 convolutions; `subpixel` as one 3x3 convolution and depth-to-space.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

NHWC = ("NHWC", "HWIO", "NHWC")


# Sub-pixel form: output row 2m + a reads input rows m - 1 + a and m + a through kernel rows
# 3 - a and 1 - a. On the input padded by one, all four output phases are one 3x3
# convolution whose kernel at (row r, col c, phase a, b) is the transposed kernel at
# (3 + a - 2r, 3 + b - 2c), or zero where r - a or c - b is outside {0, 1}.
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


def conv_stride2(u: jax.Array, kernel: jax.Array) -> jax.Array:
    """The adjoint of the transposed convolution: a 4x4, stride-2, padding-1 convolution
    from the output channels back to the input channels with the same kernel."""
    return jax.lax.conv_general_dilated(u, kernel.transpose(0, 1, 3, 2), (2, 2), ((1, 1), (1, 1)), dimension_numbers=NHWC)


def dilated(x: jax.Array, kernel: jax.Array) -> jax.Array:
    return jax.lax.conv_general_dilated(
        x, kernel[::-1, ::-1], (1, 1), ((2, 2), (2, 2)), lhs_dilation=(2, 2), dimension_numbers=NHWC
    )


def interleave(phase) -> jax.Array:
    """The image whose pixel (2i + a, 2j + b) is pixel (i, j) of ``phase(a, b)``, for four
    (N, H, W, C) phases: (N, 2H, 2W, C)."""
    rows = [jnp.stack([phase(a, b) for b in range(2)], axis=3) for a in range(2)]
    n, h, w, _, c = rows[0].shape
    return jnp.stack(rows, axis=2).reshape(n, 2 * h, 2 * w, c)


def phases(x: jax.Array, kernel: jax.Array) -> jax.Array:
    _, h, w, _ = x.shape
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))

    def phase(a, b):
        k_ab = kernel[3 - a :: -2, 3 - b :: -2]  # kernel rows 3 - a, 1 - a; columns 3 - b, 1 - b
        window = xp[:, a : a + h + 1, b : b + w + 1]
        return jax.lax.conv_general_dilated(window, k_ab, (1, 1), "VALID", dimension_numbers=NHWC)

    return interleave(phase)


def subpixel(x: jax.Array, kernel: jax.Array) -> jax.Array:
    n, h, w, _ = x.shape
    c_out = kernel.shape[-1]
    k3 = kernel[_SUBPIXEL_ROWS, _SUBPIXEL_COLS] * jnp.asarray(_SUBPIXEL_MASK, kernel.dtype)[..., None, None]
    # (3, 3, a, b, in, out) -> (3, 3, in, a, b, out)
    k3 = k3.transpose(0, 1, 4, 2, 3, 5).reshape(3, 3, -1, 4 * c_out)
    y = jax.lax.conv_general_dilated(x, k3, (1, 1), ((1, 1), (1, 1)), dimension_numbers=NHWC)
    y = y.reshape(n, h, w, 2, 2, c_out).transpose(0, 1, 3, 2, 4, 5)
    return y.reshape(n, 2 * h, 2 * w, c_out)
