"""`jaxddpm bench` (parity.bench): the harness runs and writes its JSON (no timing
assertions), and its FLOP count."""

import functools
import json

import pytest

pytest.importorskip("torch", reason="the benchmark times jaxddpm against PyTorch (pip install -e '.[parity]')")
pytestmark = pytest.mark.torch

from parity.bench import main  # noqa: E402


@pytest.mark.slow
def test_quick_bench_writes_results(tmp_path, capsys):
    assert main(["--quick", "--batch", "2", "--sample-batch", "2", "--reps", "1", "--sample-reps", "1", "--out", str(tmp_path)]) == 0
    files = list(tmp_path.glob("*-quick.json"))
    assert len(files) == 1
    r = json.loads(files[0].read_text())
    for section in ("train", "sample"):
        assert r[section]["jaxddpm"]["median_s"] > 0 and r[section]["torch_eager"]["median_s"] > 0
        assert r[section]["ratio_vs_eager"] > 0
    assert r["train"]["jaxddpm"]["flops_per_step"] > 0 and r["train"]["jaxddpm"]["compile_s"] > 0
    assert r["train"]["jaxddpm_loop"]["steps_per_call"] == 8 and r["train"]["ratio_loop_vs_eager"] > 0
    assert "ratio (torch / jaxddpm)" in capsys.readouterr().out


def test_jaxpr_flops_counts_convolutions_and_products_in_sub_jaxprs():
    import jax
    import jax.numpy as jnp

    from parity.bench import jaxpr_flops

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


