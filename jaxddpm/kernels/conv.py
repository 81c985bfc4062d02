"""Convolutions as a `ConvPolicy` computes them: a drop-in for ``lax.conv_general_dilated``
(`make_conv_general_dilated`) and the 4x4, stride-2 transposed convolution
(`conv_transpose_4x4_s2`). Every form computes the same function; only speed differs.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxddpm.kernels import forms, winograd
from jaxddpm.kernels.forms import NHWC
from jaxddpm.kernels.gradients import INPUT_GRADS, KERNEL_GRADS, conv, conv_kernel_grad
from jaxddpm.kernels.policy import ConvPolicy


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def tuned_conv(x: jax.Array, kernel: jax.Array, stride: int, policy: ConvPolicy, precision=None) -> jax.Array:
    """``gradients.conv(x, kernel, stride)`` with the forms ``policy`` picks.

    Not differentiated (sampling, evaluation): Winograd where the policy says it pays. Under
    differentiation the forward pass stays XLA's (Winograd rounds differently, and in a
    training step's forward pass that measurably changed which small gradients flip sign in
    ``python -m parity``); the gradients take the policy's forms (`ConvPolicy.grad_forms`).
    """
    if policy.use_winograd(x.shape, kernel.shape, stride):
        return winograd.conv3x3(x, winograd.transform_kernel(kernel), precision=precision).astype(x.dtype)
    return conv(x, kernel, stride, precision)


def _tuned_conv_fwd(x, kernel, stride, policy, precision):
    return conv(x, kernel, stride, precision), (x, kernel)


def _tuned_conv_bwd(stride, policy, precision, residuals, dy):
    x, kernel = residuals
    input_grad, kernel_grad = policy.grad_forms(stride, dy.shape, kernel.shape)
    dx = INPUT_GRADS[stride][input_grad](dy, kernel, precision)
    dkernel = KERNEL_GRADS[stride][kernel_grad](x, dy, stride, precision)
    return dx.astype(x.dtype), dkernel.astype(kernel.dtype)


tuned_conv.defvjp(_tuned_conv_fwd, _tuned_conv_bwd)


def _is_plain_nhwc(x_shape, kernel_shape, lhs_dilation, rhs_dilation, dimension_numbers, groups) -> bool:
    """Whether a convolution is 2-D, NHWC/HWIO/NHWC, ungrouped and undilated."""
    if groups != 1 or len(x_shape) != 4 or any(d not in (None, 1) for d in (*(lhs_dilation or ()), *(rhs_dilation or ()))):
        return False
    return jax.lax.conv_dimension_numbers(x_shape, kernel_shape, NHWC) == jax.lax.conv_dimension_numbers(
        x_shape, kernel_shape, dimension_numbers
    )


def _tunable(x_shape, kernel_shape, window_strides, padding, lhs_dilation, rhs_dilation, dimension_numbers, groups) -> int:
    """The stride of a convolution `tuned_conv` computes, or 0 if it does not."""
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


def make_conv_general_dilated(policy: ConvPolicy):
    """A drop-in for ``lax.conv_general_dilated`` (as ``nn.Conv(conv_general_dilated=...)``)
    that computes 3x3/stride-1 and 4x4/stride-2 convolutions (padding 1, NHWC) with
    `tuned_conv` and 1x1 convolutions as matrix products when the policy resolves to
    ``"cpu"``; anything else, and everything under ``"xla"``, is XLA's own."""
    use_cpu_forms = policy.resolved() == "cpu"

    def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                             dimension_numbers=None, feature_group_count=1, precision=None, **kwargs):
        if use_cpu_forms and not kwargs:
            shape_args = (lhs.shape, rhs.shape, window_strides, padding, lhs_dilation, rhs_dilation,
                          dimension_numbers, feature_group_count)
            stride = _tunable(*shape_args)
            if stride:
                return tuned_conv(lhs, rhs, stride, policy, precision)
            if _is_pointwise(*shape_args):
                # A 1x1 convolution is a matrix product; as one, its gradients are too (in loops as well).
                return jnp.einsum("nhwc,co->nhwo", lhs, rhs[0, 0], precision=precision)
        return jax.lax.conv_general_dilated(
            lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation,
            dimension_numbers=dimension_numbers, feature_group_count=feature_group_count, precision=precision, **kwargs,
        )

    return conv_general_dilated


def _with_adjoint_vjp(forward, canonical_kernel_grad: bool):
    """``forward`` with a hand-written VJP built from the strided convolution it is the
    transpose of: d/dx is that convolution of the cotangent, d/dkernel its kernel VJP,
    computed as a canonical convolution (`conv_kernel_grad`, fast on XLA:CPU inside loops)
    or by autodiff (XLA's own form). Both are far faster than the autodiff of the forward
    forms."""

    @jax.custom_vjp
    def f(x, kernel):
        return forward(x, kernel)

    def f_fwd(x, kernel):
        return forward(x, kernel), (x, kernel)

    def f_bwd(residuals, dy):
        x, kernel = residuals
        dx = forms.conv_stride2(dy, kernel)
        if canonical_kernel_grad:
            # The kernel gradient of conv_stride2(dy, k) at cotangent x, for its kernel
            # k.transpose(0, 1, 3, 2), transposed back.
            return dx, conv_kernel_grad(dy, x, 2).transpose(0, 1, 3, 2)
        # The transpose of the linear map k -> conv_stride2(dy, k): autodiff's kernel
        # gradient, without the forward convolution jax.vjp would also trace.
        return dx, jax.linear_transpose(lambda k: forms.conv_stride2(dy, k), kernel)(x)[0]

    f.defvjp(f_fwd, f_bwd)
    return f


# upsample form -> resolved policy impl -> function
_TRANSPOSED = {
    "dilated": {"cpu": forms.dilated, "xla": forms.dilated},  # plain autodiff: the reference formulation
    "phases": {"cpu": _with_adjoint_vjp(forms.phases, True), "xla": _with_adjoint_vjp(forms.phases, False)},
    "subpixel": {"cpu": _with_adjoint_vjp(forms.subpixel, True), "xla": _with_adjoint_vjp(forms.subpixel, False)},
}


def conv_transpose_4x4_s2(x: jax.Array, kernel: jax.Array, policy: ConvPolicy = ConvPolicy()) -> jax.Array:
    """PyTorch's ``conv_transpose2d(x, w, stride=2, padding=1)`` for 4x4 kernels, NHWC.

    ``kernel`` has shape (4, 4, in, out), i.e. the PyTorch weight (in, out, 4, 4) transposed
    by (2, 3, 0, 1). ``policy.upsample`` picks the forward form (see `jaxddpm.kernels.forms`);
    ``"phases"`` and ``"subpixel"`` carry hand-written VJPs whose kernel gradient follows
    ``policy.impl``.
    """
    return _TRANSPOSED[policy.upsample][policy.resolved()](x, kernel)
