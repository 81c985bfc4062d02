"""Where a short `jaxddpm train` run of the quickstart spends its time outside the training
steps: building the run (and inside it, compiling the initialisation and writing the
forward-diffusion figure), each checkpoint write, and the final samples.

    python experiments/quickstart/round8/fixed_costs.py WORKDIR [--steps 1000]

WORKDIR must not hold checkpoints of another config (use a fresh one).
"""

import argparse
import functools
import time

import jaxddpm  # noqa: F401  (XLA flags before JAX starts)
from jaxddpm import checkpoint, config as config_lib, factory, trainer

TIMES: dict = {}


def timed(owner, name: str) -> None:
    f = getattr(owner, name)

    @functools.wraps(f)
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return f(*args, **kwargs)
        finally:
            TIMES.setdefault(name, []).append(time.perf_counter() - t0)

    setattr(owner, name, wrapper)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("workdir")
    p.add_argument("--steps", type=int, default=1000)
    args = p.parse_args()
    timed(trainer.TrainingRun, "__init__")
    timed(factory, "create_sharded_state")
    timed(trainer, "_write_forward_figure")
    timed(checkpoint, "save")
    timed(trainer.TrainingRun, "write_samples")
    c = config_lib.load_config("quickstart")
    c.train.num_steps = args.steps
    t0 = time.perf_counter()
    trainer.train_and_evaluate(c, args.workdir)
    print(f"train_and_evaluate {time.perf_counter() - t0:.2f} s for {args.steps} steps")
    for name, seconds in TIMES.items():
        print(f"{name}: {len(seconds)} calls, {', '.join(f'{s:.2f}' for s in seconds)} s")


if __name__ == "__main__":
    main()
