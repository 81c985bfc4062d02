"""FLOPs of the full-size model's training step and reverse step, counted from their jaxprs
(`jaxddpm.profiling.jaxpr_flops`: convolutions and matrix products, 2 per multiply-add).

    python scripts/count_flops.py [--batch 16] [--sample-batch 4]

Only traces, compiles nothing, so it runs anywhere in seconds. The count depends on the
convolution forms a backend uses, so both are shown: ``ConvPolicy(impl="xla")`` (what runs on a
GPU or TPU, where "auto" means "xla") and ``"cpu"`` (Winograd and the other CPU forms).
Dividing by a measured time gives achieved FLOP/s, e.g. for a bench JSON recorded before
`jaxddpm bench` counted FLOPs this way (XLA:GPU's cost analysis leaves out cuDNN's convolutions).
"""

import argparse
import sys

import jax
import jax.numpy as jnp

import jaxddpm as jd
from jaxddpm import profiling


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--sample-batch", type=int, default=4)
    args = parser.parse_args()
    for impl in ("xla", "cpu"):
        model, tx, schedule, state, shape = profiling.training_setup(dict(profiling.FULL, conv_impl=impl))
        step = jd.jit_train_step(model, tx, schedule, ema_decay=0.999)
        train = profiling.jaxpr_flops(jax.make_jaxpr(step)(state, jnp.zeros((args.batch, *shape)), jax.random.key(1)))
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        x, t = jnp.zeros((args.sample_batch, *shape)), jnp.zeros((args.sample_batch,), jnp.int32)
        forward = profiling.jaxpr_flops(jax.make_jaxpr(lambda v, x, t: model.apply(v, x, t, train=False))(variables, x, t))
        print(f'ConvPolicy(impl="{impl}"): training step, batch {args.batch}: {train / 1e9:.1f} GFLOP; '
              f"model evaluation (one reverse step), batch {args.sample_batch}: {forward / 1e9:.2f} GFLOP")
    return 0


if __name__ == "__main__":
    sys.exit(main())
