"""``jaxddpm bench``: jaxddpm against the PyTorch reference, in one process, on one device.

Measures (warm-up excluded, median and min over repetitions):
  1. training throughput of jaxddpm's compiled step and of the reference's eager step
     (the article's Adam, same model and batch, float32), and their ratio;
  2. sampling throughput of the full reverse chain: jaxddpm's one compiled program
     against the reference's Python loop of reverse steps, and their ratio;
  3. compile times, memory (XLA's memory analysis of the compiled step; the device's peak
     where the backend reports it) and achieved FLOP/s against the device's peak where it
     is known. FLOPs are counted from the step's jaxpr (`jaxddpm.profiling.jaxpr_flops`: its convolutions and
     matrix products), because XLA:GPU's cost analysis leaves out library calls; XLA's own
     count is recorded beside it;
  4. on GPU, also ``torch.compile`` and bfloat16-compute jaxddpm variants (training with
     float32 master weights, and sampling).
Results are printed and written as JSON to ``experiments/bench/<device>.json``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys

from jaxddpm.kernels import CONV_IMPLS, UPSAMPLE_IMPLS, ConvPolicy, xla_flags
from jaxddpm.terminal import ArgumentParser

# JAX, PyTorch and the measured programs are imported inside the functions, after the
# arguments are parsed, so that --help answers at once and the PyTorch check comes first.


def torch_model(sizes: dict, device: str):
    """The PyTorch reference model for ``sizes`` on ``device``, seeded."""
    import torch

    from parity import reference

    torch.manual_seed(0)
    model = reference.SimpleUNet(
        image_channels=sizes["image_channels"], channels=sizes["channels"],
        out_channels=sizes["image_channels"], time_emb_dim=sizes["time_emb_dim"],
    )
    return model.to(device)


def torch_train_step(sizes: dict, batch: int, device: str, compile_model: bool = False):
    """The reference's training step (eager, or its model under ``torch.compile``) as a
    function that runs one step and waits for the device."""
    import torch

    from parity import reference

    model = torch_model(sizes, device).train()
    forward = torch.compile(model) if compile_model else model
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    tables = reference.article_tables(sizes["num_timesteps"])  # on the CPU, as the reference indexes them
    s = sizes["image_size"]
    x = torch.rand(batch, sizes["image_channels"], s, s, device=device) * 2 - 1

    def run():
        t = torch.randint(0, sizes["num_timesteps"], (batch,), device=device)
        opt.zero_grad(set_to_none=True)
        loss = reference.get_loss(forward, x, t, tables)
        loss.backward()
        opt.step()
        loss.item()  # waits for the device

    return run


def bench_torch_train(sizes: dict, batch: int, reps: int, device: str, compile_model: bool = False) -> dict:
    import torch

    from jaxddpm import profiling

    run = torch_train_step(sizes, batch, device, compile_model)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    result = profiling.timed(run, reps)
    result["images_per_s"] = batch / result["median_s"]
    result["peak_memory_bytes"] = torch.cuda.max_memory_allocated() if device == "cuda" else None
    return result


def bench_torch_sample(sizes: dict, batch: int, reps: int, device: str) -> dict:
    import torch

    from jaxddpm import profiling
    from parity import reference

    model = torch_model(sizes, device).eval()
    tables = reference.article_tables(sizes["num_timesteps"])  # on the CPU, as the reference indexes them
    s = sizes["image_size"]

    def run():
        x = reference.sample_chain(model, torch.randn(batch, sizes["image_channels"], s, s, device=device), tables)
        x.sum().item()

    result = profiling.timed(run, reps)
    result["images_per_s"] = batch / result["median_s"]
    return result


def pin_float32() -> tuple[bool, str]:
    """On a GPU, full float32 arithmetic in both frameworks (no TF32), so that like is
    compared with like. Returns (whether JAX runs on a GPU, the torch device to use)."""
    import jax
    import torch

    gpu = jax.devices()[0].platform == "gpu"
    if gpu:
        jax.config.update("jax_default_matmul_precision", "highest")
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    return gpu, "cuda" if gpu and torch.cuda.is_available() else "cpu"


def run(args: argparse.Namespace) -> dict:
    import jax
    import jax.numpy as jnp
    import torch

    from jaxddpm.profiling import (
        FULL,
        QUICK,
        bench_jax_sample,
        bench_jax_train,
        bench_jax_train_loop,
        device_name,
    )

    sizes = dict(QUICK if args.quick else FULL, conv_impl=args.conv_impl, upsample_impl=args.upsample_impl)
    gpu, device = pin_float32()
    results: dict = dict(
        device=device_name(),
        command=" ".join(["jaxddpm bench"] + (args.argv or [])),
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        versions=dict(jax=jax.__version__, torch=torch.__version__, python=platform.python_version()),
        sizes={k: list(v) if isinstance(v, tuple) else v for k, v in sizes.items()},
        batch=args.batch, sample_batch=args.sample_batch, reps=args.reps, torch_threads=torch.get_num_threads(),
        xla_flags=os.environ.get("XLA_FLAGS", ""), jaxddpm_cpu_flags_in_effect=xla_flags.in_effect(),
    )
    print(f"device: {results['device']}; model channels {sizes['channels']}, {sizes['image_size']}px, T {sizes['num_timesteps']}", flush=True)
    print(f"XLA_FLAGS={results['xla_flags']!r} (jaxddpm's CPU flags in effect: {results['jaxddpm_cpu_flags_in_effect']}); "
          f"conv_impl={args.conv_impl}, upsample_impl={args.upsample_impl}", flush=True)
    train = results["train"] = {}
    train["jaxddpm"] = bench_jax_train(sizes, args.batch, args.reps)
    print(f"train jaxddpm: {train['jaxddpm']['median_s']:.4f} s/step", flush=True)
    train["torch_eager"] = bench_torch_train(sizes, args.batch, args.reps, device)
    print(f"train torch eager: {train['torch_eager']['median_s']:.4f} s/step", flush=True)
    train["ratio_vs_eager"] = train["torch_eager"]["median_s"] / train["jaxddpm"]["median_s"]
    if args.steps_per_call > 1:
        train["jaxddpm_loop"] = bench_jax_train_loop(sizes, args.batch, args.reps, args.steps_per_call)
        print(f"train jaxddpm, {args.steps_per_call} steps per call: {train['jaxddpm_loop']['median_s']:.4f} s/step", flush=True)
        train["ratio_loop_vs_eager"] = train["torch_eager"]["median_s"] / train["jaxddpm_loop"]["median_s"]
    sample = results["sample"] = {}
    sample["jaxddpm"] = bench_jax_sample(sizes, args.sample_batch, args.sample_reps)
    print(f"sample jaxddpm: {sample['jaxddpm']['median_s']:.3f} s/chain", flush=True)
    sample["torch_eager"] = bench_torch_sample(sizes, args.sample_batch, args.sample_reps, device)
    print(f"sample torch eager: {sample['torch_eager']['median_s']:.3f} s/chain", flush=True)
    sample["ratio_vs_eager"] = sample["torch_eager"]["median_s"] / sample["jaxddpm"]["median_s"]
    if gpu and args.gpu_extras:
        train["jaxddpm_bfloat16"] = bench_jax_train(sizes, args.batch, args.reps, dtype=jnp.bfloat16)
        print(f"train jaxddpm bfloat16: {train['jaxddpm_bfloat16']['median_s']:.4f} s/step", flush=True)
        train["ratio_bfloat16_vs_eager"] = train["torch_eager"]["median_s"] / train["jaxddpm_bfloat16"]["median_s"]
        train["torch_compile"] = bench_torch_train(sizes, args.batch, args.reps, device, compile_model=True)
        print(f"train torch.compile: {train['torch_compile']['median_s']:.4f} s/step", flush=True)
        train["ratio_vs_compile"] = train["torch_compile"]["median_s"] / train["jaxddpm"]["median_s"]
        if "jaxddpm_loop" in train:
            train["ratio_loop_vs_compile"] = train["torch_compile"]["median_s"] / train["jaxddpm_loop"]["median_s"]
        sample["jaxddpm_bfloat16"] = bench_jax_sample(sizes, args.sample_batch, args.sample_reps, dtype=jnp.bfloat16)
        print(f"sample jaxddpm bfloat16: {sample['jaxddpm_bfloat16']['median_s']:.3f} s/chain", flush=True)
        sample["ratio_bfloat16_vs_eager"] = sample["torch_eager"]["median_s"] / sample["jaxddpm_bfloat16"]["median_s"]
    return results


def format_table(r: dict) -> str:
    rows = [("measurement", "median", "min", "ratio (torch / jaxddpm)")]
    t, s = r["train"], r["sample"]
    rows.append((f"train step, batch {r['batch']}: jaxddpm", f"{t['jaxddpm']['median_s']:.4f} s", f"{t['jaxddpm']['min_s']:.4f} s", ""))
    rows.append(("train step: torch eager", f"{t['torch_eager']['median_s']:.4f} s", f"{t['torch_eager']['min_s']:.4f} s", f"{t['ratio_vs_eager']:.2f}"))
    if "jaxddpm_loop" in t:
        j = t["jaxddpm_loop"]
        rows.append((f"train step: jaxddpm, {j['steps_per_call']} steps per call (jaxddpm train)", f"{j['median_s']:.4f} s",
                     f"{j['min_s']:.4f} s", f"{t['ratio_loop_vs_eager']:.2f}"))
    for key, ratio in (("jaxddpm_bfloat16", "ratio_bfloat16_vs_eager"), ("torch_compile", "ratio_vs_compile")):
        if key in t:
            loop = f" ({t['ratio_loop_vs_compile']:.2f} for the loop)" if key == "torch_compile" and "ratio_loop_vs_compile" in t else ""
            rows.append((f"train step: {key}", f"{t[key]['median_s']:.4f} s", f"{t[key]['min_s']:.4f} s", f"{t[ratio]:.2f}{loop}"))
    T = r["sizes"]["num_timesteps"]
    rows.append((f"{T}-step sampling, batch {r['sample_batch']}: jaxddpm", f"{s['jaxddpm']['median_s']:.3f} s", f"{s['jaxddpm']['min_s']:.3f} s", ""))
    rows.append(("sampling: torch eager", f"{s['torch_eager']['median_s']:.3f} s", f"{s['torch_eager']['min_s']:.3f} s", f"{s['ratio_vs_eager']:.2f}"))
    if "jaxddpm_bfloat16" in s:
        b = s["jaxddpm_bfloat16"]
        rows.append(("sampling: jaxddpm_bfloat16", f"{b['median_s']:.3f} s", f"{b['min_s']:.3f} s", f"{s['ratio_bfloat16_vs_eager']:.2f}"))
    w = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(c.ljust(w[i]) for i, c in enumerate(row)) for row in rows]
    j = t["jaxddpm"]
    lines.append(
        f"jaxddpm train compile {j['compile_s']:.1f} s, {j['flops_per_step'] / 1e9:.1f} GFLOP/step, "
        f"{(j['achieved_flops_per_s'] or 0) / 1e9:.1f} GFLOP/s achieved"
        + (f" ({100 * j['fraction_of_peak']:.1f}% of peak)" if j.get("fraction_of_peak") else " (device peak unknown)")
        + f"; sampler compile {s['jaxddpm']['compile_s']:.1f} s"
        + (f"; program memory {j['program_memory_bytes'] / 2**30:.2f} GiB (XLA's memory analysis)" if j.get("program_memory_bytes") else "")
        + (f"; device peak {j['process_peak_memory_bytes'] / 2**30:.2f} GiB (whole process, compile-time autotuning included)"
           if j.get("process_peak_memory_bytes") else "")
        + (f"; torch eager peak {t['torch_eager']['peak_memory_bytes'] / 2**30:.2f} GiB" if t["torch_eager"].get("peak_memory_bytes") else "")
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="jaxddpm bench", description="Benchmark jaxddpm against the PyTorch reference.")
    parser.add_argument("--quick", action="store_true", help="tiny sizes; checks the harness, not the speed")
    parser.add_argument("--batch-size", "--batch", dest="batch", type=int, default=16, help="training batch (default 16)")
    parser.add_argument("--sample-batch-size", "--sample-batch", dest="sample_batch", type=int, default=4, help="sampling batch (default 4)")
    parser.add_argument("--reps", type=int, default=3, help="timed training repetitions (default 3)")
    parser.add_argument("--sample-reps", type=int, default=2, help="timed sampling repetitions (default 2)")
    parser.add_argument("--steps-per-call", type=int, default=8,
                        help="also time the training loop of `jaxddpm train` with this many steps per call (default 8; 1 = skip)")
    parser.add_argument("--conv-impl", default=ConvPolicy.impl, choices=CONV_IMPLS,
                        help=f"ConvPolicy.impl for jaxddpm (default {ConvPolicy.impl})")
    parser.add_argument("--upsample-impl", default=ConvPolicy.upsample, choices=UPSAMPLE_IMPLS,
                        help=f"ConvPolicy.upsample for jaxddpm (default {ConvPolicy.upsample})")
    parser.add_argument("--no-gpu-extras", dest="gpu_extras", action="store_false",
                        help="on a GPU, skip the bfloat16 and torch.compile rows")
    parser.add_argument("--out", default=os.path.join("experiments", "bench"), help="directory for the JSON result ('' = do not write)")
    args = parser.parse_args(argv)
    try:
        import torch  # noqa: F401  (checked only after the arguments are parsed, so --help is fast)
    except ImportError as e:
        print(f"error: jaxddpm bench needs PyTorch ({e}); install it with: pip install 'jaxddpm[parity]'", file=sys.stderr)
        return 2
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if min(args.batch, args.sample_batch, args.reps, args.sample_reps, args.steps_per_call) < 1:
        print("error: --batch-size, --sample-batch-size, --reps, --sample-reps and --steps-per-call must be positive", file=sys.stderr)
        return 2
    results = run(args)
    print(format_table(results))
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        from jaxddpm.profiling import slug

        path = os.path.join(args.out, f"{slug(results['device'])}{'-quick' if args.quick else ''}.json")
        with open(path, "w") as f:
            json.dump(results, f, indent=1)
        print(f"wrote {path}")
    return 0
