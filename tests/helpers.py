"""Tiny run configurations shared by the training-program tests."""

from jaxddpm import config as config_lib

TINY_OVERRIDES = {
    "model.channels": "(4, 8)",
    "model.time_emb_dim": "8",
    "data.image_size": "8",
    "diffusion.num_timesteps": "10",
    "train.batch_size": "8",
    "train.num_steps": "4",
    "train.log_every_steps": "2",
    "checkpoint.every_steps": "2",
    "sample.num": "4",
}


def tiny_config(name: str = "quickstart", **overrides: str):
    values = dict(TINY_OVERRIDES, **{k.replace("__", "."): str(v) for k, v in overrides.items()})
    return config_lib.apply_overrides(config_lib.load_config(name), values)


def tiny_argv(**overrides: str) -> list[str]:
    values = dict(TINY_OVERRIDES, **{k.replace("__", "."): str(v) for k, v in overrides.items()})
    return [f"--config.{k}={v}" for k, v in values.items()]
