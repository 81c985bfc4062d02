"""jaxddpm: denoising diffusion (DDPM) in JAX/Flax, verified against the PyTorch original.

The diffusion core is a frozen `Schedule` pytree and pure functions that take it first::

    import jax, jaxddpm as jd
    schedule = jd.make_schedule("linear", 300)
    x_t = jd.q_sample(schedule, x0, t, noise)

The names below are loaded from their modules on first use, so that ``import jaxddpm``
(and the command line's ``--help``) does not wait for JAX.
"""

import importlib

from jaxddpm.kernels import xla_flags as _xla_flags

_xla_flags.apply()  # before JAX creates its CPU backend; see jaxddpm/kernels/xla_flags.py

__version__ = "0.1.0"

_EXPORTS = {
    "jaxddpm.diffusion": (
        "classifier_free_guidance", "ddim_sample", "ddim_step", "diffusion_loss", "min_snr_weights", "noise_mse",
        "p_mean", "p_sample_step", "prediction_loss", "prediction_target", "predict_x0_from_eps", "q_posterior",
        "q_sample", "sample", "split_prediction",
    ),
    "jaxddpm.kernels": ("ConvPolicy", "conv_transpose_4x4_s2"),
    "jaxddpm.models": ("BatchNorm", "ConvBlock", "DDPMUNet", "SimpleUNet", "sinusoidal_embedding"),
    "jaxddpm.schedule": ("BETA_SCHEDULES", "Schedule", "extract", "make_schedule"),
    "jaxddpm.train": (
        "TrainState", "apply_update", "create_train_state", "ema_update", "jit_train_step", "jit_train_steps",
        "make_optimizer", "state_from_variables", "train_step", "train_steps",
    ),
    "jaxddpm.pipeline": ("Pipeline",),
    "jaxddpm.images": ("save_grid",),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    if name in _MODULE_OF:
        value = getattr(importlib.import_module(_MODULE_OF[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module 'jaxddpm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
