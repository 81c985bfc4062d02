"""Tiny run configurations shared by the training-program tests."""

from jaxddpm import config as config_lib

TINY_OVERRIDES = {
    "model.name": "simple_unet",
    "model.channels": "(4, 8)",
    "model.time_emb_dim": "8",
    "data.image_size": "8",
    "diffusion.num_timesteps": "10",
    "train.batch_size": "8",
    "train.learning_rate": "1e-3",  # the tests' tolerances are sized for the article's rate
    "train.lr_schedule": "constant",  # the quickstart's warmup would outlast a tiny run
    "train.warmup_steps": "0",
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


# diffusers configs: google/ddpm-cifar10-32's, and a tiny one with every option the
# cifar10 config leaves at its default set otherwise.
CIFAR10_UNET = {  # google/ddpm-cifar10-32's UNet2DModel config.json
    "_class_name": "UNet2DModel", "_diffusers_version": "0.1.1", "act_fn": "silu", "attention_head_dim": None,
    "block_out_channels": [128, 256, 256, 256], "center_input_sample": False,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"], "downsample_padding": 0,
    "flip_sin_to_cos": False, "freq_shift": 1, "in_channels": 3, "layers_per_block": 2, "mid_block_scale_factor": 1,
    "norm_eps": 1e-06, "norm_num_groups": 32, "out_channels": 3, "sample_size": 32, "time_embedding_type": "positional",
    "up_block_types": ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
}
CIFAR10_SCHEDULER = {"_class_name": "DDPMScheduler", "beta_end": 0.02, "beta_schedule": "linear", "beta_start": 0.0001,
                     "clip_sample": True, "num_train_timesteps": 1000, "trained_betas": None, "variance_type": "fixed_large"}
TINY_UNET = dict(CIFAR10_UNET, block_out_channels=[16, 32], sample_size=8, norm_num_groups=8, attention_head_dim=8,
                 flip_sin_to_cos=True, freq_shift=0, downsample_padding=1, mid_block_scale_factor=2.0, norm_eps=1e-5,
                 resnet_time_scale_shift="scale_shift", attn_norm_num_groups=8,
                 down_block_types=["AttnDownBlock2D", "DownBlock2D"], up_block_types=["UpBlock2D", "AttnUpBlock2D"], layers_per_block=1)


def tiny_ddpm_pipeline(qkv_layout: str):
    """A `Pipeline` of a DDPMUNet in the `TINY_UNET` configuration with random weights everywhere."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jaxddpm import Pipeline, factory
    from parity import diffusers_format as df

    config = df.config_from_diffusers(TINY_UNET, CIFAR10_SCHEDULER)
    config.model.qkv_layout = qkv_layout
    model = factory.build_model(config)
    shapes = jax.eval_shape(lambda x, t: model.init(jax.random.key(0), x, t, False), jnp.zeros((1, 8, 8, 3)), jnp.zeros((1,), jnp.int32))
    # Random values everywhere (zero-initialised layers included), so that every tensor's place is tested.
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda a: rng.standard_normal(a.shape).astype(np.float32) * 0.3, shapes["params"])
    return Pipeline(config, {"params": params, "batch_stats": {}})
