"""Time jaxddpm's compiled programs in several forms, the forms taking turns in one process.

    python scripts/bench_forms.py VARIANT [VARIANT ...] [--program train|sample]
        [--sizes full|small|quickstart|quick] [--batch N] [--reps N] [--timesteps N] [--out FILE]

This is the one timing harness for comparing forms; `jaxddpm bench` is the headline
comparison with PyTorch. A VARIANT is ``default`` or ``key=value`` pairs joined by ``/``:

- any `jaxddpm.ConvPolicy` field (``impl=xla``, ``upsample=dilated``,
  ``winograd_max_pixels=0``, ``winograd_kernel_grad_pixels=(0,0)``, ...), values as Python
  literals or bare words;
- ``dtype=bfloat16`` (compute dtype, float32 master weights), ``steps=8`` (training steps per
  call, run as a loop on the device), ``precision=highest`` (``jax.default_matmul_precision``),
  ``api=functional`` (`jaxddpm.jit_train_step` / `jit_train_steps` instead of the program
  ``jaxddpm train`` runs);
- ``torch`` alone: the PyTorch reference's eager training step (needs torch), and
  ``torch/cudnn_benchmark=1`` with ``torch.backends.cudnn.benchmark`` on.

``--program train`` (default) times the training step of ``jaxddpm train`` (batches gathered
on the device from a resident uint8 dataset); ``--program sample`` times the ancestral
sampling chain (``--timesteps`` steps, default the sizes') and reports each variant's
largest difference from the first variant's samples. Each variant is compiled, run once as
a warm-up, then all take turns for ``--reps`` rounds. Prints JSON: seconds per step (median,
min), compile seconds, and for training the ratio to the first variant.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import dataclasses
import datetime
import json
import statistics
import sys

import jax
import jax.numpy as jnp
import numpy as np

import jaxddpm as jd
from jaxddpm import profiling

SIZES = {"full": profiling.FULL, "small": profiling.SMALL, "quickstart": profiling.QUICKSTART, "quick": profiling.QUICK}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
POLICY_FIELDS = {f.name for f in dataclasses.fields(jd.ConvPolicy)}
OTHER_KEYS = {"dtype", "steps", "precision", "api", "cudnn_benchmark"}


def parse_variant(spec: str) -> dict:
    """``a=1/b=x`` -> {"a": 1, "b": "x"}; ``default`` -> {}; ``torch[/...]`` -> {"torch": True, ...}."""
    options: dict = {}
    for part in spec.split("/"):
        if part in ("default", ""):
            continue
        if part == "torch":
            options["torch"] = True
            continue
        key, sep, text = part.partition("=")
        if not sep or key not in POLICY_FIELDS | OTHER_KEYS:
            raise SystemExit(f"error: variant {spec!r}: {part!r} is not key=value with a key among "
                             f"{', '.join(sorted(POLICY_FIELDS | OTHER_KEYS))} (or 'default', 'torch')")
        try:
            options[key] = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            options[key] = text
    if options.get("dtype", "float32") not in DTYPES:
        raise SystemExit(f"error: variant {spec!r}: dtype must be one of {', '.join(DTYPES)}")
    return options


def jax_variant(sizes: dict, batch: int, program: str, options: dict):
    """(function that runs the program once and returns its output, steps per call, compile seconds)."""
    policy = jd.ConvPolicy(**{k: v for k, v in options.items() if k in POLICY_FIELDS})
    sized = dict(sizes, conv_policy=policy)
    dtype, steps = DTYPES[options.get("dtype", "float32")], int(options.get("steps", 1))
    precision = options.get("precision")
    with jax.default_matmul_precision(precision) if precision else contextlib.nullcontext():
        if program == "sample":
            run, compile_s = profiling.sample_program(sized, batch, dtype)
            return run, sizes["num_timesteps"], compile_s
        if options.get("api") == "functional":
            compiled, state, args, compile_s = profiling.functional_program(sized, batch, steps)
        else:
            compiled, state, args, compile_s = profiling.train_program(sized, batch, steps, dtype)
    return profiling.program_runner(compiled, state, args), steps, compile_s


def torch_variant(sizes: dict, batch: int, options: dict):
    from jaxddpm import bench  # PyTorch only here

    _, device = bench.pin_float32()
    step = bench.torch_train_step(sizes, batch, device)
    if not options.get("cudnn_benchmark"):
        return step, 1, None
    import torch

    def run():
        torch.backends.cudnn.benchmark = True
        try:
            step()
        finally:
            torch.backends.cudnn.benchmark = False

    return run, 1, None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("variants", nargs="+", help="'default', 'torch' or key=value[/key=value...]")
    parser.add_argument("--program", choices=("train", "sample"), default="train")
    parser.add_argument("--sizes", choices=tuple(SIZES), default="full")
    parser.add_argument("--batch", type=int, help="default 16 (train) or 4 (sample)")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--timesteps", type=int, help="T of the schedule (sampling chain length); default the sizes'")
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args()
    sizes = dict(SIZES[args.sizes])
    if args.timesteps:
        sizes["num_timesteps"] = args.timesteps
    batch = args.batch or (16 if args.program == "train" else 4)
    variants = {}
    for spec in args.variants:
        options = parse_variant(spec)
        if options.get("torch") and args.program == "sample":
            raise SystemExit("error: the torch variant times training only (--program train)")
        make = torch_variant if options.get("torch") else lambda s, b, o: jax_variant(s, b, args.program, o)
        run, steps, compile_s = make(sizes, batch, options)
        variants[spec] = dict(run=run, steps=steps, compile_s=compile_s, first=run())  # also the warm-up
    times = profiling.time_interleaved({name: v["run"] for name, v in variants.items()}, args.reps)
    first = statistics.median(times[args.variants[0]]) / variants[args.variants[0]]["steps"]
    rows = {}
    for name, v in variants.items():
        per_step = [t / v["steps"] for t in times[name]]
        rows[name] = dict(median_s=statistics.median(per_step), min_s=min(per_step),
                          first_over_this=first / statistics.median(per_step), compile_s=v["compile_s"])
        if args.program == "sample":
            reference = np.asarray(variants[args.variants[0]]["first"])
            rows[name]["max_abs_sample_difference"] = float(np.abs(np.asarray(v["first"]) - reference).max())
    result = {
        "command": " ".join(["python"] + sys.argv), "device": profiling.device_name(), "program": args.program,
        "batch": batch, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "sizes": {k: list(v) if isinstance(v, tuple) else v for k, v in sizes.items()}, "s_per_step": rows,
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
