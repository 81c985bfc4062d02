"""Sampling chain with and without the Winograd convolutions, interleaved in one process.

    python scripts/bench_winograd.py [--batch 4] [--steps 300] [--reps 3] [--max-pixels 0,1024]

Each variant is the jaxddpm sampler (full-size model, 64x64, conv_impl="auto") compiled with
``jaxddpm.model._WINOGRAD_MAX_PIXELS`` set to the given value (0: no Winograd; 1024: the
default, images up to 32x32). Prints milliseconds per reverse step and the largest
difference between the variants' samples.
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
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--max-pixels", default="0,1024")
    args = parser.parse_args()
    variants = [int(v) for v in args.max_pixels.split(",")]
    model = jd.SimpleUNet()
    schedule = jd.make_schedule(num_timesteps=args.steps)
    shape = (args.batch, 64, 64, 3)
    variables = model.init(jax.random.key(0), jnp.zeros(shape), jnp.zeros((args.batch,), jnp.int32), train=False)
    key = jax.random.key(1)
    compiled = {}
    for v in variants:
        model_lib._WINOGRAD_MAX_PIXELS = v  # read when the sampler is traced
        compiled[v] = trainer.make_sampler(model, schedule, shape).lower(variables, key).compile()
    samples = {v: np.asarray(compiled[v](variables, key)) for v in variants}  # also the warm-up
    times = {v: [] for v in variants}
    for _ in range(args.reps):
        for v in variants:
            start = time.perf_counter()
            jax.block_until_ready(compiled[v](variables, key))
            times[v].append((time.perf_counter() - start) / args.steps * 1e3)
    result = {
        "command": " ".join(sys.argv), "device": jax.devices()[0].device_kind, "batch": args.batch, "steps": args.steps,
        "ms_per_step": {str(v): {"median": float(np.median(t)), "min": float(np.min(t)), "all": [round(x, 2) for x in t]}
                        for v, t in times.items()},
        "max_abs_sample_difference": {str(v): float(np.abs(samples[v] - samples[variants[0]]).max()) for v in variants},
    }
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
