"""The variational bound on the negative log-likelihood, in bits per dimension.

L = L_T + sum_{t>=1} L_t + L_0 (Ho et al. 2020, eq. 5), with the reverse process the
samplers use: mean from the predicted noise, variance the posterior variance (the clipped
log-variance at t = 0). L_0 is a discretised Gaussian over the 256 pixel values. Timestep
indices are 0-based as everywhere in jaxddpm: index 0 is the paper's t = 1.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxddpm import diffusion
from jaxddpm.schedule import Schedule, extract

LOG2 = float(np.log(2.0))


def normal_kl(mean1: jax.Array, logvar1: jax.Array, mean2: jax.Array, logvar2: jax.Array) -> jax.Array:
    """KL(N(mean1, exp(logvar1)) || N(mean2, exp(logvar2))), elementwise, in nats."""
    return 0.5 * (logvar2 - logvar1 + jnp.exp(logvar1 - logvar2) + jnp.square(mean1 - mean2) * jnp.exp(-logvar2) - 1.0)


def discretized_gaussian_log_likelihood(x: jax.Array, mean: jax.Array, log_scale: jax.Array) -> jax.Array:
    """log P(x) for x on the 256-level grid in [-1, 1] (bin width 2/255) under N(mean, scale^2),
    with the outermost bins extended to infinity; elementwise, in nats."""
    centered = x - mean
    inv_std = jnp.exp(-log_scale)
    upper = inv_std * (centered + 1.0 / 255.0)
    lower = inv_std * (centered - 1.0 / 255.0)
    log_cdf_upper = jax.scipy.special.log_ndtr(upper)
    log_sf_lower = jax.scipy.special.log_ndtr(-lower)
    # P(lower < z < upper) computed on the side of zero where it does not cancel.
    mid = jnp.where(
        lower > 0,
        jnp.log(jnp.maximum(jax.scipy.special.ndtr(-lower) - jax.scipy.special.ndtr(-upper), 1e-30)),
        jnp.log(jnp.maximum(jax.scipy.special.ndtr(upper) - jax.scipy.special.ndtr(lower), 1e-30)),
    )
    return jnp.where(x < -0.999, log_cdf_upper, jnp.where(x > 0.999, log_sf_lower, mid))


def _mean_bits(nats: jax.Array) -> jax.Array:
    return jnp.mean(nats, axis=tuple(range(1, nats.ndim))) / LOG2


def prior_bpd(schedule: Schedule, x0: jax.Array) -> jax.Array:
    """L_T: KL(q(x_T | x_0) || N(0, I)) per example, bits/dim."""
    t = jnp.full((x0.shape[0],), schedule.num_timesteps - 1, jnp.int32)
    mean = extract(schedule.sqrt_alphas_cumprod, t, x0.ndim) * x0
    logvar = jnp.log(extract(1.0 - schedule.alphas_cumprod, t, x0.ndim))
    return _mean_bits(normal_kl(mean, jnp.broadcast_to(logvar, x0.shape), 0.0, 0.0))


def timestep_bpd(schedule: Schedule, eps_fn, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
    """The bound's term at 0-based timestep ``t`` (one value for the batch), per example.

    t >= 1: KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)); t = 0: -log p(x_0 | x_1), discretised.
    """
    tt = jnp.full((x0.shape[0],), t, jnp.int32)
    x_t = diffusion.q_sample(schedule, x0, tt, noise)
    true_mean, _, true_logvar = diffusion.q_posterior(schedule, x0, x_t, tt)
    model_mean = diffusion.p_mean(schedule, eps_fn(x_t, tt), x_t, tt)
    model_logvar = extract(schedule.posterior_log_variance_clipped, tt, x0.ndim)
    kl = _mean_bits(normal_kl(true_mean, true_logvar, model_mean, jnp.broadcast_to(model_logvar, x0.shape)))
    decoder = -_mean_bits(discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_logvar))
    return jnp.where(t == 0, decoder, kl)


def bpd_terms(schedule: Schedule, eps_fn, x0: jax.Array, key: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(prior (B,), terms (T, B)) of the bound in bits/dim for images ``x0`` in [-1, 1]
    on the 256-level grid. Each timestep draws its noise from ``fold_in(key, t)``. One
    `lax.map` over the timesteps: jit a closure over it for one program."""

    def term(t):
        noise = jax.random.normal(jax.random.fold_in(key, t), x0.shape, x0.dtype)
        return timestep_bpd(schedule, eps_fn, x0, t, noise)

    terms = jax.lax.map(term, jnp.arange(schedule.num_timesteps))
    return prior_bpd(schedule, x0), terms
