"""A/B of `jaxddpm train`'s compiled training program with one of `jaxddpm.model`'s tuning
constants set to other values, the variants interleaved in one process.

    python scripts/ab_model_constant.py _S2_GEMM_MAX_PIXELS 0 [--steps-per-call 8] [--reps 5]
    python scripts/ab_model_constant.py _WINOGRAD_KERNEL_GRAD_PIXELS "(0, 0)"

The constants choose which form computes a convolution or its gradients (same math;
`jaxddpm/model.py`). Each value (a Python literal) and the current default are compiled
into the full-size training program (batch 16, 64x64, batches gathered on the device,
``--steps-per-call`` steps per call, as `jaxddpm train` runs it), then the variants take
turns. Prints seconds per training step, median and min, and the first call's loss.
"""

import argparse
import ast
import json
import statistics
import sys

import jax
import numpy as np

import jaxddpm as jd
from jaxddpm import model as model_lib
from jaxddpm import profiling


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("name", help="a constant of jaxddpm.model, e.g. _S2_GEMM_MAX_PIXELS")
    parser.add_argument("values", nargs="+", help="Python literals to compare with the default")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps-per-call", type=int, default=8)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    if not args.name.startswith("_") or not hasattr(model_lib, args.name):
        print(f"error: jaxddpm.model has no constant {args.name!r}", file=sys.stderr)
        return 2
    default = getattr(model_lib, args.name)
    variants = {"default " + repr(default): default}
    variants.update({v: ast.literal_eval(v) for v in args.values})
    sizes = dict(profiling.FULL, conv_impl="auto", upsample_impl=jd.SimpleUNet.upsample_impl)
    runs, losses = {}, {}
    for label, value in variants.items():
        setattr(model_lib, args.name, value)  # read when the program is traced
        compiled, state, call_args, compile_s = profiling.train_program(sizes, args.batch, args.steps_per_call)
        state, metrics = compiled(state, *call_args)  # warm-up
        losses[label] = float(np.asarray(metrics["loss"]).ravel()[0])
        runs[label] = profiling.program_runner(compiled, state, call_args)
        print(f"{args.name} = {label}: compiled in {compile_s:.1f} s", flush=True)
    setattr(model_lib, args.name, default)
    times = profiling.time_interleaved(runs, args.reps)
    result = {
        "command": " ".join(sys.argv), "device": jax.devices()[0].device_kind, "batch": args.batch,
        "steps_per_call": args.steps_per_call,
        "s_per_step": {label: {"median": statistics.median(t) / args.steps_per_call, "min": min(t) / args.steps_per_call,
                               "all": [round(x / args.steps_per_call, 4) for x in t]} for label, t in times.items()},
        "first_loss": losses,
    }
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
