"""Measuring jaxddpm's programs without PyTorch: timers, FLOPs counted from jaxprs, XLA's
memory figures, and the compiled training and sampling programs that ``jaxddpm bench``
(`jaxddpm.bench`, which adds the PyTorch reference) and the scripts in scripts/ time.
"""

from __future__ import annotations

import math
import os
import platform
import re
import statistics
import time

import jax
import jax.extend.core as jax_core
import jax.numpy as jnp

import jaxddpm as jd
from jaxddpm import config as config_lib, factory, sampling

# Dense peak FLOP/s of known accelerators, float32 (non-tensor-core) and bfloat16.
KNOWN_PEAKS = {
    "H100": {"float32": 67e12, "bfloat16": 989e12},
    "H200": {"float32": 67e12, "bfloat16": 989e12},
    "A100": {"float32": 19.5e12, "bfloat16": 312e12},
}

# The article's model, a mid-sized one for scripts that compare forms of the step quickly
# (`--small`), and a tiny one that checks a harness, not a speed (`--quick`).
FULL = dict(channels=(64, 128, 256, 512, 1024), image_size=64, image_channels=3, time_emb_dim=32, num_timesteps=300)
SMALL = dict(FULL, channels=(16, 32, 64, 128, 256), image_size=32)
QUICK = dict(channels=(4, 8), image_size=8, image_channels=3, time_emb_dim=8, num_timesteps=10)
QUICKSTART = dict(channels=(32, 64, 128), image_size=16, image_channels=1, time_emb_dim=32, num_timesteps=300)


def program_runner(compiled, state, args: tuple):
    """A function that calls a compiled training program once, on the state its previous
    call returned (the state's buffers may be donated), and waits for its metrics."""
    holder = {"state": state}

    def run():
        holder["state"], metrics = compiled(holder["state"], *args)
        jax.block_until_ready(metrics)

    return run


def time_interleaved(runs: dict, reps: int) -> dict:
    """Seconds of each call of each function in ``runs`` (name -> function that blocks until
    done), the functions taking turns for ``reps`` rounds; no warm-up."""
    times = {name: [] for name in runs}
    for _ in range(reps):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return times


def timed(fn, reps: int) -> dict:
    """Run ``fn`` (which must block until done) ``reps`` times after one warm-up call."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return dict(first_call_s=first, median_s=statistics.median(times), min_s=min(times), reps=reps)


def device_name() -> str:
    dev = jax.devices()[0]
    if dev.platform == "cpu":
        model = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as f:
                model = re.search(r"model name\s*:\s*(.*)", f.read()).group(1)
        except (OSError, AttributeError):
            pass
        return f"cpu-{os.cpu_count()}core-{model}"
    return dev.device_kind


def slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-").lower()


def peak_flops(dtype: str) -> float | None:
    kind = jax.devices()[0].device_kind
    for key, peaks in KNOWN_PEAKS.items():
        if key in kind:
            return peaks[dtype]
    return None


def _conv_flops(eqn) -> float:
    rhs, out = eqn.invars[1].aval, eqn.outvars[0].aval
    spec = eqn.params["dimension_numbers"].rhs_spec  # (out features, in features, spatial...)
    window = math.prod(rhs.shape[d] for d in spec[2:])
    return 2.0 * math.prod(out.shape) * rhs.shape[spec[1]] * window


def _dot_flops(eqn) -> float:
    lhs, out = eqn.invars[0].aval, eqn.outvars[0].aval
    (contracting, _), _ = eqn.params["dimension_numbers"]
    return 2.0 * math.prod(out.shape) * math.prod(lhs.shape[d] for d in contracting)


def _sub_jaxprs(params: dict):
    """The jaxprs among an equation's parameters (alone or in tuples and lists)."""
    for value in params.values():
        for v in value if isinstance(value, (tuple, list)) else (value,):
            if isinstance(v, (jax_core.Jaxpr, jax_core.ClosedJaxpr)):
                yield v


def jaxpr_flops(jaxpr) -> float:
    """FLOPs (2 per multiply-add) of the convolutions and matrix products in a (closed)
    jaxpr, sub-jaxprs included (a scan's body times its length, a while loop's once, the
    largest branch of a cond); elementwise work is not counted. Unlike XLA's cost analysis,
    this does not depend on the backend: XLA:GPU's leaves out the convolutions and matrix
    products it hands to cuDNN and cuBLAS."""
    total = 0.0
    for eqn in getattr(jaxpr, "jaxpr", jaxpr).eqns:
        name = eqn.primitive.name
        if name == "conv_general_dilated":
            total += _conv_flops(eqn)
        elif name == "dot_general":
            total += _dot_flops(eqn)
        elif name == "cond":
            total += max(jaxpr_flops(b) for b in eqn.params["branches"])
        else:
            inner = sum(jaxpr_flops(j) for j in _sub_jaxprs(eqn.params))
            total += inner * (eqn.params["length"] if name == "scan" else 1)
    return total


def program_memory(compiled) -> int | None:
    """Device bytes the compiled program needs (arguments, outputs and temporaries, less
    what outputs share with donated arguments), from XLA's memory analysis."""
    try:
        m = compiled.memory_analysis()
        return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes - m.alias_size_in_bytes)
    except Exception:  # not reported by this backend
        return None


def peak_memory() -> int | None:
    stats = jax.devices()[0].memory_stats()
    return None if not stats else stats.get("peak_bytes_in_use")


def jax_model(sizes: dict, dtype=jnp.float32) -> jd.SimpleUNet:
    """SimpleUNet for ``sizes``, with ``sizes["conv_policy"]`` or a policy of its
    ``conv_impl`` and ``upsample_impl`` (defaults where absent)."""
    policy = sizes.get("conv_policy") or jd.ConvPolicy(
        impl=sizes.get("conv_impl", jd.ConvPolicy.impl), upsample=sizes.get("upsample_impl", jd.ConvPolicy.upsample))
    return jd.SimpleUNet(channels=sizes["channels"], out_channels=sizes["image_channels"],
                         time_emb_dim=sizes["time_emb_dim"], conv_policy=policy, dtype=dtype)


def training_setup(sizes: dict, dtype=jnp.float32) -> tuple:
    """jaxddpm's model, optimizer (the article's Adam), schedule, initial state and image
    shape (H, W, C) for ``sizes``."""
    model = jax_model(sizes, dtype)
    schedule = jd.make_schedule(num_timesteps=sizes["num_timesteps"])
    tx = jd.make_optimizer(1e-3)
    shape = (sizes["image_size"], sizes["image_size"], sizes["image_channels"])
    return model, tx, schedule, jd.create_train_state(model, tx, jax.random.key(0), shape), shape


def bench_jax_train(sizes: dict, batch: int, reps: int, dtype=jnp.float32) -> dict:
    model, tx, schedule, state, shape = training_setup(sizes, dtype)
    x = jax.random.uniform(jax.random.key(1), (batch, *shape), minval=-1, maxval=1)
    step = jd.jit_train_step(model, tx, schedule, ema_decay=0.999)
    key = jax.random.key(2)
    t0 = time.perf_counter()
    traced = step.trace(state, x, key)
    compiled = traced.lower().compile()
    compile_s = time.perf_counter() - t0
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    xla_flops = float(cost.get("flops", 0.0)) if cost else 0.0
    flops = jaxpr_flops(traced.jaxpr)
    result = timed(program_runner(compiled, state, (x, key)), reps)
    result.update(compile_s=compile_s, flops_per_step=flops, xla_cost_analysis_flops_per_step=xla_flops,
                  images_per_s=batch / result["median_s"])
    result["achieved_flops_per_s"] = flops / result["median_s"] if flops else None
    peak = peak_flops("bfloat16" if dtype == jnp.bfloat16 else "float32")
    result["fraction_of_peak"] = result["achieved_flops_per_s"] / peak if peak and flops else None
    result["program_memory_bytes"] = program_memory(compiled)
    result["process_peak_memory_bytes"] = peak_memory()
    return result


def train_program(sizes: dict, batch: int, steps: int, dtype=jnp.float32) -> tuple:
    """`jaxddpm train`'s compiled training program for ``steps`` steps per call (1: the
    loop-free program), gathering its batches from a resident uint8 dataset: returns
    (compiled, initial state, the arguments after the state, compile seconds)."""
    model, tx, schedule, state, shape = training_setup(sizes, dtype)
    config = config_lib.apply_overrides(config_lib.load_config("flowers64"), {
        "model.channels": str(tuple(sizes["channels"])), "model.time_emb_dim": str(sizes["time_emb_dim"]),
        "data.image_size": str(shape[0]), "data.channels": str(shape[2]),
        "diffusion.num_timesteps": str(sizes["num_timesteps"]), "train.batch_size": str(batch),
    })
    images = jax.random.randint(jax.random.key(1), (max(4 * batch, 64), *shape), 0, 256).astype(jnp.uint8)
    args = (images, jnp.zeros((images.shape[0],), jnp.int32), jax.random.key(2), jax.random.key(3))
    args += (jnp.int32(steps),) if steps > 1 else ()
    t0 = time.perf_counter()
    compiled = factory.make_train_step(model, tx, schedule, config, steps=steps).lower(state, *args).compile()
    return compiled, state, args, time.perf_counter() - t0


def functional_program(sizes: dict, batch: int, steps: int) -> tuple:
    """The functional API's compiled training program: `jaxddpm.jit_train_step` (``steps``
    = 1) or `jaxddpm.jit_train_steps` over ``steps`` stacked batches; returns what
    `train_program` does."""
    model, tx, schedule, state, shape = training_setup(sizes)
    lead = (batch,) if steps == 1 else (steps, batch)
    args = (jax.random.uniform(jax.random.key(1), (*lead, *shape), minval=-1, maxval=1), jax.random.key(2))
    make = jd.jit_train_step if steps == 1 else jd.jit_train_steps
    t0 = time.perf_counter()
    compiled = make(model, tx, schedule, ema_decay=0.999).lower(state, *args).compile()
    return compiled, state, args, time.perf_counter() - t0


def bench_jax_train_loop(sizes: dict, batch: int, reps: int, steps: int) -> dict:
    """The program `jaxddpm train` runs: ``steps`` training steps per call as a loop on the
    device (`train_program`). Times are per step."""
    compiled, state, args, compile_s = train_program(sizes, batch, steps)
    result = timed(program_runner(compiled, state, args), reps)
    for k in ("first_call_s", "median_s", "min_s"):
        result[k] /= steps
    result.update(compile_s=compile_s, steps_per_call=steps, images_per_s=batch / result["median_s"])
    return result


def sample_program(sizes: dict, batch: int, dtype=jnp.float32) -> tuple:
    """The compiled ancestral sampling chain for ``sizes`` (``num_timesteps`` steps) at
    ``batch``: returns (a function that runs it once and returns the samples, compile seconds)."""
    model = jax_model(sizes, dtype)
    schedule = jd.make_schedule(num_timesteps=sizes["num_timesteps"])
    shape = (batch, sizes["image_size"], sizes["image_size"], sizes["image_channels"])
    variables = jax.jit(lambda k: model.init(k, jnp.zeros(shape), jnp.zeros((batch,), jnp.int32), train=False))(jax.random.key(0))
    t0 = time.perf_counter()
    compiled = sampling.make_sampler(model, schedule, shape).lower(variables, jax.random.key(1)).compile()
    compile_s = time.perf_counter() - t0
    return (lambda: jax.block_until_ready(compiled(variables, jax.random.key(1)))), compile_s


def bench_jax_sample(sizes: dict, batch: int, reps: int, dtype=jnp.float32) -> dict:
    run, compile_s = sample_program(sizes, batch, dtype)
    result = timed(run, reps)
    result.update(compile_s=compile_s, images_per_s=batch / result["median_s"])
    return result
