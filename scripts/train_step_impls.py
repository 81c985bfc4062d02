"""Time one training step of the full model: the PyTorch reference (eager, Adam) and
jaxddpm with each transposed-convolution implementation, in one process.

    python scripts/train_step_impls.py --batch 16 --impls torch,subpixel,phases,dilated
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch

import jaxddpm as jd
from parity import reference


def best_of(fn, reps):
    fn()  # warm-up (and compilation)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times), float(np.median(times))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--impls", default="torch,subpixel,phases,dilated")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    x = np.random.default_rng(0).uniform(-1, 1, (args.batch, 64, 64, 3)).astype(np.float32)
    for impl in args.impls.split(","):
        if impl == "torch":
            torch.manual_seed(0)
            model = reference.SimpleUNet()
            opt = torch.optim.Adam(model.parameters(), lr=1e-3)
            tables = reference.article_tables()
            xt = torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()

            def step():
                opt.zero_grad()
                reference.get_loss(model, xt, torch.randint(0, 300, (args.batch,)), tables).backward()
                opt.step()
        else:
            model = jd.SimpleUNet(upsample_impl=impl)
            tx = jd.make_optimizer()
            holder = {"state": jd.create_train_state(model, tx, jax.random.key(0), (64, 64, 3))}
            train = jd.jit_train_step(model, tx, jd.make_schedule(), 0.999)
            xb, key = jnp.asarray(x), jax.random.key(1)

            def step():
                holder["state"], metrics = train(holder["state"], xb, key)
                jax.block_until_ready(metrics)
        best, median = best_of(step, args.reps)
        print(f"{impl:>10}: min {best:.3f} s/step, median {median:.3f} s/step (batch {args.batch})", flush=True)


if __name__ == "__main__":
    main()
