"""Cost and quality of DDIM against the article's 300-step ancestral sampler on a trained
workdir: seconds per sample (compile excluded, median of repeats) and the classifier score.

    python scripts/compare_samplers.py --workdir runs/quickstart --out experiments/samplers/quickstart.json
"""

import argparse
import json
import platform
import sys
import time

import jax
import numpy as np

from jaxddpm import config as config_lib, data, evaluate, factory, sampling
from jaxddpm.generate import load_workdir

SETTINGS = [
    ("ancestral, 300 steps", {"sample.sampler": "ancestral"}),
    ("ddim, 50 steps, eta 0", {"sample.sampler": "ddim", "sample.steps": "50", "sample.eta": "0.0"}),
    ("ddim, 50 steps, eta 0, clip x0", {"sample.sampler": "ddim", "sample.steps": "50", "sample.eta": "0.0", "sample.clip_x0": "True"}),
    ("ddim, 50 steps, eta 1", {"sample.sampler": "ddim", "sample.steps": "50", "sample.eta": "1.0"}),
    ("ddim, 20 steps, eta 0", {"sample.sampler": "ddim", "sample.steps": "20", "sample.eta": "0.0"}),
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=250)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out")
    args = parser.parse_args()
    config, state = load_workdir(args.workdir)
    train_set, held_out = data.load_splits(config.data)
    rows = []
    for name, overrides in SETTINGS:
        c = config_lib.apply_overrides(config, overrides)
        sampler = sampling.make_sampler(
            factory.build_model(c), factory.build_schedule(c), (args.batch_size, c.data.image_size, c.data.image_size, c.data.channels),
            **sampling.sampler_options(c),
        )
        variables = sampling.sampling_variables(state)
        labels = sampling.sample_labels(args.batch_size, c.model.num_classes, c.sample.label)
        start = time.perf_counter()
        jax.block_until_ready(sampler(variables, jax.random.key(100), labels))
        compile_s = time.perf_counter() - start
        times = []
        for r in range(args.repeats):
            start = time.perf_counter()
            jax.block_until_ready(sampler(variables, jax.random.key(101 + r), labels))
            times.append(time.perf_counter() - start)
        score = evaluate.quality(c, state, train_set, held_out, num_samples=args.num_samples, seed=0, batch_size=args.batch_size)
        row = {
            "sampler": name,
            "seconds_per_batch_median": float(np.median(times)),
            "seconds_per_batch_min": float(np.min(times)),
            "batch_size": args.batch_size,
            "first_call_seconds_incl_compile": compile_s,
            "confident_share": score["samples"]["confident_share"],
            "confident_share_vs_real": score["confident_share_vs_real"],
            "classes_present": score["samples"]["classes_present"],
            "frechet_distance": score["samples"]["frechet_distance"],
            "real_confident_share": score["real"]["confident_share"],
            "real_frechet_distance": score["real"]["frechet_distance"],
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    result = {
        "command": " ".join([sys.executable.split("/")[-1], *sys.argv]),
        "machine": f"{platform.processor() or platform.machine()}, {jax.devices()[0].device_kind}, jax {jax.__version__}",
        "workdir_step": int(state.step),
        "rows": rows,
    }
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
