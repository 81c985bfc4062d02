"""`ConvPolicy`: which form computes each convolution (every form computes the same function).

The thresholds are where each form was measured faster on XLA:CPU (scripts/bench_conv_grads.py
and scripts/bench_forms.py; results in experiments/bench/README.md). A model receives one
policy as a field; benchmarks and tests build their own through the constructor.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

CONV_IMPLS = ("auto", "xla", "cpu")
UPSAMPLE_IMPLS = ("phases", "subpixel", "dilated")


@dataclasses.dataclass(frozen=True)
class ConvPolicy:
    """How a model computes its convolutions.

    ``impl``: ``"xla"`` (XLA's convolutions and their autodiff), ``"cpu"`` (Winograd for
    undifferentiated 3x3 convolutions on small images and hand-written gradients that stay
    fast inside loops on XLA:CPU, 1x1 convolutions as matrix products) or ``"auto"`` (``"cpu"``
    when JAX's default backend is the CPU, else ``"xla"``). ``upsample``: the form of the 4x4,
    stride-2 transposed convolution (`jaxddpm.kernels.conv_transpose_4x4_s2`). The other fields
    are the shape thresholds of the ``"cpu"`` forms; pixels are H * W of the image, weights
    are in * out channels of the kernel.
    """

    impl: str = "auto"
    upsample: str = "phases"
    # Winograd F(2x2, 3x3) outside differentiation (sampling, evaluation).
    winograd_max_pixels: int = 32 * 32
    winograd_min_channels: int = 64  # fewer: its tile transforms cost more than they save
    # Under differentiation: the input gradient by Winograd, then by nine per-tap products.
    winograd_input_grad_min_channels: int = 128
    taps_max_pixels: int = 64
    taps_min_weights: int = 2**19
    # The kernel gradient by Winograd on images of this many pixels (inclusive range).
    winograd_kernel_grad_pixels: tuple[int, int] = (8 * 8, 16 * 16)
    winograd_kernel_grad_min_weights: int = 2**17
    # The input gradient of a stride-2 convolution as one matrix product and col2im.
    s2_gemm_max_pixels: int = 4 * 4

    def __post_init__(self):
        if self.impl not in CONV_IMPLS:
            raise ValueError(f"conv impl {self.impl!r} is unknown; allowed: {', '.join(CONV_IMPLS)}")
        if self.upsample not in UPSAMPLE_IMPLS:
            raise ValueError(f"upsample impl {self.upsample!r} is unknown; allowed: {', '.join(UPSAMPLE_IMPLS)}")

    def resolved(self) -> str:
        """``"cpu"`` or ``"xla"``: ``impl`` with ``"auto"`` resolved by JAX's default backend."""
        if self.impl != "auto":
            return self.impl
        import jax

        return "cpu" if jax.default_backend() == "cpu" else "xla"

    def use_winograd(self, x_shape: Sequence[int], kernel_shape: Sequence[int], stride: int) -> bool:
        """Whether an undifferentiated convolution of these shapes uses Winograd."""
        return (stride == 1 and x_shape[1] * x_shape[2] <= self.winograd_max_pixels
                and min(kernel_shape[2:]) >= self.winograd_min_channels)

    def grad_forms(self, stride: int, dy_shape: Sequence[int], kernel_shape: Sequence[int]) -> tuple[str, str]:
        """The names of the input and kernel gradient forms (keys of
        `jaxddpm.kernels.gradients.INPUT_GRADS` and ``KERNEL_GRADS``) for a convolution."""
        pixels, weights = dy_shape[1] * dy_shape[2], kernel_shape[2] * kernel_shape[3]
        if stride == 2:  # the adjoint of this convolution is a transposed convolution
            return ("gemm" if pixels <= self.s2_gemm_max_pixels else "phases"), "xla"
        lo, hi = self.winograd_kernel_grad_pixels
        kernel_grad = "winograd" if lo <= pixels <= hi and weights >= self.winograd_kernel_grad_min_weights else "xla"
        if self.use_winograd(dy_shape, kernel_shape, stride) and min(kernel_shape[2:]) >= self.winograd_input_grad_min_channels:
            return "winograd", kernel_grad
        if pixels <= self.taps_max_pixels and weights >= self.taps_min_weights:
            return "taps", kernel_grad
        return "xla", kernel_grad
