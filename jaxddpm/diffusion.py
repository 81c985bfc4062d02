"""The DDPM forward process, posterior, reverse step, loss and sampler as pure functions.

Every function takes the `Schedule` first and receives its randomness as an argument
(the noise itself, or a PRNG key for the sampler). Images are NHWC with batch axis 0;
``t`` holds one integer timestep per batch element.
"""

from __future__ import annotations

from typing import Callable, Sequence, TypeVar

import jax
import jax.numpy as jnp
import numpy as np

from jaxddpm.options import PREDICTIONS, VARIANCES
from jaxddpm.schedule import Schedule, extract

EpsFn = Callable[[jax.Array, jax.Array], jax.Array]
T = TypeVar("T")


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


def predict_eps_from_x0(schedule: Schedule, x_t: jax.Array, t: jax.Array, x0: jax.Array) -> jax.Array:
    """The noise that takes ``x0`` to ``x_t`` at timestep t."""
    nd = x_t.ndim
    return (extract(schedule.sqrt_recip_alphas_cumprod, t, nd) * x_t - x0) / extract(
        schedule.sqrt_recipm1_alphas_cumprod, t, nd
    )


def v_from_x0_eps(schedule: Schedule, x0: jax.Array, t: jax.Array, eps: jax.Array) -> jax.Array:
    """The velocity v = sqrt(abar_t) eps - sqrt(1 - abar_t) x0 (Salimans & Ho 2022)."""
    nd = x0.ndim
    return extract(schedule.sqrt_alphas_cumprod, t, nd) * eps - extract(schedule.sqrt_one_minus_alphas_cumprod, t, nd) * x0


def x0_eps_from_v(schedule: Schedule, x_t: jax.Array, t: jax.Array, v: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(x0, eps) from x_t and a velocity v: x0 = a x_t - s v, eps = s x_t + a v."""
    nd = x_t.ndim
    a = extract(schedule.sqrt_alphas_cumprod, t, nd)
    s = extract(schedule.sqrt_one_minus_alphas_cumprod, t, nd)
    return a * x_t - s * v, s * x_t + a * v


def for_prediction(prediction: str, *, eps: Callable[[], T], x0: Callable[[], T], v: Callable[[], T]) -> T:
    """The case of ``prediction`` (one of `PREDICTIONS`), computed: ``eps()``, ``x0()`` or ``v()``."""
    cases = {"eps": eps, "x0": x0, "v": v}
    if prediction not in cases:
        raise ValueError(f"prediction {prediction!r} is unknown; allowed: {', '.join(PREDICTIONS)}")
    return cases[prediction]()


def split_prediction(
    schedule: Schedule, prediction: str, x_t: jax.Array, t: jax.Array, output: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """(x0, eps) implied by a model ``output`` that estimates ``prediction`` at (x_t, t)."""
    return for_prediction(
        prediction,
        eps=lambda: (predict_x0_from_eps(schedule, x_t, t, output), output),
        x0=lambda: (output, predict_eps_from_x0(schedule, x_t, t, output)),
        v=lambda: x0_eps_from_v(schedule, x_t, t, output),
    )


def prediction_target(schedule: Schedule, prediction: str, x0: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
    """What a model predicting ``prediction`` should output for x_t = q_sample(x0, t, noise)."""
    return for_prediction(prediction, eps=lambda: noise, x0=lambda: x0, v=lambda: v_from_x0_eps(schedule, x0, t, noise))


def as_eps_fn(schedule: Schedule, prediction: str, model_fn: EpsFn) -> EpsFn:
    """Wrap a model predicting ``prediction`` into a noise predictor for the samplers."""
    if prediction == "eps":
        return model_fn
    return lambda x_t, t: split_prediction(schedule, prediction, x_t, t, model_fn(x_t, t))[1]


def snr(schedule: Schedule, t: jax.Array) -> jax.Array:
    """Signal-to-noise ratio abar_t / (1 - abar_t) at integer timesteps ``t``."""
    abar = schedule.alphas_cumprod[t]
    return abar / (1.0 - abar)


def min_snr_weights(schedule: Schedule, t: jax.Array, prediction: str, gamma: float) -> jax.Array:
    """Min-SNR-gamma loss weights (Hang et al. 2023), per example.

    They weight each timestep's x0 error by min(SNR, gamma); expressed on the target a
    model predicts: min(SNR, gamma) / SNR for eps, min(SNR, gamma) for x0, and
    min(SNR, gamma) / (SNR + 1) for v.
    """
    ratio = snr(schedule, t)
    clipped = jnp.minimum(ratio, gamma)
    return for_prediction(prediction, eps=lambda: clipped / ratio, x0=lambda: clipped, v=lambda: clipped / (ratio + 1.0))


def prediction_loss(
    schedule: Schedule,
    output: jax.Array,
    x0: jax.Array,
    t: jax.Array,
    noise: jax.Array,
    *,
    prediction: str = "eps",
    min_snr_gamma: float = 0.0,
) -> jax.Array:
    """Mean squared error of a model ``output`` against its target.

    With the defaults (noise prediction, no weighting) this is exactly `noise_mse`, the
    article's loss. ``min_snr_gamma > 0`` weights each example by `min_snr_weights`.
    """
    target = prediction_target(schedule, prediction, x0, t, noise)
    if min_snr_gamma <= 0:
        return noise_mse(target, output)
    per_example = example_means(jnp.square(target - output))
    return jnp.mean(min_snr_weights(schedule, t, prediction, min_snr_gamma).astype(per_example.dtype) * per_example)


def classifier_free_guidance(cond: jax.Array, uncond: jax.Array, scale: float | jax.Array) -> jax.Array:
    """uncond + scale * (cond - uncond): 0 gives the unconditional and 1 the conditional output."""
    return uncond + scale * (cond - uncond)


def p_mean(schedule: Schedule, eps: jax.Array, x_t: jax.Array, t: jax.Array) -> jax.Array:
    """Mean of the learned reverse step p(x_{t-1} | x_t) for predicted noise ``eps``."""
    nd = x_t.ndim
    scaled_eps = extract(schedule.betas, t, nd) * eps / extract(schedule.sqrt_one_minus_alphas_cumprod, t, nd)
    return extract(schedule.sqrt_recip_alphas, t, nd) * (x_t - scaled_eps)


def p_sample_step(
    schedule: Schedule,
    eps: jax.Array,
    x_t: jax.Array,
    t: jax.Array,
    noise: jax.Array,
    *,
    clip_x0: bool = False,
    variance: str = "fixed_small",
) -> jax.Array:
    """One DDPM ancestral step x_t -> x_{t-1} (Ho et al. 2020, Algorithm 2).

    The defaults are the article's: the mean from the predicted noise, the posterior
    variance ("fixed_small"). ``variance="fixed_large"`` uses beta_t instead (Ho et al.'s
    choice for CIFAR-10). ``clip_x0`` clips the predicted x0 to [-1, 1] and takes the
    posterior mean given it, as Ho et al.'s reference sampler does (without clipping the two
    means are equal). No noise is added where t == 0.
    """
    nd = x_t.ndim
    if clip_x0:
        x0 = jnp.clip(predict_x0_from_eps(schedule, x_t, t, eps), -1.0, 1.0)
        mean = q_posterior(schedule, x0, x_t, t)[0]
    else:
        mean = p_mean(schedule, eps, x_t, t)
    if variance not in VARIANCES:
        raise ValueError(f"variance {variance!r} is unknown; allowed: {', '.join(VARIANCES)}")
    table = schedule.posterior_variance if variance == "fixed_small" else schedule.betas
    std = jnp.sqrt(extract(table, t, nd))
    is_last = (t == 0).reshape(t.shape + (1,) * (nd - t.ndim))
    return jnp.where(is_last, mean, mean + std * noise)


def example_means(x: jax.Array) -> jax.Array:
    """The mean of each example of a batch ``x`` (leading axis), over its other axes.

    Averaged one axis group at a time (for an NHWC image: each row's W * C values, then
    the H rows) rather than in one pass over all of them: XLA:CPU sums a one-pass mean in a
    single float32 accumulator, which on a 4x16x16x3 batch put the loss 9e-7 (relative) from
    its float64 value, against 1e-9 for this. The gradient is the same bit for bit either
    way (compared at 32x8x8x1, 4x16x16x3 and 8x64x64x3).
    """
    if x.ndim > 2:
        x = jnp.mean(x.reshape(x.shape[0], x.shape[1], -1), axis=-1)
    return jnp.mean(x, axis=-1) if x.ndim > 1 else x


def noise_mse(noise: jax.Array, eps_pred: jax.Array) -> jax.Array:
    """The training loss: mean squared error between the true and the predicted noise
    (each example's mean, then the batch's: see `example_means`)."""
    return jnp.mean(example_means(jnp.square(noise - eps_pred)))


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
    clip_x0: bool = False,
    variance: str = "fixed_small",
) -> jax.Array | tuple[jax.Array, jax.Array]:
    """Run the whole reverse chain from x_T ~ N(0, I) to x_0 as one `lax.scan`.

    ``eps_fn(x_t, t)`` predicts the noise; ``shape`` is the NHWC shape of the batch;
    ``clip_x0`` and ``variance`` are `p_sample_step`'s.
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
        x = p_sample_step(schedule, eps_fn(x, t), x, t, noise, clip_x0=clip_x0, variance=variance).astype(dtype)
        if steps:
            buf = buf.at[slot[i]].set(x)
        return (x, buf), None

    (x0, buffer), _ = jax.lax.scan(body, (x_T, buffer), jnp.arange(num_steps - 1, -1, -1))
    if trajectory_steps is None:
        return x0
    return x0, buffer[: len(steps)]


def ddim_timesteps(num_timesteps: int, num_steps: int) -> np.ndarray:
    """``num_steps`` timesteps evenly spread over [0, T), descending, always ending at 0."""
    if not 1 <= num_steps <= num_timesteps:
        raise ValueError(f"DDIM steps must lie in [1, {num_timesteps}], got {num_steps}")
    return np.unique(np.round(np.linspace(0, num_timesteps - 1, num_steps)).astype(np.int32))[::-1].copy()


def ddim_step(
    schedule: Schedule,
    x_t: jax.Array,
    t: jax.Array,
    t_prev: jax.Array,
    eps: jax.Array,
    noise: jax.Array,
    *,
    eta: float | jax.Array,
    clip_x0: bool = False,
) -> jax.Array:
    """One DDIM step x_t -> x_{t_prev} (Song et al. 2021, eq. 12); t_prev = -1 means x_0.

    sigma = eta * sqrt((1 - abar_prev) / (1 - abar_t)) * sqrt(1 - abar_t / abar_prev). With
    t_prev = t - 1 and eta = 1, sigma^2 is the posterior variance and the mean is the
    posterior mean: the ancestral step. eta = 0 is deterministic.
    """
    nd = x_t.ndim
    abar = extract(schedule.alphas_cumprod, t, nd)
    abar_prev = jnp.where(
        (t_prev >= 0).reshape(t_prev.shape + (1,) * (nd - t_prev.ndim)),
        extract(schedule.alphas_cumprod, jnp.maximum(t_prev, 0), nd),
        1.0,
    )
    x0 = predict_x0_from_eps(schedule, x_t, t, eps)
    if clip_x0:
        x0 = jnp.clip(x0, -1.0, 1.0)
        eps = predict_eps_from_x0(schedule, x_t, t, x0)
    sigma = eta * jnp.sqrt((1.0 - abar_prev) / (1.0 - abar) * (1.0 - abar / abar_prev))
    direction = jnp.sqrt(jnp.maximum(1.0 - abar_prev - sigma**2, 0.0)) * eps
    return jnp.sqrt(abar_prev) * x0 + direction + sigma * noise


def ddim_sample(
    schedule: Schedule,
    eps_fn: EpsFn,
    key: jax.Array,
    shape: Sequence[int],
    *,
    num_steps: int,
    eta: float = 0.0,
    clip_x0: bool = False,
    dtype: jnp.dtype = jnp.float32,
    x_T: jax.Array | None = None,
) -> jax.Array:
    """DDIM sampling over `ddim_timesteps` as one `lax.scan`.

    Keys are used as in `sample` (x_T from the first half of ``key``, step noise from the
    second folded with the timestep), so with all T steps and eta = 1 it follows the same
    noise as the ancestral sampler and reproduces it up to rounding. Pass ``x_T`` to start
    from given noise instead (with eta = 0 the result is then a function of x_T alone).
    """
    shape = tuple(shape)
    init_key, step_key = jax.random.split(key)
    if x_T is None:
        x_T = jax.random.normal(init_key, shape, dtype)
    ts = ddim_timesteps(schedule.num_timesteps, num_steps)
    t_prevs = np.append(ts[1:], -1).astype(np.int32)

    def body(x, pair):
        i, i_prev = pair
        t = jnp.full((shape[0],), i, dtype=jnp.int32)
        t_prev = jnp.full((shape[0],), i_prev, dtype=jnp.int32)
        noise = jax.random.normal(jax.random.fold_in(step_key, i), shape, dtype)
        x = ddim_step(schedule, x, t, t_prev, eps_fn(x, t), noise, eta=eta, clip_x0=clip_x0).astype(dtype)
        return x, None

    x0, _ = jax.lax.scan(body, x_T, (jnp.asarray(ts), jnp.asarray(t_prevs)))
    return x0
