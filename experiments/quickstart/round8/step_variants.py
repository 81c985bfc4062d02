"""The quickstart's training step compiled in variants and timed in turns in one process.

    python experiments/quickstart/round8/step_variants.py default "model.attention_resolutions=(4,8)"
    python experiments/quickstart/round8/step_variants.py default identity-norm identity-attention conv-policy-cpu
    python experiments/quickstart/round8/step_variants.py default opt-level-2 opt-level-1
    python experiments/quickstart/round8/step_variants.py default "model.time_scale_shift=True"

A variant is "default", config overrides KEY=VALUE (several joined with "/"),
"identity-norm" (every GroupNorm replaced by a per-channel scale and bias),
"identity-attention" (every attention block replaced by a residual Dense layer),
"conv-policy-cpu" (the U-Net's convolutions in jaxddpm's CPU forms) or "opt-level-N"
(XLA's backend optimisation level N for the step). The identities are not the model; they
bound what normalisation and attention cost.
"""

import argparse
import statistics
import time

import flax.linen as nn
import jax
import jax.numpy as jnp

import jaxddpm.models.ddpm_unet as ddpm_unet
from jaxddpm import config as config_lib, factory
from jaxddpm.kernels import ConvPolicy
from jaxddpm.profiling import program_runner, time_interleaved
from jaxddpm.train import create_train_state


class ScaleBias(nn.Module):
    """A per-channel scale and bias in place of a normalisation."""

    num_groups: int = 32
    epsilon: float = 1e-6
    dtype: object = None
    param_dtype: object = jnp.float32

    @nn.compact
    def __call__(self, x, modulation=None):
        c = x.shape[-1]
        y = x * self.param("scale", nn.initializers.ones, (c,)) + self.param("bias", nn.initializers.zeros, (c,))
        if modulation is None:
            return y
        s, b = modulation
        return y * (1 + s[:, None, None, :]) + b[:, None, None, :]


class ResidualDense(nn.Module):
    """A residual Dense layer in place of an attention block."""

    norm_groups: int = 32
    norm_eps: float = 1e-6
    jvp_compatible: bool = False
    head_dim: int = 0
    qkv_layout: str = "fused"
    output_scale: float = 1.0
    dtype: object = jnp.float32
    param_dtype: object = jnp.float32

    @nn.compact
    def __call__(self, x):
        return x + nn.Dense(x.shape[-1], name="proj")(x)


def compile_variant(variant: str):
    base = {"GroupNorm": ddpm_unet.GroupNorm, "AttentionBlock": ddpm_unet.AttentionBlock}
    overrides = {} if "=" not in variant else dict(kv.split("=", 1) for kv in variant.split("/"))
    c = config_lib.apply_overrides(config_lib.load_config("quickstart"), overrides)
    model, tx, schedule = factory.build_model(c), factory.build_optimizer(c), factory.build_schedule(c)
    if variant == "conv-policy-cpu":
        model = model.clone(conv_policy=ConvPolicy(impl="cpu"))
    options = {"xla_backend_optimization_level": int(variant.rsplit("-", 1)[1])} if variant.startswith("opt-level-") else {}
    if variant == "identity-norm":
        ddpm_unet.GroupNorm = ScaleBias
    if variant == "identity-attention":
        ddpm_unet.AttentionBlock = ResidualDense
    try:
        shape = factory.image_shape(c)
        images = jax.random.randint(jax.random.key(1), (1500, *shape), 0, 256).astype(jnp.uint8)
        args = (images, jnp.zeros((1500,), jnp.int32), jax.random.key(2), jax.random.key(3))
        state = create_train_state(model, tx, jax.random.key(0), shape)
        t0 = time.perf_counter()
        step = factory.make_train_step(model, tx, schedule, c).lower(state, *args).compile(options)
        return program_runner(step, state, args), time.perf_counter() - t0
    finally:
        ddpm_unet.GroupNorm, ddpm_unet.AttentionBlock = base["GroupNorm"], base["AttentionBlock"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("variants", nargs="+")
    p.add_argument("--reps", type=int, default=50)
    args = p.parse_args()
    runs = {}
    for variant in args.variants:
        runs[variant], seconds = compile_variant(variant)
        runs[variant]()  # warm-up
        print(f"{variant}: compiled in {seconds:.1f} s", flush=True)
    for variant, ts in time_interleaved(runs, args.reps).items():
        print(f"{variant}: median {statistics.median(ts) * 1e3:.2f} ms/step, fastest {min(ts) * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
