"""The DDPM forward process, posterior, reverse step, loss and sampler as pure functions.

Every function takes the `Schedule` first and receives its randomness as an argument
(the noise itself, or a PRNG key for the sampler). Images are NHWC with batch axis 0;
``t`` holds one integer timestep per batch element.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxddpm.schedule import Schedule, extract

EpsFn = Callable[[jax.Array, jax.Array], jax.Array]


def q_sample(schedule: Schedule, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
    """Draw x_t ~ q(x_t | x_0) given the standard normal ``noise``."""
    return (
        extract(schedule.sqrt_alphas_cumprod, t, x0.ndim) * x0
        + extract(schedule.sqrt_one_minus_alphas_cumprod, t, x0.ndim) * noise
    )


def q_posterior(
    schedule: Schedule, x0: jax.Array, x_t: jax.Array, t: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0)."""
    nd = x_t.ndim
    mean = extract(schedule.posterior_mean_coef1, t, nd) * x0 + extract(schedule.posterior_mean_coef2, t, nd) * x_t
    variance = extract(schedule.posterior_variance, t, nd)
    log_variance = extract(schedule.posterior_log_variance_clipped, t, nd)
    return mean, jnp.broadcast_to(variance, mean.shape), jnp.broadcast_to(log_variance, mean.shape)


def predict_x0_from_eps(schedule: Schedule, x_t: jax.Array, t: jax.Array, eps: jax.Array) -> jax.Array:
    """Invert `q_sample`: the x_0 that, with noise ``eps``, gives ``x_t``."""
    nd = x_t.ndim
    return extract(schedule.sqrt_recip_alphas_cumprod, t, nd) * x_t - extract(
        schedule.sqrt_recipm1_alphas_cumprod, t, nd
    ) * eps


def p_mean(schedule: Schedule, eps: jax.Array, x_t: jax.Array, t: jax.Array) -> jax.Array:
    """Mean of the learned reverse step p(x_{t-1} | x_t) for predicted noise ``eps``."""
    nd = x_t.ndim
    scaled_eps = extract(schedule.betas, t, nd) * eps / extract(schedule.sqrt_one_minus_alphas_cumprod, t, nd)
    return extract(schedule.sqrt_recip_alphas, t, nd) * (x_t - scaled_eps)


def p_sample_step(schedule: Schedule, eps: jax.Array, x_t: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
    """One DDPM ancestral step x_t -> x_{t-1} (Ho et al. 2020, Algorithm 2).

    The step uses the posterior variance, and adds no noise where t == 0.
    """
    nd = x_t.ndim
    mean = p_mean(schedule, eps, x_t, t)
    std = jnp.sqrt(extract(schedule.posterior_variance, t, nd))
    is_last = (t == 0).reshape(t.shape + (1,) * (nd - t.ndim))
    return jnp.where(is_last, mean, mean + std * noise)


def noise_mse(noise: jax.Array, eps_pred: jax.Array) -> jax.Array:
    """The training loss: mean squared error between the true and the predicted noise."""
    return jnp.mean(jnp.square(noise - eps_pred))


def diffusion_loss(
    schedule: Schedule, eps_fn: EpsFn, x0: jax.Array, t: jax.Array, noise: jax.Array
) -> jax.Array:
    """Noise x0 to timestep t with ``noise`` and score ``eps_fn``'s prediction of it."""
    return noise_mse(noise, eps_fn(q_sample(schedule, x0, t, noise), t))


def sample(
    schedule: Schedule,
    eps_fn: EpsFn,
    key: jax.Array,
    shape: Sequence[int],
    *,
    dtype: jnp.dtype = jnp.float32,
    trajectory_steps: Sequence[int] | None = None,
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Run the whole reverse chain from x_T ~ N(0, I) to x_0 as one `lax.scan`.

    ``eps_fn(x_t, t)`` predicts the noise; ``shape`` is the NHWC shape of the batch.
    With ``trajectory_steps`` (timesteps in [0, T]), also return the states x_t at those
    steps, stacked in the order given (T denotes the initial noise, 0 the final sample).
    Jit-compile a closure over this function to get one XLA program for the whole chain.
    """
    num_steps = schedule.num_timesteps
    shape = tuple(shape)
    init_key, step_key = jax.random.split(key)
    x_T = jax.random.normal(init_key, shape, dtype)

    steps = [] if trajectory_steps is None else [int(s) for s in trajectory_steps]
    for s in steps:
        if not 0 <= s <= num_steps:
            raise ValueError(f"trajectory step {s} is outside [0, {num_steps}]")
    # slot[i] is where the state after reaching timestep i is written; unrecorded steps
    # write to a scratch slot at the end that is dropped.
    slot = np.full(num_steps + 1, len(steps), dtype=np.int32)
    for k, s in enumerate(steps):
        slot[s] = k
    slot = jnp.asarray(slot)
    buffer = jnp.zeros((len(steps) + 1,) + shape, dtype).at[slot[num_steps]].set(x_T)

    def body(carry, i):
        x, buf = carry
        t = jnp.full((shape[0],), i, dtype=jnp.int32)
        noise = jax.random.normal(jax.random.fold_in(step_key, i), shape, dtype)
        x = p_sample_step(schedule, eps_fn(x, t), x, t, noise).astype(dtype)
        if steps:
            buf = buf.at[slot[i]].set(x)
        return (x, buf), None

    (x0, buffer), _ = jax.lax.scan(body, (x_T, buffer), jnp.arange(num_steps - 1, -1, -1))
    if trajectory_steps is None:
        return x0
    return x0, buffer[: len(steps)]
