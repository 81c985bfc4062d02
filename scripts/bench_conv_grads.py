"""Every form of every convolution gradient of the full-size SimpleUNet, layer by layer.

    python scripts/bench_conv_grads.py [--batch 16] [--reps 4] [--layers down_blocks_2/conv1,up_blocks_0/conv2]

For each 3x3 and 4x4/stride-2 convolution of the model (64x64 images; the upsampling
layers have their own VJP and are left out), times each input-gradient form and each
kernel-gradient form of `jaxddpm.kernels.gradients` that applies to it, and marks with * the
form the default `ConvPolicy` picks (`ConvPolicy.grad_forms`). The layers and their shapes are
read from the model. Each form runs 8 times inside one compiled loop,
on inputs scaled differently in each iteration, so that, as in `jaxddpm train`'s
training loop, buffers are allocated once per call and nothing is hoisted out of the
loop; timing single calls instead charges the memory-heavy forms (Winograd's transformed
tiles) with fresh allocations and page faults they do not pay in training. Prints
milliseconds per evaluation, min over ``--reps`` calls.
"""

import argparse
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp

import jaxddpm as jd
from jaxddpm import profiling
from jaxddpm.kernels.gradients import INPUT_GRADS, KERNEL_GRADS

LOOP = 8


def layers(sizes: dict, batch: int) -> list[tuple]:
    """(name, stride, input pixels per side, in channels, out channels) of each 3x3 and
    4x4/stride-2 convolution of the model, read from the model as it initialises."""
    model = profiling.jax_model(dict(sizes, conv_policy=jd.ConvPolicy(impl="xla")))
    found = []

    def record(next_fun, args, kwargs, context):
        m = context.module
        if isinstance(m, nn.Conv) and context.method_name == "__call__" and tuple(m.kernel_size) in ((3, 3), (4, 4)):
            x = args[0]
            stride = m.strides if isinstance(m.strides, int) else (m.strides or (1,))[0]
            found.append(("/".join(m.path), stride, x.shape[1], x.shape[-1], m.features))
        return next_fun(*args, **kwargs)

    s = sizes["image_size"]
    with nn.intercept_methods(record):
        jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((batch, s, s, sizes["image_channels"])),
                                          jnp.zeros((batch,), jnp.int32), train=False))
    return found


def looped(fn):
    def run(a, b):
        def body(i, acc):
            s = 1.0 + i.astype(a.dtype) * 1e-7
            return acc + fn(a * s, b * s)[:1, :1, :1, :1].sum()
        return jax.lax.fori_loop(0, LOOP, body, jnp.zeros((), a.dtype))
    return jax.jit(run)


def time_ms(fn, args, reps: int) -> float:
    """Milliseconds per evaluation: the fastest of ``reps`` calls after a warm-up."""
    return profiling.timed(lambda: jax.block_until_ready(fn(*args)), reps)["min_s"] / LOOP * 1e3


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--reps", type=int, default=4)
    parser.add_argument("--layers", default="", help="comma-separated names (default: all)")
    args = parser.parse_args()
    chosen_layers = [layer for layer in layers(profiling.FULL, args.batch) if not args.layers or layer[0] in args.layers.split(",")]
    policy = jd.ConvPolicy()
    print(f"device {jax.devices()[0].device_kind}, batch {args.batch}; ms per evaluation, * = the form jaxddpm picks")
    for name, stride, hw, c, o in chosen_layers:
        k = 3 if stride == 1 else 4
        x = jax.random.normal(jax.random.key(0), (args.batch, hw, hw, c))
        kernel = jax.random.normal(jax.random.key(1), (k, k, c, o)) / (k * c**0.5)
        dy = jax.random.normal(jax.random.key(2), (args.batch, hw // stride, hw // stride, o))
        input_choice, kernel_choice = policy.grad_forms(stride, dy.shape, kernel.shape)
        cells = []
        for form, fn in INPUT_GRADS[stride].items():
            if name == "init_conv":  # no input gradient needed there
                continue
            ms = time_ms(looped(lambda dy, kernel, fn=fn: fn(dy, kernel, None)), (dy, kernel), args.reps)
            cells.append(f"{form}{'*' if form == input_choice else ''} {ms:.1f}")
        line = f"{name:22s} {hw:2d}x{hw:<2d} {c:4d}->{o:<4d} input grad: {', '.join(cells) or '-':42s}"
        cells = []
        for form, fn in KERNEL_GRADS[stride].items():
            ms = time_ms(looped(lambda x, dy, fn=fn: fn(x, dy, stride, None)), (x, dy), args.reps)
            cells.append(f"{form}{'*' if form == kernel_choice else ''} {ms:.1f}")
        print(line + f" kernel grad: {', '.join(cells)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
