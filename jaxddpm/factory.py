"""From a config to the objects it describes: the model, the schedule, the optimizer, the
initial state and the compiled training step. Config values become typed arguments here,
and nowhere else."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import optax

from jaxddpm import data, parallel
from jaxddpm.kernels import ConvPolicy
from jaxddpm.models import DDPMUNet, SimpleUNet
from jaxddpm.schedule import Schedule, make_schedule
from jaxddpm.train import (TrainState, init_compiler_options, init_state, learning_rate_schedule, make_optimizer,
                           train_step)


def build_model(config: ml_collections.ConfigDict) -> SimpleUNet | DDPMUNet:
    """The model a config describes."""
    m = config.model
    dtype = jnp.bfloat16 if m.dtype == "bfloat16" else jnp.float32
    if m.name == "ddpm_unet":
        return DDPMUNet(
            out_channels=config.data.channels,
            base_channels=m.base_channels,
            channel_mult=tuple(m.channel_mult),
            num_res_blocks=m.num_res_blocks,
            attention_resolutions=tuple(m.attention_resolutions),
            dropout=m.dropout,
            norm_groups=m.norm_groups,
            num_classes=m.num_classes,
            time_flip_sin_to_cos=m.time_flip_sin_to_cos,
            time_freq_shift=m.time_freq_shift,
            downsample_padding=m.downsample_padding,
            norm_eps=m.norm_eps,
            attention_head_dim=m.attention_head_dim,
            qkv_layout=m.qkv_layout,
            mid_scale=m.mid_scale,
            time_scale_shift=m.time_scale_shift,
            upsample_conv=m.upsample_conv,
            dtype=dtype,
        )
    return SimpleUNet(
        channels=tuple(m.channels),
        out_channels=config.data.channels,
        time_emb_dim=m.time_emb_dim,
        num_classes=m.num_classes,
        conv_policy=ConvPolicy(impl=m.conv_impl, upsample=m.upsample_impl),
        dtype=dtype,
    )


def build_schedule(config: ml_collections.ConfigDict) -> Schedule:
    d = config.diffusion
    return make_schedule(d.schedule, d.num_timesteps, d.beta_start, d.beta_end)


def build_optimizer(config: ml_collections.ConfigDict, total_steps: int = 0) -> optax.GradientTransformation:
    """Adam with the config's learning rate schedule over ``total_steps`` (0: ``train.num_steps``;
    the optimizer state has the same structure whatever the number)."""
    t = config.train
    lr = learning_rate_schedule(t.learning_rate, t.lr_schedule, t.warmup_steps, total_steps or t.num_steps)
    return make_optimizer(lr, t.grad_clip_norm or None, tuple(t.adam_betas))


def image_shape(config: ml_collections.ConfigDict) -> tuple[int, int, int]:
    return (config.data.image_size, config.data.image_size, config.data.channels)


def run_keys(seed: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(init, data, step) keys of a run; all randomness of training comes from these."""
    init_key, data_key, step_key = jax.random.split(jax.random.key(seed), 3)
    return init_key, data_key, step_key


def create_sharded_state(model, tx, key: jax.Array, shape, mesh, mode: str = "replicated") -> TrainState:
    """`create_train_state` computed directly into its shardings on ``mesh``."""
    create = functools.partial(init_state, model, tx, image_shape=shape)
    shardings = parallel.tree_shardings(jax.eval_shape(create, key), mesh, mode)
    return jax.jit(create, out_shardings=shardings, compiler_options=init_compiler_options())(key)


def initial_state(config: ml_collections.ConfigDict, key: jax.Array) -> TrainState:
    """The step-0 state of a config's model on all devices, initialised from ``key``."""
    return create_sharded_state(build_model(config), build_optimizer(config), key, image_shape(config),
                                parallel.make_mesh(), config.train.sharding)


def steps_per_call(config: ml_collections.ConfigDict, model) -> int:
    """Training steps per compiled call: ``train.steps_per_call``, or 1 where the model says
    its training step is slow inside a loop on this backend (``model.fast_in_loops()``)."""
    if not model.fast_in_loops():
        return 1
    return int(config.train.steps_per_call)


def make_train_step(model, tx, schedule, config: ml_collections.ConfigDict, mesh=None, state_shardings=None,
                    steps: int = 1):
    """Compiled ``(state, images, labels, data_key, step_key) -> (state, metrics)``, or with
    ``steps`` > 1, ``(state, images, labels, data_key, step_key, n) -> (state, metrics)``
    that runs ``n`` (1 to ``steps``) training steps in one call, as a loop on the device;
    each metric then has ``steps`` entries, the first ``n`` filled. A step gives the same
    result whichever call it runs in (the loop body is one compiled program).

    The batch (and, for a conditional model, its labels) is gathered, flipped and scaled on
    the device from the resident uint8 dataset, so a step needs nothing from the host. On a
    ``mesh`` the global batch is split over its devices (each gathers only its own rows)
    and the state keeps ``state_shardings``.
    """
    t = config.train
    step_fn = functools.partial(
        train_step, model=model, tx=tx, schedule=schedule, ema_decay=t.ema_decay, ema_start=t.ema_start, label_dropout=t.label_dropout,
        prediction=config.diffusion.prediction, min_snr_gamma=config.diffusion.min_snr_gamma,
        timestep_sampling=t.timestep_sampling,
    )
    conditional = config.model.num_classes > 0

    def step(state: TrainState, images_u8: jax.Array, labels: jax.Array, data_key: jax.Array, step_key: jax.Array):
        batch = data.get_batch(images_u8, state.step, data_key, t.batch_size, config.data.random_flip, labels if conditional else None)
        batch, batch_labels = batch if conditional else (batch, None)
        if mesh is not None:
            batch = jax.lax.with_sharding_constraint(batch, parallel.batch_sharding(mesh))
        return step_fn(state, batch, step_key, labels=batch_labels)

    fn = step
    if steps > 1:
        def fn(state, images_u8, labels, data_key, step_key, n):
            shapes = jax.eval_shape(step, state, images_u8, labels, data_key, step_key)[1]
            empty = jax.tree.map(lambda a: jnp.zeros((steps, *a.shape), a.dtype), shapes)

            def body(i, carry):
                state, metrics = carry
                state, m = step(state, images_u8, labels, data_key, step_key)
                return state, jax.tree.map(lambda buf, v: buf.at[i].set(v), metrics, m)

            return jax.lax.fori_loop(0, n, body, (state, empty))

    if mesh is None:
        return jax.jit(fn, donate_argnums=0)
    return jax.jit(fn, donate_argnums=0, out_shardings=(state_shardings, parallel.replicated(mesh)))
