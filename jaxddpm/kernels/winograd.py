"""Winograd F(2x2, 3x3) (Lavin & Gray 2016) for 3x3, stride-1, padding-1 NHWC convolutions.

A convolution is computed on 4x4 input tiles (stride 2) as 16 matrix products over channels:
16 multiplications per 2x2 outputs instead of 36. With d a tile, g the kernel and Y the 2x2
outputs: Y = AT [(G g G^T) * (BT d BT^T)] AT^T, elementwise in the middle.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float64)
G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], np.float64)
AT = np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float64)
# The input gradient is the convolution with the flipped, in/out-swapped kernel. Its
# transform is the same u with tile rows and columns permuted (G J = P G, P swapping rows
# 0 and 3), so the data and output transforms take the permutation instead.
SWAP = np.eye(4)[[3, 1, 2, 0]]


def transform_kernel(kernel: jax.Array) -> jax.Array:
    """(3, 3, C, O) -> (16, C, O): G g G^T for each channel pair, tile index k * 4 + l."""
    gg = jnp.asarray(np.kron(G, G), kernel.dtype)
    c, o = kernel.shape[2:]
    return (gg @ kernel.reshape(9, c * o)).reshape(16, c, o)


def _lincomb(parts: list, coefficients: np.ndarray):
    out = None
    for c, p in zip(coefficients, parts):
        if c != 0:
            term = p if c == 1 else -p if c == -1 else p * c
            out = term if out is None else out + term
    return out


def _tiles(x: jax.Array, bt: np.ndarray) -> tuple[jax.Array, tuple[int, int, int]]:
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


def conv3x3(x: jax.Array, u: jax.Array, flipped: bool = False, precision=None) -> jax.Array:
    """3x3, stride-1, padding-1 convolution of NHWC ``x`` with the kernel whose transform
    is ``u`` (`transform_kernel`); any H and W (odd sizes are padded to whole tiles).
    ``flipped``: with that kernel flipped and its in/out channels swapped instead (the
    input gradient of the convolution, ``x`` being the output cotangent)."""
    bt, at = (SWAP @ BT, AT @ SWAP) if flipped else (BT, AT)
    _, h, w, _ = x.shape
    v, (b, nh, nw) = _tiles(x, bt)
    prod = jnp.einsum("tnc,toc->tno" if flipped else "tnc,tco->tno", v, u, precision=precision).reshape(4, 4, b, nh, nw, -1)
    y = []
    for p in range(2):
        row = _lincomb([prod[k] for k in range(4)], at[p])
        y.append(jnp.stack([_lincomb([row[m] for m in range(4)], at[q]) for q in range(2)]))
    y = jnp.stack(y).transpose(2, 3, 0, 4, 1, 5).reshape(b, 2 * nh, 2 * nw, -1)
    return y[:, :h, :w]


def kernel_grad(x: jax.Array, dy: jax.Array, precision=None) -> jax.Array:
    """d/dkernel of the 3x3, stride-1, padding-1 convolution of ``x`` at cotangent ``dy``
    through Winograd F(2x2, 3x3): y = AT [u * v] AT^T per tile is linear in u, so
    du = sum over tiles of (AT^T dy AT) * v (one matrix product per tile position), and
    d/dkernel = G^T du G."""
    v, (b, nh, nw) = _tiles(x, BT)
    _, h, w, o = dy.shape
    dyp = jnp.pad(dy, ((0, 0), (0, 2 * nh - h), (0, 2 * nw - w), (0, 0)))
    rows = [dyp[:, p::2] for p in range(2)]  # output row p of every tile
    dm = []
    for row in (_lincomb(rows, AT[:, k]) for k in range(4)):
        cols = [row[:, :, q::2] for q in range(2)]
        dm.extend(_lincomb(cols, AT[:, m]) for m in range(4))
    dm = jnp.stack(dm).reshape(16, b * nh * nw, o)
    du = jnp.einsum("tnc,tno->tco", v, dm, precision=precision)
    gg = jnp.asarray(np.kron(G, G).T, du.dtype)
    return (gg @ du.reshape(16, -1)).reshape(3, 3, x.shape[-1], o)
