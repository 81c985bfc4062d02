"""`train_and_evaluate(config, workdir)`: the training program behind ``jaxddpm train``.

The loop compiles one training step that gathers its batch from the dataset resident on
the device, dispatches steps ahead of reading their metrics (the host never waits for
the device to log), and checkpoints, samples and logs at step boundaries.
Everything random derives from ``train.seed`` and the step number, so a resumed run
repeats exactly what an uninterrupted one would have done.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxddpm import checkpoint, config as config_lib, data, diffusion, images, parallel
from jaxddpm.events import EventLog
from jaxddpm.files import atomic_write
from jaxddpm.model import SimpleUNet
from jaxddpm.unet import DDPMUNet
from jaxddpm.schedule import Schedule, make_schedule
from jaxddpm.train import TrainState, create_train_state, make_optimizer, train_step

FORWARD_FIGURE_STEPS = 10  # the forward-diffusion figure shows t = 0, T/10, ..., T
METRICS_EVERY = 20  # read metrics from the device every this many steps


class TrainingInterrupted(Exception):
    """SIGINT or SIGTERM arrived; the state was checkpointed at ``step`` first."""

    def __init__(self, signum: int, step: int):
        super().__init__(f"interrupted by {signal.Signals(signum).name} at step {step}; checkpoint saved, rerun to resume")
        self.signum, self.step = signum, step


@contextlib.contextmanager
def _stop_requests() -> dict:
    """Turn SIGINT/SIGTERM into a flag the loop polls (the main thread only)."""
    flag: dict = {}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, lambda signum, frame: flag.setdefault("signum", signum))
    try:
        yield flag
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _truncate_metrics(path: str, last_step: int) -> None:
    """Drop log rows past the restored step (written before an unclean stop)."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        rows = [line for line in f if line.strip() and json.loads(line)["step"] <= last_step]
    with atomic_write(path) as f:
        f.writelines(rows)


def build_model(config: ml_collections.ConfigDict) -> SimpleUNet | DDPMUNet:
    """The model a config describes (config values become typed fields here)."""
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
            dtype=dtype,
        )
    return SimpleUNet(
        channels=tuple(m.channels),
        out_channels=config.data.channels,
        time_emb_dim=m.time_emb_dim,
        upsample_impl=m.upsample_impl,
        conv_impl=m.conv_impl,
        num_classes=m.num_classes,
        dtype=dtype,
    )


def build_schedule(config: ml_collections.ConfigDict) -> Schedule:
    d = config.diffusion
    return make_schedule(d.schedule, d.num_timesteps, d.beta_start, d.beta_end)


def run_keys(seed: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(init, data, step) keys of a run; all randomness of training comes from these."""
    init_key, data_key, step_key = jax.random.split(jax.random.key(seed), 3)
    return init_key, data_key, step_key


def create_sharded_state(model, tx, key: jax.Array, image_shape, mesh, mode: str = "replicated") -> TrainState:
    """`create_train_state` computed directly into its shardings on ``mesh``."""
    create = lambda k: create_train_state(model, tx, k, image_shape)  # noqa: E731
    shardings = parallel.tree_shardings(jax.eval_shape(create, key), mesh, mode)
    return jax.jit(create, out_shardings=shardings)(key)


def initial_state(config: ml_collections.ConfigDict, key: jax.Array) -> TrainState:
    """The step-0 state of a config's model on all devices, initialised from ``key``."""
    model = build_model(config)
    tx = make_optimizer(config.train.learning_rate, config.train.grad_clip_norm or None)
    shape = (config.data.image_size, config.data.image_size, config.data.channels)
    return create_sharded_state(model, tx, key, shape, parallel.make_mesh(), config.train.sharding)


def steps_per_call(config: ml_collections.ConfigDict) -> int:
    """Training steps per compiled call: ``train.steps_per_call``, except 1 for models
    other than simple_unet on the CPU (XLA:CPU runs their gradient convolutions slowly
    inside a loop; simple_unet's are written to stay fast there)."""
    if config.model.name != "simple_unet" and jax.default_backend() == "cpu":
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
        train_step, model=model, tx=tx, schedule=schedule, ema_decay=t.ema_decay, label_dropout=t.label_dropout,
        prediction=config.diffusion.prediction, min_snr_gamma=config.diffusion.min_snr_gamma,
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


def sampler_options(config: ml_collections.ConfigDict, **overrides) -> dict:
    """`make_sampler` keyword arguments from a config's ``diffusion`` and ``sample`` sections."""
    s = config.sample
    options = dict(
        prediction=config.diffusion.prediction, sampler=s.sampler, steps=s.steps, eta=s.eta,
        clip_x0=s.clip_x0, guidance=s.guidance,
    )
    options.update({k: v for k, v in overrides.items() if v is not None})
    return options


def sample_labels(num: int, num_classes: int, label: int = -1) -> np.ndarray | None:
    """Labels for ``num`` samples: all ``label``, or cycling through the classes if -1;
    None for an unconditional model."""
    if num_classes <= 0:
        return None
    if label >= 0:
        return np.full((num,), label, np.int32)
    return (np.arange(num) % num_classes).astype(np.int32)


def make_sampler(
    model,
    schedule: Schedule,
    shape: tuple[int, ...],
    mesh=None,
    *,
    prediction: str = "eps",
    sampler: str = "ancestral",
    steps: int = 0,
    eta: float = 0.0,
    clip_x0: bool = False,
    guidance: float = 1.0,
):
    """Compiled ``(variables, key, labels=None) -> images``: the whole chain in one program.

    ``sampler`` is "ancestral" (the article's, all T steps) or "ddim" (``steps`` steps,
    ``eta``). For a conditional model, ``labels`` selects the classes and ``guidance`` is
    the classifier-free guidance scale (both predictions come from one batched call).
    On a ``mesh`` the batch is split over the devices when the device count divides it,
    and the result is replicated so that every process can read it.
    """
    shard = mesh is not None and shape[0] % mesh.size == 0
    num_classes = getattr(model, "num_classes", 0)

    def run(variables, key, labels=None):
        def model_fn(x, t):
            if shard:
                x = jax.lax.with_sharding_constraint(x, parallel.batch_sharding(mesh))
            if labels is None or guidance == 0.0:
                return model.apply(variables, x, t, False).astype(jnp.float32)
            if guidance == 1.0:
                return model.apply(variables, x, t, False, labels).astype(jnp.float32)
            both = jnp.concatenate([labels, jnp.full_like(labels, num_classes)])
            out = model.apply(variables, jnp.concatenate([x, x]), jnp.concatenate([t, t]), False, both)
            cond, uncond = jnp.split(out.astype(jnp.float32), 2)
            return diffusion.classifier_free_guidance(cond, uncond, guidance)

        eps_fn = diffusion.as_eps_fn(schedule, prediction, model_fn)
        if sampler == "ddim":
            return diffusion.ddim_sample(schedule, eps_fn, key, shape, num_steps=steps, eta=eta, clip_x0=clip_x0)
        return diffusion.sample(schedule, eps_fn, key, shape)

    if mesh is None:
        return jax.jit(run)
    return jax.jit(run, out_shardings=parallel.replicated(mesh))


def sampling_variables(state: TrainState) -> dict:
    return {"params": state.ema_params, "batch_stats": state.batch_stats}


def total_steps(config: ml_collections.ConfigDict, num_examples: int) -> int:
    if config.train.num_steps > 0:
        return config.train.num_steps
    return config.train.num_epochs * (num_examples // config.train.batch_size)


def _stop_requested(stop: dict, at_sync_point: bool) -> bool:
    """Whether to checkpoint and stop now. With several processes, all must stop at the
    same step, so the flag is only consulted (and agreed on) where metrics were just read."""
    if jax.process_count() == 1:
        return "signum" in stop
    if not at_sync_point:
        return False
    if parallel.any_process("signum" in stop):
        stop.setdefault("signum", signal.SIGTERM)
        return True
    return False


class _Progress:
    """A progress bar with ETA on a terminal, plain log lines otherwise; silent if quiet."""

    def __init__(self, total: int, initial: int, quiet: bool = False):
        self.bar = None
        self.quiet = quiet
        if sys.stderr.isatty() and not quiet:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)

    def update(self, steps: int, message: str) -> None:
        if self.bar is not None:
            self.bar.update(steps)
            self.bar.set_postfix_str(message, refresh=False)

    def log(self, line: str) -> None:
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _check_workdir(workdir: str, config: ml_collections.ConfigDict) -> None:
    """Refuse (without writing) a workdir whose checkpoints belong to another config."""
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise config_lib.ConfigError(f"workdir {workdir} exists and is not a directory")
    if not checkpoint.has_checkpoints(workdir):
        return
    saved_path = os.path.join(workdir, "config.json")
    if not os.path.exists(saved_path):
        raise config_lib.ConfigError(f"workdir {workdir} has checkpoints but no config.json; refusing to resume into it")
    with open(saved_path) as f:
        saved = config_lib.from_json(f.read())
    diffs = config_lib.incompatibilities(saved, config)
    if diffs:
        raise config_lib.ConfigError(
            f"workdir {workdir} holds checkpoints of an incompatible config ({'; '.join(diffs)}); "
            "use another --workdir or the saved config"
        )


def _write_forward_figure(path: str, image_u8: np.ndarray, schedule: Schedule, key: jax.Array) -> None:
    T = schedule.num_timesteps
    ts = sorted({min(round(i * T / FORWARD_FIGURE_STEPS), T - 1) for i in range(FORWARD_FIGURE_STEPS + 1)})
    x0 = data.to_model_range(jnp.asarray(image_u8))[None]
    noise = jax.random.normal(key, x0.shape)
    noisy = [diffusion.q_sample(schedule, x0, jnp.array([t]), noise)[0] for t in ts]
    images.save_grid(path, np.stack(noisy), columns=len(ts))


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir: str, on_failure: Callable[[BaseException], None] | None = None
) -> TrainState:
    """Train (or resume) the run that ``config`` describes, writing everything to ``workdir``.

    Raises `ConfigError` or `DataError` before anything is written when the config or the
    data are unusable, and `FloatingPointError` (after keeping the last good checkpoint)
    when the loss or the gradients stop being finite. ``on_failure``, if given, is called
    with the exception that ends the training loop before the checkpoint manager and the
    log writers are closed; for a failed checkpoint write, before `checkpoint.save` gives
    file descriptor 2 back (see there).
    """
    config_lib.validate(config)
    mesh = parallel.make_mesh()
    try:
        parallel.check_batch_size(config.train.batch_size, mesh)
    except ValueError as e:
        raise config_lib.ConfigError(str(e)) from None
    _check_workdir(workdir, config)
    dataset, _ = data.load_splits(config.data)
    if len(dataset) < config.train.batch_size:
        raise data.DataError(f"train.batch_size={config.train.batch_size} exceeds the dataset's {len(dataset)} images")
    num_classes = config.model.num_classes
    if num_classes > 0 and not (dataset.labels.min() >= 0 and dataset.labels.max() < num_classes):
        found = "no labels" if dataset.labels.max() < 0 else f"labels in [{dataset.labels.min()}, {dataset.labels.max()}]"
        raise data.DataError(
            f"model.num_classes={num_classes} needs labels in [0, {num_classes}) but the dataset has {found}; "
            + (f"set model.num_classes={dataset.num_classes} or 0" if dataset.num_classes > 0 else "set model.num_classes=0")
        )

    main = parallel.is_main_process()  # process 0 writes everything but the checkpoints
    os.makedirs(workdir, exist_ok=True)
    if main:
        with atomic_write(os.path.join(workdir, "config.json")) as f:
            f.write(config_lib.to_json(config))

    model, schedule = build_model(config), build_schedule(config)
    tx = make_optimizer(config.train.learning_rate, config.train.grad_clip_norm or None)
    init_key, data_key, step_key = run_keys(config.train.seed)
    image_shape = dataset.images.shape[1:]
    state = create_sharded_state(model, tx, init_key, image_shape, mesh, config.train.sharding)
    state_shardings = jax.tree.map(lambda a: a.sharding, state)

    manager = checkpoint.make_manager(workdir, keep=config.checkpoint.keep)
    restored = checkpoint.restore_latest(manager, state, set_aside_damaged=True)
    if not parallel.all_processes_agree(-1 if restored is None else int(restored[1]["step"])):
        raise checkpoint.CheckpointError(
            f"the processes found different checkpoints in {workdir}; the workdir must be one directory shared by all processes"
        )
    progress_log = []
    if restored is not None:
        state, meta = restored
        progress_log.append(f"resumed from the checkpoint at step {meta['step']}")
        saved_processes = meta.get("process_count", 1)
        if saved_processes != jax.process_count():
            progress_log.append(
                f"the checkpoint was written by {saved_processes} processes, resuming with {jax.process_count()} "
                "(results do not depend on the process count)"
            )
        if main:
            _truncate_metrics(os.path.join(workdir, "metrics.jsonl"), int(meta["step"]))
    elif main:
        _truncate_metrics(os.path.join(workdir, "metrics.jsonl"), 0)  # rows of a run that left no checkpoint
        _write_forward_figure(os.path.join(workdir, "forward_diffusion.png"), dataset.images[0], schedule, jax.random.key(0))

    start = int(state.step)
    total = total_steps(config, len(dataset))
    images_dev = parallel.put_replicated(dataset.images, mesh)
    labels_dev = parallel.put_replicated(dataset.labels, mesh)
    per_call = steps_per_call(config)
    step_fn = make_train_step(model, tx, schedule, config, mesh, state_shardings, per_call)
    sampler = make_sampler(model, schedule, (config.sample.num, *image_shape), mesh, **sampler_options(config))
    grid_labels = sample_labels(config.sample.num, config.model.num_classes, config.sample.label)
    meta = dict(config=json.loads(config_lib.to_json(config)), process_count=jax.process_count())

    writer = metrics_file = None
    progress = _Progress(total, start, quiet=not main)
    for line in progress_log:
        progress.log(line)
    if dataset.skipped:
        progress.log(f"skipped {dataset.skipped} image files that could not be decoded")
    devices = f", {mesh.size} devices in {jax.process_count()} processes" if mesh.size > 1 else ""
    progress.log(f"training {total} steps ({len(dataset)} images, batch {config.train.batch_size}{devices}) from step {start}")

    # Per logging window: losses, gradient norms and seconds. Metrics arrive in batches, so
    # the wall time since the previous batch is shared out evenly over its steps.
    window = dict(loss=[], grad_norm=[], seconds=0.0)
    clock = {"last": time.perf_counter()}

    read = {"step": start}  # the steps up to this one have had their metrics read

    def consume(calls: list) -> None:
        """Read dispatched calls' metrics (blocks only on those) and log them per step.
        ``calls``: (metrics, number of steps) per call, oldest first, the first one
        starting right after ``read["step"]``."""
        if not calls:
            return
        first_step = read["step"]
        host = jax.device_get([m for m, _ in calls])
        now = time.perf_counter()
        losses = np.concatenate([np.atleast_1d(m["loss"])[:n] for m, (_, n) in zip(host, calls)])
        norms = np.concatenate([np.atleast_1d(m["grad_norm"])[:n] for m, (_, n) in zip(host, calls)])
        seconds_per_step = (now - clock["last"]) / len(losses)
        clock["last"] = now
        read["step"] += len(losses)
        bad = np.flatnonzero(~(np.isfinite(losses) & np.isfinite(norms)))
        if bad.size:
            raise FloatingPointError(
                f"non-finite {'loss' if not np.isfinite(losses[bad[0]]) else 'gradient norm'} at step {first_step + int(bad[0]) + 1}; "
                "the last good checkpoint is kept"
            )
        for i, (loss, norm) in enumerate(zip(losses, norms)):
            step = first_step + i + 1
            window["loss"].append(float(loss))
            window["grad_norm"].append(float(norm))
            window["seconds"] += seconds_per_step
            if step % config.train.log_every_steps == 0 or step == total:
                steps_per_sec = len(window["loss"]) / max(window["seconds"], 1e-9)
                row = dict(
                    step=step,
                    loss=float(np.mean(window["loss"])),
                    grad_norm=float(np.mean(window["grad_norm"])),
                    steps_per_sec=steps_per_sec,
                    images_per_sec=steps_per_sec * config.train.batch_size,
                )
                if main:
                    metrics_file.write(json.dumps(row) + "\n")
                    metrics_file.flush()
                    writer.scalars({f"train/{k}": v for k, v in row.items() if k != "step"}, step)
                progress.log(
                    f"step {step}/{total}  loss {row['loss']:.4f}  grad_norm {row['grad_norm']:.3f}  "
                    f"{row['steps_per_sec']:.1f} steps/s  {row['images_per_sec']:.0f} img/s"
                )
                window.update(loss=[], grad_norm=[], seconds=0.0)
        progress.update(len(losses), f"loss {float(losses[-1]):.4f}")

    def write_samples(step: int, name: str) -> None:
        key = jax.random.fold_in(jax.random.key(config.train.seed), step)
        samples = np.asarray(sampler(sampling_variables(state), key, grid_labels))
        if not main:
            return
        images.save_grid(os.path.join(workdir, "samples", name), samples)
        writer.image("samples", images.grid(data.to_uint8(samples)), step)

    def steps_to_next_event(step: int) -> int:
        """Steps in the next call: at most ``per_call``, ending at the next checkpoint,
        samples or the end, so that those fall between calls."""
        n = min(per_call, total - step, config.checkpoint.every_steps - step % config.checkpoint.every_steps)
        if config.sample.every_steps > 0:
            n = min(n, config.sample.every_steps - step % config.sample.every_steps)
        return n

    pending: list = []  # (metrics, steps) of dispatched calls not yet read, oldest first
    step = start
    with contextlib.ExitStack() as stack:
        stop = stack.enter_context(_stop_requests())
        stack.callback(manager.close)
        if main:
            writer = EventLog(os.path.join(workdir, "tensorboard"))
            stack.callback(writer.close)
            metrics_file = stack.enter_context(open(os.path.join(workdir, "metrics.jsonl"), "a"))
        stack.callback(progress.close)
        reported: list[BaseException] = []

        def report(exc: BaseException) -> None:  # once per exception
            if on_failure is not None and not any(exc is r for r in reported):
                reported.append(exc)
                on_failure(exc)

        # Pushed last, so it runs first; a failed checkpoint write reports earlier, from
        # inside checkpoint.save, while the checkpoint library's output is still held.
        stack.push(lambda exc_type, exc, tb: report(exc) if exc is not None else None)
        while step < total:
            if per_call > 1:
                n = steps_to_next_event(step)
                state, metrics = step_fn(state, images_dev, labels_dev, data_key, step_key, np.int32(n))
            else:
                n = 1
                state, metrics = step_fn(state, images_dev, labels_dev, data_key, step_key)
            pending.append((metrics, n))
            step += n
            due_checkpoint = step % config.checkpoint.every_steps == 0 or step == total
            due_samples = config.sample.every_steps > 0 and step % config.sample.every_steps == 0 and step < total
            read_metrics = due_checkpoint or due_samples or step - read["step"] > METRICS_EVERY
            if due_checkpoint or due_samples:
                consume(pending)  # never checkpoint a non-finite state
                pending = []
            elif read_metrics:
                # Read all but the call just dispatched, so the device always has work queued.
                consume(pending[:-1])
                pending = pending[-1:]
            if due_checkpoint:
                checkpoint.save(manager, state, meta, on_failure=report)
            if due_samples:
                write_samples(step, f"step_{step:07d}.png")
            if _stop_requested(stop, read_metrics) and step < total:
                consume(pending)
                pending = []
                if not due_checkpoint:
                    checkpoint.save(manager, state, meta, on_failure=report)
                raise TrainingInterrupted(stop["signum"], step)
        if pending:
            consume(pending)
        if start < total or not os.path.exists(os.path.join(workdir, "samples", "final.png")):
            write_samples(total, "final.png")
            if main:
                images.save_loss_curve(os.path.join(workdir, "metrics.jsonl"), os.path.join(workdir, "loss_curve.png"))
    progress.log(f"done: step {int(state.step)}; samples in {os.path.join(workdir, 'samples', 'final.png')}")
    return state
