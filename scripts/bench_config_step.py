"""Time `jaxddpm train`'s compiled training step for a config with overrides (one step per
call, the dataset resident as uint8, as the trainer runs it): compile time, median step time,
images per second and XLA's FLOP count.

    python scripts/bench_config_step.py                                  # the quickstart config
    python scripts/bench_config_step.py train.batch_size=32 train.batch_size=16 model.base_channels=16

Each argument is one variant of the config (several overrides in one variant: join them with
"/", e.g. train.batch_size=32/model.base_channels=16); "default" is the config unchanged.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp

from jaxddpm import config as config_lib
from jaxddpm import factory
from jaxddpm.profiling import program_runner, timed
from jaxddpm.train import create_train_state


def time_step(config_name: str, overrides: dict, reps: int) -> dict:
    c = config_lib.apply_overrides(config_lib.load_config(config_name), overrides)
    model, tx, schedule = factory.build_model(c), factory.build_optimizer(c), factory.build_schedule(c)
    shape = factory.image_shape(c)
    state = create_train_state(model, tx, jax.random.key(0), shape)
    images = jax.random.randint(jax.random.key(1), (1500, *shape), 0, 256).astype(jnp.uint8)
    args = (images, jnp.zeros((images.shape[0],), jnp.int32), jax.random.key(2), jax.random.key(3))
    t0 = time.perf_counter()
    step = factory.make_train_step(model, tx, schedule, c).lower(state, *args).compile()
    compile_s = time.perf_counter() - t0
    cost = step.cost_analysis()
    flops = float((cost[0] if isinstance(cost, list) else cost or {}).get("flops", 0.0))
    median = timed(program_runner(step, state, args), reps)["median_s"]
    return dict(compile_s=compile_s, median_s=median, images_per_s=c.train.batch_size / median,
                gflop_per_step=flops / 1e9, gflop_per_s=flops / median / 1e9)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("variants", nargs="*", default=["default"], help="KEY=VALUE[/KEY=VALUE...] or default")
    parser.add_argument("--config", default="quickstart")
    parser.add_argument("--reps", type=int, default=20)
    args = parser.parse_args(argv)
    print(f"{jax.devices()[0].device_kind}, jax {jax.__version__}, config {args.config}, {args.reps} timed steps each")
    for variant in args.variants:
        overrides = {} if variant == "default" else dict(kv.split("=", 1) for kv in variant.split("/"))
        r = time_step(args.config, overrides, args.reps)
        print(f"{variant}: compile {r['compile_s']:.1f} s, {r['median_s'] * 1e3:.1f} ms/step, {r['images_per_s']:.0f} images/s, "
              f"{r['gflop_per_step']:.2f} GFLOP/step, {r['gflop_per_s']:.1f} GFLOP/s", flush=True)


if __name__ == "__main__":
    main()
