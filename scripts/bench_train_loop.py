"""The training program of `jaxddpm train` with different numbers of steps per call (and
conv_impl), interleaved in one process.

    python scripts/bench_train_loop.py [--steps-per-call 1,8] [--conv-impls auto] [--reps 3] [--small | --quick] [--functional]

Each variant is `parity.profiling.train_program` (`jaxddpm.trainer.make_train_step`) for the
full-size model (``--small``: channels 16-256 on 32x32 images), batch 16, gathering its
batches from a resident uint8 dataset; 1 step per call is the loop-free program, more run
as a loop on the device. ``--functional`` adds, for each number of steps per call, the
functional API's program (`parity.profiling.functional_program`: `jaxddpm.jit_train_step`,
or `jaxddpm.jit_train_steps` over stacked batches). Prints seconds per training step
(median and min over ``--reps`` calls, after one warm-up call) and writes nothing.
"""

import argparse
import json
import statistics
import sys

import jax

from jaxddpm import profiling


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps-per-call", default="1,8")
    parser.add_argument("--conv-impls", default="auto")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--small", action="store_true")
    parser.add_argument("--quick", action="store_true", help="tiny sizes; checks the script, not the speed")
    parser.add_argument("--functional", action="store_true", help="also time jaxddpm.jit_train_step / jit_train_steps")
    args = parser.parse_args()
    sizes = dict(profiling.QUICK if args.quick else profiling.SMALL if args.small else profiling.FULL, upsample_impl="phases")
    variants = {}
    for impl in args.conv_impls.split(","):
        for k in (int(v) for v in args.steps_per_call.split(",")):
            programs = {"": profiling.train_program}
            if args.functional:
                programs["functional API, "] = profiling.functional_program
            for label, program in programs.items():
                fn, state, fn_args, compile_s = program(dict(sizes, conv_impl=impl), args.batch, k)
                variants[f"{label}{impl}, {k} per call"] = dict(run=profiling.program_runner(fn, state, fn_args), k=k,
                                                                compile_s=compile_s)
    for v in variants.values():  # warm-up
        v["run"]()
    times = profiling.time_interleaved({name: v["run"] for name, v in variants.items()}, args.reps)
    for name, v in variants.items():
        v["times"] = [t / v["k"] for t in times[name]]
    result = {
        "command": " ".join(["python"] + sys.argv), "device": jax.devices()[0].device_kind, "batch": args.batch,
        "s_per_step": {name: {"median": round(statistics.median(v["times"]), 4), "min": round(min(v["times"]), 4),
                              "compile_s": round(v["compile_s"], 1)} for name, v in variants.items()},
    }
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
