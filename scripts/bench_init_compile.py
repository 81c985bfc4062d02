"""Compile time of a config's train-state initialisation at XLA's default options and at
`jaxddpm.train.init_compiler_options()` (what jaxddpm uses), and how far their values differ.

    python scripts/bench_init_compile.py [--config quickstart] [KEY=VALUE ...]

Both are compiled from the same lowered program in one process, the default first.
"""

from __future__ import annotations

import argparse
import functools
import time

import jax
import numpy as np

from jaxddpm import config as config_lib
from jaxddpm import factory
from jaxddpm.train import init_compiler_options, init_state


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="config overrides KEY=VALUE")
    parser.add_argument("--config", default="quickstart")
    args = parser.parse_args(argv)
    c = config_lib.apply_overrides(config_lib.load_config(args.config), dict(kv.split("=", 1) for kv in args.overrides))
    model, tx, shape = factory.build_model(c), factory.build_optimizer(c), factory.image_shape(c)

    create = functools.partial(init_state, model, tx, image_shape=shape)
    lowered = jax.jit(create).lower(jax.random.key(0))
    print(f"{jax.devices()[0].device_kind}, jax {jax.__version__}, config {args.config}, "
          f"{len(jax.tree.leaves(jax.eval_shape(create, jax.random.key(0)).params))} parameter arrays")
    states = {}
    for name, options in (("default", {}), ("init_compiler_options()", init_compiler_options())):
        t0 = time.perf_counter()
        compiled = lowered.compile(compiler_options=options) if options else lowered.compile()
        t1 = time.perf_counter()
        states[name] = jax.block_until_ready(compiled(jax.random.key(0)))
        print(f"{name} {options}: compile {t1 - t0:.1f} s, run {time.perf_counter() - t1:.2f} s", flush=True)
    a, b = (jax.tree.leaves(s.params) for s in states.values())
    differ = sum(int(np.sum(np.asarray(x) != np.asarray(y))) for x, y in zip(a, b))
    rel = max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)) / np.maximum(np.abs(np.asarray(x)), 1e-30))) for x, y in zip(a, b))
    print(f"parameters: {differ} of {sum(x.size for x in a)} values differ, by at most {rel:.2g} relative")


if __name__ == "__main__":
    main()
