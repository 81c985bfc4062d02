"""jaxddpm's training program in several forms against the PyTorch reference's eager step,
interleaved in one process. Made for a GPU session (`scripts/gpu_session.sh`); runs on a
CPU as well.

    python scripts/bench_variants.py [--variants phases/float32,dilated/float32/8,...]
        [--reps 20] [--batch 16] [--small] [--out FILE]

A variant is UPSAMPLE_IMPL/DTYPE[/STEPS][/PRECISION][/CONV_IMPL]: `parity.profiling.train_program`
(the program `jaxddpm train` runs, batches gathered on the device) with that
transposed-convolution implementation, that compute dtype (float32, or bfloat16 with
float32 master weights), STEPS steps per call (default 1), compiled under
``jax.default_matmul_precision(PRECISION)`` (default: the pinned float32 precision below),
with ``SimpleUNet(conv_impl=CONV_IMPL)`` (default "auto"). The reference runs eagerly as in `jaxddpm bench`, and
once more with ``torch.backends.cudnn.benchmark`` on (on CUDA). Float32 arithmetic is
pinned on a GPU as in `jaxddpm bench` (no TF32). Each variant is first timed on its own
(``--reps`` calls after a warm-up, printed at once, so that a run cut short still reports),
then the variants take turns for ``--reps`` rounds, which give the JSON's numbers. Prints (and with ``--out`` writes) JSON
with seconds per step, median and min, and the ratio torch eager / variant.
"""

import argparse
import contextlib
import datetime
import json
import statistics
import sys

import jax
import jax.numpy as jnp
import torch

from jaxddpm.model import CONV_IMPLS
from jaxddpm import profiling
from parity import bench

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


PRECISIONS = ("default", "high", "highest")


def jax_variant(sizes: dict, batch: int, spec: str):
    impl, dtype, *rest = spec.split("/")
    steps = int(next((r for r in rest if r.isdigit()), 1))
    precision = next((r for r in rest if r in PRECISIONS), None)
    conv_impl = next((r for r in rest if r in CONV_IMPLS), sizes["conv_impl"])
    if dtype not in DTYPES or any(not (r.isdigit() or r in PRECISIONS or r in CONV_IMPLS) for r in rest):
        raise SystemExit(f"error: variant {spec!r}: want UPSAMPLE_IMPL/DTYPE[/STEPS][/PRECISION][/CONV_IMPL], DTYPE one of "
                         f"{', '.join(DTYPES)}, PRECISION one of {', '.join(PRECISIONS)}, CONV_IMPL one of {', '.join(CONV_IMPLS)}")
    with jax.default_matmul_precision(precision) if precision else contextlib.nullcontext():
        compiled, state, args, compile_s = profiling.train_program(
            dict(sizes, upsample_impl=impl, conv_impl=conv_impl), batch, steps, DTYPES[dtype])
    return profiling.program_runner(compiled, state, args), steps, compile_s


def with_cudnn_benchmark(run):
    def wrapped():
        torch.backends.cudnn.benchmark = True
        try:
            run()
        finally:
            torch.backends.cudnn.benchmark = False

    return wrapped


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default="phases/float32,subpixel/float32,dilated/float32")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--small", action="store_true", help="channels 16-256 on 32x32 images")
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args()
    sizes = dict(profiling.SMALL if args.small else profiling.FULL, conv_impl="auto")
    gpu, device = bench.pin_float32()
    variants = {"torch eager": dict(run=bench.torch_train_step(sizes, args.batch, device), steps=1, compile_s=None)}
    if device == "cuda":
        run = with_cudnn_benchmark(bench.torch_train_step(sizes, args.batch, device))
        variants["torch eager, cudnn.benchmark"] = dict(run=run, steps=1, compile_s=None)
    for spec in args.variants.split(","):
        run, steps, compile_s = jax_variant(sizes, args.batch, spec)
        variants[f"jaxddpm {spec}"] = dict(run=run, steps=steps, compile_s=compile_s)
    for name, v in variants.items():  # a first timing (after a warm-up call), printed at once
        first = profiling.timed(v["run"], args.reps)
        print(f"{name}: {first['median_s'] / v['steps']:.4f} s per step on its own"
              + (f", compiled in {v['compile_s']:.1f} s" if v["compile_s"] else ""), flush=True)
    times = profiling.time_interleaved({name: v["run"] for name, v in variants.items()}, args.reps)
    for name, v in variants.items():
        v["times"] = [t / v["steps"] for t in times[name]]
    eager = statistics.median(variants["torch eager"]["times"])
    result = {
        "command": " ".join(["python"] + sys.argv), "device": profiling.device_name(), "batch": args.batch,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "versions": dict(jax=jax.__version__, torch=torch.__version__), "float32_pinned": gpu,
        "sizes": {k: list(v) if isinstance(v, tuple) else v for k, v in sizes.items()},
        "s_per_step": {
            name: {"median": statistics.median(v["times"]), "min": min(v["times"]),
                   "ratio_torch_eager_over_this": eager / statistics.median(v["times"]),
                   "compile_s": v["compile_s"]}
            for name, v in variants.items()
        },
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
