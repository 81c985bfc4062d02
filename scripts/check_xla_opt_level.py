"""Whether XLA:CPU's LLVM optimisation level changes what jaxddpm computes.

    python scripts/check_xla_opt_level.py [--levels default,2,0]

The test suite compiles at level 2 (tests/conftest.py) because its programs compile faster
there. This runs 4 training steps and a sampling chain of a small
SimpleUNet in one fresh process per level and prints each run's losses, a hash of every
resulting array (parameters, optimizer state, samples; equal hashes mean equal bits) and the
seconds its training program took to compile and run. The initialisation compiles at level 0
at every level (`jaxddpm.train.init_compiler_options`).
"""

import argparse
import os
import subprocess
import sys

PROGRAM = """
import hashlib, time
import jax, numpy as np
import jaxddpm as jd
model = jd.SimpleUNet(channels=(8, 16, 32), out_channels=1, time_emb_dim=16)
tx = jd.make_optimizer(1e-3)
schedule = jd.make_schedule(num_timesteps=50)
state = jd.create_train_state(model, tx, jax.random.key(0), (16, 16, 1))
batches = jax.random.uniform(jax.random.key(5), (4, 8, 16, 16, 1), minval=-1, maxval=1)
t0 = time.perf_counter()
state, metrics = jax.block_until_ready(jd.jit_train_steps(model, tx, schedule, 0.99)(state, batches, jax.random.key(1)))
train_s = time.perf_counter() - t0
variables = {"params": state.ema_params, "batch_stats": state.batch_stats}
samples = jax.jit(lambda v, k: jd.sample(schedule, lambda x, t: model.apply(v, x, t, False), k, (4, 16, 16, 1)))(
    variables, jax.random.key(2))
digest = hashlib.sha1(b"".join(np.asarray(x).tobytes() for x in jax.tree.leaves(state) + [samples])).hexdigest()
print(np.asarray(metrics["loss"]).tolist(), digest, f"training program {train_s:.1f} s")
"""


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--levels", default="default,2,0")
    args = parser.parse_args()
    results = {}
    for level in args.levels.split(","):
        env = dict(os.environ)
        env.pop("JAX_COMPILATION_CACHE_DIR", None)
        env["XLA_FLAGS"] = "" if level == "default" else f"--xla_backend_optimization_level={level}"
        proc = subprocess.run([sys.executable, "-c", PROGRAM], env=env, capture_output=True, text=True, check=True)
        results[level] = proc.stdout.strip()
        print(f"level {level}: {results[level]}")
    reference = results.get("default")
    if reference is not None:
        for level, out in results.items():
            same = out.rsplit(" training", 1)[0] == reference.rsplit(" training", 1)[0]
            print(f"level {level} {'equals' if same else 'differs from'} the default, bit for bit")
    return 0


if __name__ == "__main__":
    sys.exit(main())
