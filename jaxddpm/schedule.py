"""Noise schedules as a frozen pytree of precomputed tables.

Every table is computed once in float64 NumPy and cast to the requested dtype, so the
values do not depend on the accelerator or on the order of floating-point reductions.
"""

from __future__ import annotations

from typing import Callable

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

BetaFn = Callable[[int, float, float], np.ndarray]


def linear_betas(num_timesteps: int, beta_start: float, beta_end: float) -> np.ndarray:
    """Betas spaced evenly from ``beta_start`` to ``beta_end`` (Ho et al. 2020)."""
    return np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64)


def quadratic_betas(num_timesteps: int, beta_start: float, beta_end: float) -> np.ndarray:
    """Betas whose square roots are evenly spaced (the original DDPM code's "quad")."""
    return np.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=np.float64) ** 2


def sigmoid_betas(num_timesteps: int, beta_start: float, beta_end: float) -> np.ndarray:
    """Betas following a sigmoid from ``beta_start`` to ``beta_end`` over [-6, 6] (GeoDiff)."""
    s = 1.0 / (1.0 + np.exp(-np.linspace(-6.0, 6.0, num_timesteps, dtype=np.float64)))
    return s * (beta_end - beta_start) + beta_start


COSINE_OFFSET = 0.008  # s in Nichol & Dhariwal (2021), eq. 17
COSINE_MAX_BETA = 0.999


def cosine_betas(num_timesteps: int, beta_start: float = 0.0, beta_end: float = 0.0) -> np.ndarray:
    """Nichol & Dhariwal (2021): alpha_bar(t) = f(t) / f(0), f(t) = cos^2(pi/2 (t/T + s) / (1 + s)),
    betas clipped at 0.999. ``beta_start`` and ``beta_end`` are not used."""
    steps = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
    f = np.cos((steps + COSINE_OFFSET) / (1.0 + COSINE_OFFSET) * np.pi / 2.0) ** 2
    alphas_cumprod = f / f[0]
    return np.minimum(1.0 - alphas_cumprod[1:] / alphas_cumprod[:-1], COSINE_MAX_BETA)


# Each entry maps (num_timesteps, beta_start, beta_end) to float64 betas. New schedules
# register here and become selectable by name in `make_schedule` and in configs.
BETA_SCHEDULES: dict[str, BetaFn] = {
    "linear": linear_betas,
    "cosine": cosine_betas,
    "quadratic": quadratic_betas,
    "sigmoid": sigmoid_betas,
}


@flax.struct.dataclass
class Schedule:
    """Per-timestep tables of a diffusion process, indexed by integer t in [0, T)."""

    betas: jax.Array
    alphas: jax.Array
    alphas_cumprod: jax.Array
    alphas_cumprod_prev: jax.Array
    sqrt_recip_alphas: jax.Array
    sqrt_alphas_cumprod: jax.Array
    sqrt_one_minus_alphas_cumprod: jax.Array
    sqrt_recip_alphas_cumprod: jax.Array
    sqrt_recipm1_alphas_cumprod: jax.Array
    posterior_variance: jax.Array
    posterior_log_variance_clipped: jax.Array
    posterior_mean_coef1: jax.Array
    posterior_mean_coef2: jax.Array

    @property
    def num_timesteps(self) -> int:
        return self.betas.shape[0]


def tables_from_betas(betas: np.ndarray) -> dict[str, np.ndarray]:
    """All schedule tables, in float64, from a float64 vector of betas."""
    betas = np.asarray(betas, dtype=np.float64)
    alphas = 1.0 - betas
    alphas_cumprod = np.cumprod(alphas)
    alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
    posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
    # The posterior variance is 0 at t = 0; its log is clipped to the value at t = 1.
    clipped = np.append(posterior_variance[1], posterior_variance[1:]) if len(betas) > 1 else betas
    return dict(
        betas=betas,
        alphas=alphas,
        alphas_cumprod=alphas_cumprod,
        alphas_cumprod_prev=alphas_cumprod_prev,
        sqrt_recip_alphas=np.sqrt(1.0 / alphas),
        sqrt_alphas_cumprod=np.sqrt(alphas_cumprod),
        sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - alphas_cumprod),
        sqrt_recip_alphas_cumprod=np.sqrt(1.0 / alphas_cumprod),
        sqrt_recipm1_alphas_cumprod=np.sqrt(1.0 / alphas_cumprod - 1.0),
        posterior_variance=posterior_variance,
        posterior_log_variance_clipped=np.log(clipped),
        posterior_mean_coef1=betas * np.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod),
        posterior_mean_coef2=(1.0 - alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - alphas_cumprod),
    )


def validate_schedule_args(kind: str, num_timesteps: int, beta_start: float, beta_end: float) -> None:
    """Raise ValueError with a one-line message for arguments no schedule accepts."""
    if kind not in BETA_SCHEDULES:
        raise ValueError(f"schedule kind {kind!r} is unknown; allowed: {', '.join(sorted(BETA_SCHEDULES))}")
    if isinstance(num_timesteps, bool) or not isinstance(num_timesteps, (int, np.integer)) or num_timesteps <= 0:
        raise ValueError(f"num_timesteps must be a positive integer, got {num_timesteps!r}")
    if not (0.0 < beta_start < 1.0 and 0.0 < beta_end < 1.0):
        raise ValueError(f"betas must lie in (0, 1), got beta_start={beta_start!r}, beta_end={beta_end!r}")
    if beta_end < beta_start:
        raise ValueError(f"betas must not decrease: beta_end={beta_end!r} < beta_start={beta_start!r}")


def make_schedule(
    kind: str = "linear",
    num_timesteps: int = 300,
    beta_start: float = 1e-4,
    beta_end: float = 0.02,
    dtype: jnp.dtype = jnp.float32,
) -> Schedule:
    """Build a `Schedule`. Defaults are the article's: T = 300, linear betas 1e-4..0.02."""
    validate_schedule_args(kind, num_timesteps, beta_start, beta_end)
    betas = BETA_SCHEDULES[kind](int(num_timesteps), float(beta_start), float(beta_end))
    tables = tables_from_betas(betas)
    return Schedule(**{name: jnp.asarray(value, dtype=dtype) for name, value in tables.items()})


def extract(table: jax.Array, t: jax.Array, ndim: int) -> jax.Array:
    """``table[t]`` reshaped to broadcast against an array of rank ``ndim`` with batch axis 0."""
    values = table[t]
    return values.reshape(values.shape + (1,) * (ndim - values.ndim))
