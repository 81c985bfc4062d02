"""The compiled sampler: a whole sampling chain (ancestral or DDIM, optionally guided) as
one program, and the options a config gives it."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxddpm import diffusion, parallel
from jaxddpm.schedule import Schedule
from jaxddpm.train import TrainState


def sampler_options(config: ml_collections.ConfigDict, **overrides) -> dict:
    """`make_sampler` keyword arguments from a config's ``diffusion`` and ``sample`` sections;
    ``overrides`` that are not None replace them."""
    s = config.sample
    options = dict(
        prediction=config.diffusion.prediction, sampler=s.sampler, steps=s.steps, eta=s.eta,
        clip_x0=s.clip_x0, variance=s.variance, guidance=s.guidance,
    )
    options.update({k: v for k, v in overrides.items() if v is not None})
    return options


def sample_labels(num: int, num_classes: int, label: int = -1) -> np.ndarray | None:
    """Labels for ``num`` samples: all ``label``, or cycling through the classes if -1;
    None for an unconditional model."""
    if num_classes <= 0:
        return None
    if label >= 0:
        return np.full((num,), label, np.int32)
    return (np.arange(num) % num_classes).astype(np.int32)


def sampling_variables(state: TrainState) -> dict:
    """The variables a sampler uses: the EMA parameters and the BatchNorm statistics."""
    return {"params": state.ema_params, "batch_stats": state.batch_stats}


def make_sampler(
    model,
    schedule: Schedule,
    shape: tuple[int, ...],
    mesh=None,
    *,
    prediction: str = "eps",
    sampler: str = "ancestral",
    steps: int = 0,
    eta: float = 0.0,
    clip_x0: bool = False,
    variance: str = "fixed_small",
    guidance: float = 1.0,
    on_step: Callable[[], None] | None = None,
):
    """Compiled ``(variables, key, labels=None) -> images``: the whole chain in one program.

    ``sampler`` is "ancestral" (the article's, all T steps, with the reverse ``variance``
    "fixed_small" or "fixed_large") or "ddim" (``steps`` steps, ``eta``); ``clip_x0`` clips
    either's predicted x0 to [-1, 1]. For a conditional model, ``labels`` selects the classes and ``guidance`` is
    the classifier-free guidance scale (both predictions come from one batched call).
    On a ``mesh`` the batch is split over the devices when the device count divides it,
    and the result is replicated so that every process can read it. ``on_step``, if given,
    is called on the host once per reverse step as the chain runs (a progress display; it
    adds a host callback to the program). Each call of
    `make_sampler` returns a new program; keep it to reuse its compilation
    (`jaxddpm.Pipeline` does).
    """
    shard = mesh is not None and shape[0] % mesh.size == 0
    num_classes = getattr(model, "num_classes", 0)

    def run(variables, key, labels=None):
        def model_fn(x, t):
            if on_step is not None:
                jax.debug.callback(lambda _: on_step(), t[0])
            if shard:
                x = jax.lax.with_sharding_constraint(x, parallel.batch_sharding(mesh))
            if labels is None or guidance == 0.0:
                return model.apply(variables, x, t, False).astype(jnp.float32)
            if guidance == 1.0:
                return model.apply(variables, x, t, False, labels).astype(jnp.float32)
            both = jnp.concatenate([labels, jnp.full_like(labels, num_classes)])
            out = model.apply(variables, jnp.concatenate([x, x]), jnp.concatenate([t, t]), False, both)
            cond, uncond = jnp.split(out.astype(jnp.float32), 2)
            return diffusion.classifier_free_guidance(cond, uncond, guidance)

        eps_fn = diffusion.as_eps_fn(schedule, prediction, model_fn)
        if sampler == "ddim":
            return diffusion.ddim_sample(schedule, eps_fn, key, shape, num_steps=steps, eta=eta, clip_x0=clip_x0)
        return diffusion.sample(schedule, eps_fn, key, shape, clip_x0=clip_x0, variance=variance)

    if mesh is None:
        return jax.jit(run)
    return jax.jit(run, out_shardings=parallel.replicated(mesh))
