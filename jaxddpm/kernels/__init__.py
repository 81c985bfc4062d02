"""Convolution kernels: the forms a model's convolutions are computed in, chosen by one
`ConvPolicy` that the model receives as a field.

- `policy`: `ConvPolicy` (the thresholds) and the allowed values;
- `conv`: the policy applied (`make_conv_general_dilated`, `conv_transpose_4x4_s2`);
- `forms`: the forward forms of the transposed convolution;
- `gradients`: gradient forms that XLA:CPU runs fast inside loops;
- `winograd`: Winograd F(2x2, 3x3);
- `xla_flags`: the XLA:CPU flags set when ``jaxddpm`` is imported.
"""

from jaxddpm.kernels.policy import CONV_IMPLS, UPSAMPLE_IMPLS, ConvPolicy

__all__ = ["CONV_IMPLS", "UPSAMPLE_IMPLS", "ConvPolicy", "conv_transpose_4x4_s2", "make_conv_general_dilated"]


def __getattr__(name: str):
    # The convolution code imports JAX; loaded on first use so that the command line's
    # --help (which reads the allowed values above) does not wait for JAX.
    if name in ("conv_transpose_4x4_s2", "make_conv_general_dilated"):
        from jaxddpm.kernels import conv

        return getattr(conv, name)
    raise AttributeError(f"module 'jaxddpm.kernels' has no attribute {name!r}")
