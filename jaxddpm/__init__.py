"""jaxddpm: denoising diffusion (DDPM) in JAX/Flax, verified against the PyTorch original.

The diffusion core is a frozen `Schedule` pytree and pure functions that take it first::

    import jax, jaxddpm as jd
    schedule = jd.make_schedule("linear", 300)
    x_t = jd.q_sample(schedule, x0, t, noise)
"""

from jaxddpm.kernels import xla_flags as _xla_flags

_xla_flags.apply()  # before JAX creates its CPU backend; see jaxddpm/kernels/xla_flags.py

from jaxddpm.diffusion import (  # noqa: E402
    classifier_free_guidance,
    ddim_sample,
    ddim_step,
    diffusion_loss,
    min_snr_weights,
    noise_mse,
    p_mean,
    p_sample_step,
    prediction_loss,
    prediction_target,
    predict_x0_from_eps,
    q_posterior,
    q_sample,
    sample,
    split_prediction,
)
from jaxddpm.kernels import ConvPolicy, conv_transpose_4x4_s2
from jaxddpm.models import BatchNorm, ConvBlock, DDPMUNet, SimpleUNet, sinusoidal_embedding
from jaxddpm.schedule import BETA_SCHEDULES, Schedule, extract, make_schedule
from jaxddpm.train import (
    TrainState,
    apply_update,
    create_train_state,
    ema_update,
    jit_train_step,
    jit_train_steps,
    make_optimizer,
    state_from_variables,
    train_step,
    train_steps,
)

__version__ = "0.1.0"


def __getattr__(name: str):
    # `Pipeline` (orbax, the data code) and `save_grid` (PIL) are imported on first use, so
    # that `import jaxddpm` (and the command line's --help) stays fast.
    if name == "Pipeline":
        from jaxddpm.pipeline import Pipeline

        return Pipeline
    if name == "save_grid":
        from jaxddpm.images import save_grid

        return save_grid
    raise AttributeError(f"module 'jaxddpm' has no attribute {name!r}")

__all__ = [
    "BETA_SCHEDULES",
    "BatchNorm",
    "ConvPolicy",
    "ConvBlock",
    "DDPMUNet",
    "Pipeline",
    "Schedule",
    "SimpleUNet",
    "TrainState",
    "apply_update",
    "conv_transpose_4x4_s2",
    "classifier_free_guidance",
    "create_train_state",
    "ddim_sample",
    "ddim_step",
    "diffusion_loss",
    "ema_update",
    "extract",
    "jit_train_step",
    "jit_train_steps",
    "make_optimizer",
    "make_schedule",
    "min_snr_weights",
    "noise_mse",
    "p_mean",
    "p_sample_step",
    "predict_x0_from_eps",
    "prediction_loss",
    "prediction_target",
    "q_posterior",
    "q_sample",
    "sample",
    "sinusoidal_embedding",
    "split_prediction",
    "state_from_variables",
    "train_step",
    "train_steps",
]
