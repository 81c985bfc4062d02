"""Train state, the compiled training step, and multi-step training on a resident dataset."""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from jaxddpm import diffusion
from jaxddpm.options import TIMESTEP_SAMPLING
from jaxddpm.schedule import Schedule

PyTree = Any


@flax.struct.dataclass
class TrainState:
    """Everything that changes during training. A pytree; checkpointed as a whole."""

    step: jax.Array
    params: PyTree
    batch_stats: PyTree
    opt_state: PyTree
    ema_params: PyTree


def learning_rate_schedule(learning_rate: float, schedule: str = "constant", warmup_steps: int = 0,
                           total_steps: int = 0) -> float | optax.Schedule:
    """The learning rate per step: ``learning_rate`` throughout ("constant", the article's),
    or decayed to 0 along a half cosine ending at ``total_steps`` ("cosine"); either after a
    linear warmup from 0 over ``warmup_steps``. A plain float where nothing varies."""
    if schedule == "constant" and warmup_steps <= 0:
        return learning_rate
    if schedule == "cosine":
        decay = optax.cosine_decay_schedule(learning_rate, max(total_steps - warmup_steps, 1))
    else:
        decay = optax.constant_schedule(learning_rate)
    if warmup_steps <= 0:
        return decay
    warmup = optax.linear_schedule(0.0, learning_rate, warmup_steps)
    return optax.join_schedules([warmup, decay], [warmup_steps])


def make_optimizer(learning_rate: float | optax.Schedule = 1e-3, grad_clip_norm: float | None = None,
                   betas: tuple[float, float] = (0.9, 0.999)) -> optax.GradientTransformation:
    """Adam with the article's learning rate (PyTorch's defaults for betas and epsilon), or a
    schedule of it (`learning_rate_schedule`); ``betas`` are Adam's (b1, b2)."""
    b1, b2 = betas
    adam = optax.adam(learning_rate, b1=b1, b2=b2)
    if grad_clip_norm:
        return optax.chain(optax.clip_by_global_norm(grad_clip_norm), adam)
    return adam


def state_from_variables(variables: PyTree, tx: optax.GradientTransformation) -> TrainState:
    """A step-0 state for given ``{"params", "batch_stats"}``: fresh optimizer, EMA = params."""
    params = jax.tree.map(jnp.asarray, variables["params"])
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=jax.tree.map(jnp.asarray, variables.get("batch_stats", {})),
        opt_state=tx.init(params),
        ema_params=jax.tree.map(jnp.copy, params),
    )


def create_train_state(
    model: nn.Module, tx: optax.GradientTransformation, key: jax.Array, image_shape: tuple[int, int, int]
) -> TrainState:
    """Initialise parameters, BatchNorm statistics, optimizer state and EMA for HxWxC images.

    Compiled as one program with `init_compiler_options` (inside a traced function, part of
    that function's program): run op by op, initialising even a tiny model dispatches (and
    compiles) hundreds of small operations."""
    create = functools.partial(init_state, model, tx, image_shape=image_shape)
    if isinstance(key, jax.core.Tracer):
        return create(key)
    return jax.jit(create, compiler_options=init_compiler_options())(key)


def init_state(model: nn.Module, tx: optax.GradientTransformation, key: jax.Array,
               image_shape: tuple[int, int, int]) -> TrainState:
    """`create_train_state`'s computation, uncompiled (to be traced inside another program)."""
    x = jnp.zeros((1, *image_shape), model.param_dtype)
    variables = model.init(key, x, jnp.zeros((1,), jnp.int32), train=False)
    return state_from_variables(variables, tx)


def init_compiler_options() -> dict[str, Any]:
    """XLA options for programs that initialise a train state: on the CPU, LLVM optimisation
    level 0. Such a program runs once and is mostly random-number generation, one generator
    per parameter; level 0 compiles the quickstart's in 40% of the time of XLA's default
    (`python scripts/bench_init_compile.py`: 11.8 -> 4.7 s) and runs it in 0.1 s. The values
    are the same distribution, bit for bit but for a last-place rounding in a few percent of
    them, so a state initialised from a key depends on this setting, as it does on the
    backend: every jaxddpm path that initialises a state compiles with it."""
    return {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else {}


def global_norm(tree: PyTree) -> jax.Array:
    """The L2 norm of all leaves together, accumulated in float32 or wider."""
    squares = [jnp.sum(jnp.square(leaf.astype(jnp.promote_types(leaf.dtype, jnp.float32)))) for leaf in jax.tree.leaves(tree)]
    return jnp.sqrt(sum(squares))


def ema_update(ema: PyTree, params: PyTree, decay: float | jax.Array) -> PyTree:
    """``decay * ema + (1 - decay) * params`` leaf by leaf."""
    return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p.astype(e.dtype), ema, params)


def ema_decay_at(step: jax.Array, decay: float, start: int = 0) -> float | jax.Array:
    """The EMA decay of the update that produces step ``step + 1``: 0 (the EMA copies the
    parameters) before ``start``, ``decay`` from then on."""
    if start <= 0:
        return decay
    return jnp.where(step + 1 < start, 0.0, decay)


def stratified_timesteps(key: jax.Array, batch: int, num_timesteps: int) -> jax.Array:
    """``batch`` integer timesteps in [0, T), each uniform, that together cover [0, T)
    evenly: t_i = floor(T * ((u + i / batch) mod 1)) for one uniform u (the low-discrepancy
    sampler of Kingma et al. 2021). Each t_i has the uniform distribution, so the expected
    loss is the same as with independent draws; the batch's mean has less variance."""
    u = jax.random.uniform(key, (), jnp.float32)
    fractions = jnp.mod(u + jnp.arange(batch, dtype=jnp.float32) / batch, 1.0)
    return jnp.minimum(jnp.floor(fractions * num_timesteps).astype(jnp.int32), num_timesteps - 1)


def draw_timesteps_and_noise(
    key: jax.Array, x0: jax.Array, num_timesteps: int, sampling: str = "uniform"
) -> tuple[jax.Array, jax.Array]:
    """Integer timesteps in [0, T), each uniform (``sampling`` "uniform": independent, the
    article's; "stratified": `stratified_timesteps`), and standard normal noise shaped like
    ``x0``."""
    t_key, n_key = jax.random.split(key)
    if sampling == "stratified":
        t = stratified_timesteps(t_key, x0.shape[0], num_timesteps)
    elif sampling == "uniform":
        t = jax.random.randint(t_key, (x0.shape[0],), 0, num_timesteps, dtype=jnp.int32)
    else:
        raise ValueError(f"timestep sampling {sampling!r} is unknown; allowed: {', '.join(TIMESTEP_SAMPLING)}")
    return t, jax.random.normal(n_key, x0.shape, x0.dtype)


def apply_update(
    state: TrainState,
    x0: jax.Array,
    t: jax.Array,
    noise: jax.Array,
    *,
    model: nn.Module,
    tx: optax.GradientTransformation,
    schedule: Schedule,
    ema_decay: float,
    ema_start: int = 0,
    labels: jax.Array | None = None,
    dropout_key: jax.Array | None = None,
    prediction: str = "eps",
    min_snr_gamma: float = 0.0,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step for given x0, timesteps and noise (and labels, dropout key).

    Deterministic. With the defaults it is the article's step: noise prediction, plain
    mean squared error, BatchNorm statistics updated.
    """
    rngs = {} if dropout_key is None else {"dropout": dropout_key}
    label_args = () if labels is None else (labels,)

    def loss_fn(params):
        x_t = diffusion.q_sample(schedule, x0, t, noise)
        variables = {"params": params, "batch_stats": state.batch_stats}
        out, updates = model.apply(variables, x_t, t, True, *label_args, mutable=["batch_stats"], rngs=rngs)
        loss = diffusion.prediction_loss(
            schedule, out.astype(x0.dtype), x0, t, noise, prediction=prediction, min_snr_gamma=min_snr_gamma
        )
        return loss, updates.get("batch_stats", state.batch_stats)

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = TrainState(
        step=state.step + 1,
        params=params,
        batch_stats=batch_stats,
        opt_state=opt_state,
        ema_params=ema_update(state.ema_params, params, ema_decay_at(state.step, ema_decay, ema_start)),
    )
    return new_state, {"loss": loss, "grad_norm": global_norm(grads)}


def drop_labels(key: jax.Array, labels: jax.Array, rate: float, null_label: int) -> jax.Array:
    """Replace each label by ``null_label`` with probability ``rate`` (classifier-free guidance)."""
    if rate <= 0:
        return labels
    return jnp.where(jax.random.bernoulli(key, rate, labels.shape), null_label, labels)


def train_step(
    state: TrainState,
    batch: jax.Array,
    key: jax.Array,
    *,
    model: nn.Module,
    tx: optax.GradientTransformation,
    schedule: Schedule,
    ema_decay: float = 0.999,
    ema_start: int = 0,
    labels: jax.Array | None = None,
    label_dropout: float = 0.0,
    prediction: str = "eps",
    min_snr_gamma: float = 0.0,
    timestep_sampling: str = "uniform",
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One training step on a batch of images in [-1, 1] (and their class labels).

    ``key`` is the run's key; the step's timesteps and noise come from it folded with the
    step counter, so a resumed run draws exactly what an uninterrupted one would. Dropout
    and label dropout draw from a separate branch of the same key.
    """
    step_key = jax.random.fold_in(key, state.step)
    t, noise = draw_timesteps_and_noise(step_key, batch, schedule.num_timesteps, timestep_sampling)
    dropout_key, label_key = jax.random.split(jax.random.fold_in(step_key, 1))
    if labels is not None:
        labels = drop_labels(label_key, labels, label_dropout, getattr(model, "num_classes", 0))
    return apply_update(
        state, batch, t, noise, model=model, tx=tx, schedule=schedule, ema_decay=ema_decay, ema_start=ema_start,
        labels=labels, dropout_key=dropout_key, prediction=prediction, min_snr_gamma=min_snr_gamma,
    )


def jit_train_step(
    model: nn.Module, tx: optax.GradientTransformation, schedule: Schedule, ema_decay: float
) -> Callable[[TrainState, jax.Array, jax.Array], tuple[TrainState, dict[str, jax.Array]]]:
    """`train_step` compiled once, with the state's buffers donated."""
    step = functools.partial(train_step, model=model, tx=tx, schedule=schedule, ema_decay=ema_decay)
    return jax.jit(step, donate_argnums=0)


def train_steps(
    state: TrainState, batches: jax.Array, key: jax.Array, *, labels: jax.Array | None = None, **step_options
) -> tuple[TrainState, dict[str, jax.Array]]:
    """`train_step` on each of ``batches`` (S, B, H, W, C) in turn (and ``labels`` (S, B)),
    as one loop (``lax.scan``): the same result as S calls of `train_step`, in one
    dispatch. ``step_options``: `train_step`'s keyword arguments (``model``, ``tx``,
    ``schedule``, ``ema_decay``, ...). Each metric has S entries, one per step."""

    def body(state, xs):
        batch, batch_labels = xs
        return train_step(state, batch, key, labels=batch_labels, **step_options)

    return jax.lax.scan(body, state, (batches, labels))


def jit_train_steps(
    model: nn.Module, tx: optax.GradientTransformation, schedule: Schedule, ema_decay: float
) -> Callable[[TrainState, jax.Array, jax.Array], tuple[TrainState, dict[str, jax.Array]]]:
    """`train_steps` compiled (once per number of steps S), with the state's buffers donated.

    Several steps per call save the per-call setup of a compiled program; on XLA:CPU that
    is mostly allocating the step's temporaries afresh (see experiments/bench/README.md)."""
    steps = functools.partial(train_steps, model=model, tx=tx, schedule=schedule, ema_decay=ema_decay)
    return jax.jit(steps, donate_argnums=0)
