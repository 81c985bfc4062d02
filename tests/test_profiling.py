"""jaxddpm's torch-free measuring tools: the FLOP count of a jaxpr."""

import functools

import jax
import jax.numpy as jnp

from jaxddpm.profiling import jaxpr_flops


def test_jaxpr_flops_counts_convolutions_and_products_in_sub_jaxprs():
    x, w, m = jnp.ones((2, 8, 8, 3)), jnp.ones((3, 3, 3, 4)), jnp.ones((4, 5))

    def f(x, w, m, padding="SAME"):
        y = jax.lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return (y @ m).sum()

    conv, dot = 2 * (2 * 8 * 8 * 4) * 3 * 9, 2 * (2 * 8 * 8 * 5) * 4
    assert jaxpr_flops(jax.make_jaxpr(f)(x, w, m)) == conv + dot
    # With SAME padding the input- and kernel-gradient convolutions have the forward's
    # multiply-adds, and the products' gradients are two products of the same size.
    assert jaxpr_flops(jax.make_jaxpr(jax.jit(jax.grad(f, argnums=(0, 1, 2))))(x, w, m)) == 3 * (conv + dot)
    scanned = jax.make_jaxpr(lambda x: jax.lax.scan(lambda c, _: (c, f(c, w, m)), x, None, length=3))(x)
    assert jaxpr_flops(scanned) == 3 * (conv + dot)
    # XLA's own count agrees where no window reaches into padding (it skips padded taps)
    # up to its small elementwise extra.
    valid = functools.partial(f, padding="VALID")
    xla = jax.jit(valid).lower(x, w, m).compile().cost_analysis()
    ours = jaxpr_flops(jax.make_jaxpr(valid)(x, w, m))
    assert ours == 2 * (2 * 6 * 6 * 4) * 3 * 9 + 2 * (2 * 6 * 6 * 5) * 4
    assert 0 <= (xla[0] if isinstance(xla, list) else xla)["flops"] / ours - 1 < 0.1
