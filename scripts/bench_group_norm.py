"""Time the quickstart's training step with Flax's GroupNorm and with jaxddpm's
(`jaxddpm.models.GroupNorm`: the same function, statistics summed over pixels first and a
written-out gradient), compiled in one process and timed in turns. The Flax variant is what
``DDPMUNet(jvp_compatible=True)`` computes.

    python scripts/bench_group_norm.py [--config quickstart] [--reps 60]

Prints each variant's median and fastest step and the largest difference between their
parameter gradients on one batch (float32 rounding).
"""

from __future__ import annotations

import argparse
import statistics

import jax
import jax.numpy as jnp

from jaxddpm import config as config_lib, factory
from jaxddpm.profiling import device_name, program_runner, time_interleaved
from jaxddpm.train import create_train_state

FLAX, OURS = "flax.linen.GroupNorm", "jaxddpm GroupNorm"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="quickstart")
    parser.add_argument("--reps", type=int, default=60)
    args = parser.parse_args(argv)
    try:
        c = config_lib.load_config(args.config)
    except config_lib.ConfigError as e:
        parser.error(str(e))
    if c.model.name != "ddpm_unet":
        parser.error(f"config {args.config} has model.name={c.model.name!r}; this compares ddpm_unet's normalisation")
    model, tx, schedule = factory.build_model(c), factory.build_optimizer(c), factory.build_schedule(c)
    shape = factory.image_shape(c)
    images = jax.random.randint(jax.random.key(1), (max(c.train.batch_size, 64), *shape), 0, 256).astype(jnp.uint8)
    step_args = (images, jnp.zeros((images.shape[0],), jnp.int32), jax.random.key(2), jax.random.key(3))
    x = jax.random.normal(jax.random.key(4), (4, *shape))
    t = jnp.array([0, 50, 150, schedule.num_timesteps - 1]) % schedule.num_timesteps
    params = create_train_state(model, tx, jax.random.key(0), shape).params
    params = jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.key(5), p.shape, p.dtype), params)  # no zero layers
    runs, grads = {}, {}
    for name, model in {FLAX: model.clone(jvp_compatible=True), OURS: model}.items():
        grads[name] = jax.jit(jax.grad(lambda p: jnp.sum(jnp.sin(model.apply({"params": p}, x, t, False)))))(params)
        state = create_train_state(model, tx, jax.random.key(0), shape)
        step = factory.make_train_step(model, tx, schedule, c).lower(state, *step_args).compile()
        runs[name] = program_runner(step, state, step_args)
        runs[name]()  # warm-up
    a, b = (jax.tree.leaves(g) for g in grads.values())
    diff = max(float(jnp.abs(u - v).max()) for u, v in zip(a, b))
    scale = max(float(jnp.abs(v).max()) for v in b)
    print(f"{device_name()}, jax {jax.__version__}, config {args.config}, batch {c.train.batch_size}, {args.reps} steps each, in turns")
    times = time_interleaved(runs, args.reps)
    base = statistics.median(times[FLAX])
    for name, ts in times.items():
        median = statistics.median(ts)
        print(f"{name}: median {median * 1e3:.2f} ms/step, fastest {min(ts) * 1e3:.2f} ms ({base / median:.3f}x)")
    print(f"largest gradient difference {diff:.2e} (largest gradient {scale:.2e})")


if __name__ == "__main__":
    main()
