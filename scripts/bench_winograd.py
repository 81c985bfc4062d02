"""Sampling chain or training step with and without the Winograd convolutions,
interleaved in one process.

    python scripts/bench_winograd.py [--batch 4] [--steps 300] [--reps 3] [--max-pixels 0,1024]
    python scripts/bench_winograd.py --quickstart --batch 64 --min-channels 1,64
    python scripts/bench_winograd.py --train [--batch 16] [--reps 8]

Each variant is jaxddpm's sampler (or jit-compiled train step) for the full-size model,
64x64 (or with ``--quickstart`` the quickstart config's model, 16x16x1), conv_impl="auto",
compiled with ``jaxddpm.model._WINOGRAD_MAX_PIXELS`` set to the given value (0: no
Winograd; 1024: the default, images up to 32x32), or with ``--min-channels`` with
``_WINOGRAD_MIN_CHANNELS`` set to each value (1: any width; 64: the default). Prints
milliseconds per reverse step (or seconds per train step), each variant's compile time,
and the largest difference between the variants' samples (or losses).
"""

import argparse
import json
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxddpm as jd
from jaxddpm import model as model_lib
from jaxddpm import trainer


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--train", action="store_true", help="time the training step instead of the sampling chain")
    parser.add_argument("--batch", type=int, help="default 4 (sampling) or 16 (training)")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--max-pixels", default="0,1024")
    parser.add_argument("--min-channels", help="vary _WINOGRAD_MIN_CHANNELS over these values instead (sampling only)")
    parser.add_argument("--quickstart", action="store_true", help="the quickstart model (sampling only)")
    args = parser.parse_args()
    constant, values = ("_WINOGRAD_MIN_CHANNELS", args.min_channels) if args.min_channels else ("_WINOGRAD_MAX_PIXELS", args.max_pixels)
    variants = [int(v) for v in values.split(",")]
    if args.train:
        return train(args, variants)
    args.batch = args.batch or 4
    model = jd.SimpleUNet(channels=(32, 64, 128), out_channels=1) if args.quickstart else jd.SimpleUNet()
    schedule = jd.make_schedule(num_timesteps=args.steps)
    shape = (args.batch, 16, 16, 1) if args.quickstart else (args.batch, 64, 64, 3)
    variables = model.init(jax.random.key(0), jnp.zeros(shape), jnp.zeros((args.batch,), jnp.int32), train=False)
    key = jax.random.key(1)
    compiled, compile_s = {}, {}
    for v in variants:
        setattr(model_lib, constant, v)  # read when the sampler is traced
        start = time.perf_counter()
        compiled[v] = trainer.make_sampler(model, schedule, shape).lower(variables, key).compile()
        compile_s[v] = time.perf_counter() - start
    samples = {v: np.asarray(compiled[v](variables, key)) for v in variants}  # also the warm-up
    times = {v: [] for v in variants}
    for _ in range(args.reps):
        for v in variants:
            start = time.perf_counter()
            jax.block_until_ready(compiled[v](variables, key))
            times[v].append((time.perf_counter() - start) / args.steps * 1e3)
    result = {
        "command": " ".join(sys.argv), "device": jax.devices()[0].device_kind, "batch": args.batch, "steps": args.steps,
        "constant": constant, "compile_s": {str(v): round(t, 2) for v, t in compile_s.items()},
        "ms_per_step": {str(v): {"median": float(np.median(t)), "min": float(np.min(t)), "all": [round(x, 2) for x in t]}
                        for v, t in times.items()},
        "max_abs_sample_difference": {str(v): float(np.abs(samples[v] - samples[variants[0]]).max()) for v in variants},
    }
    print(json.dumps(result, indent=1))
    return 0


def train(args: argparse.Namespace, variants: list[int]) -> int:
    batch = args.batch or 16
    model = jd.SimpleUNet()
    schedule = jd.make_schedule(num_timesteps=args.steps)
    tx = jd.make_optimizer(1e-3)
    state = jd.create_train_state(model, tx, jax.random.key(0), (64, 64, 3))
    x = jax.random.uniform(jax.random.key(1), (batch, 64, 64, 3), minval=-1, maxval=1)
    key = jax.random.key(2)
    compiled, states, losses = {}, {}, {}
    for v in variants:
        model_lib._WINOGRAD_MAX_PIXELS = v  # read when the step is traced
        compiled[v] = jd.jit_train_step(model, tx, schedule, ema_decay=0.999).lower(state, x, key).compile()
    for v in variants:  # the step donates its state: one copy per variant; also the warm-up
        states[v], metrics = compiled[v](jax.tree.map(jnp.copy, state), x, key)
        losses[v] = float(metrics["loss"])
    times = {v: [] for v in variants}
    for _ in range(args.reps):
        for v in variants:
            start = time.perf_counter()
            states[v], metrics = compiled[v](states[v], x, key)
            jax.block_until_ready(metrics)
            times[v].append(time.perf_counter() - start)
    result = {
        "command": " ".join(sys.argv), "device": jax.devices()[0].device_kind, "batch": batch,
        "s_per_train_step": {str(v): {"median": float(np.median(t)), "min": float(np.min(t)), "all": [round(x, 3) for x in t]}
                             for v, t in times.items()},
        "first_step_loss": {str(v): losses[v] for v in variants},
    }
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
