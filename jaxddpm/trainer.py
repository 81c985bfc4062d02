"""`train_and_evaluate(config, workdir)`: the training program behind ``jaxddpm train``.

The loop compiles one training step that gathers its batch from the dataset resident on
the device, dispatches steps ahead of reading their metrics (the host never waits for
the device to log), and checkpoints, samples and logs at step boundaries.
Everything random derives from ``train.seed`` and the step number, so a resumed run
repeats exactly what an uninterrupted one would have done.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxddpm import checkpoint, config as config_lib, data, diffusion, factory, images, parallel, sampling
from jaxddpm.events import EventLog
from jaxddpm.files import atomic_write
from jaxddpm.runtime import Progress, stop_requests
from jaxddpm.schedule import Schedule
from jaxddpm.train import TrainState

FORWARD_FIGURE_STEPS = 10  # the forward-diffusion figure shows t = 0, T/10, ..., T
METRICS_EVERY = 20  # read metrics from the device every this many steps


class TrainingInterrupted(Exception):
    """SIGINT or SIGTERM arrived; the state was checkpointed at ``step`` first."""

    def __init__(self, signum: int, step: int):
        super().__init__(f"interrupted by {signal.Signals(signum).name} at step {step}; checkpoint saved, rerun to resume")
        self.signum, self.step = signum, step


def total_steps(config: ml_collections.ConfigDict, num_examples: int) -> int:
    if config.train.num_steps > 0:
        return config.train.num_steps
    return config.train.num_epochs * (num_examples // config.train.batch_size)


def _truncate_metrics(path: str, last_step: int) -> None:
    """Drop log rows past the restored step (written before an unclean stop)."""
    if not os.path.exists(path):
        return
    with open(path) as f:
        rows = [line for line in f if line.strip() and json.loads(line)["step"] <= last_step]
    with atomic_write(path) as f:
        f.writelines(rows)


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


def _load_dataset(config: ml_collections.ConfigDict) -> data.ImageDataset:
    """The training split, checked against the batch size and the model's classes."""
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
    return dataset


def _write_forward_figure(path: str, image_u8: np.ndarray, schedule: Schedule, key: jax.Array) -> None:
    T = schedule.num_timesteps
    ts = sorted({min(round(i * T / FORWARD_FIGURE_STEPS), T - 1) for i in range(FORWARD_FIGURE_STEPS + 1)})
    x0 = data.to_model_range(jnp.asarray(image_u8))[None]
    noise = jax.random.normal(key, x0.shape)
    noisy = [diffusion.q_sample(schedule, x0, jnp.array([t]), noise)[0] for t in ts]
    images.save_grid(path, np.stack(noisy), columns=len(ts))


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


class MetricsLog:
    """Reads dispatched calls' metrics from the device (blocking only on those), stops on a
    non-finite value, and logs window averages to metrics.jsonl, TensorBoard and the
    terminal. Metrics arrive in batches, so the wall time since the previous batch is
    shared out evenly over its steps."""

    def __init__(self, config, start: int, total: int, progress: Progress, metrics_file=None, writer=None):
        self.config, self.total, self.progress = config, total, progress
        self.metrics_file, self.writer = metrics_file, writer
        self.read_step = start  # the steps up to this one have had their metrics read
        self.last_time = time.perf_counter()
        self.losses: list[float] = []
        self.norms: list[float] = []
        self.seconds = 0.0

    def consume(self, calls: list) -> None:
        """``calls``: (metrics, number of steps) per call, oldest first, the first one
        starting right after ``read_step``."""
        if not calls:
            return
        first_step = self.read_step
        host = jax.device_get([m for m, _ in calls])
        now = time.perf_counter()
        losses = np.concatenate([np.atleast_1d(m["loss"])[:n] for m, (_, n) in zip(host, calls)])
        norms = np.concatenate([np.atleast_1d(m["grad_norm"])[:n] for m, (_, n) in zip(host, calls)])
        seconds_per_step = (now - self.last_time) / len(losses)
        self.last_time = now
        self.read_step += len(losses)
        bad = np.flatnonzero(~(np.isfinite(losses) & np.isfinite(norms)))
        if bad.size:
            raise FloatingPointError(
                f"non-finite {'loss' if not np.isfinite(losses[bad[0]]) else 'gradient norm'} at step {first_step + int(bad[0]) + 1}; "
                "the last good checkpoint is kept"
            )
        for i, (loss, norm) in enumerate(zip(losses, norms)):
            step = first_step + i + 1
            self.losses.append(float(loss))
            self.norms.append(float(norm))
            self.seconds += seconds_per_step
            if step % self.config.train.log_every_steps == 0 or step == self.total:
                self._write_row(step)
        self.progress.update(len(losses), f"loss {float(losses[-1]):.4f}")

    def _write_row(self, step: int) -> None:
        steps_per_sec = len(self.losses) / max(self.seconds, 1e-9)
        row = dict(step=step, loss=float(np.mean(self.losses)), grad_norm=float(np.mean(self.norms)),
                   steps_per_sec=steps_per_sec, images_per_sec=steps_per_sec * self.config.train.batch_size)
        if self.metrics_file is not None:
            self.metrics_file.write(json.dumps(row) + "\n")
            self.metrics_file.flush()
            self.writer.scalars({f"train/{k}": v for k, v in row.items() if k != "step"}, step)
        self.progress.log(
            f"step {step}/{self.total}  loss {row['loss']:.4f}  grad_norm {row['grad_norm']:.3f}  "
            f"{row['steps_per_sec']:.1f} steps/s  {row['images_per_sec']:.0f} img/s"
        )
        self.losses, self.norms, self.seconds = [], [], 0.0


class TrainingRun:
    """One run of a config in a workdir: the model, the restored (or fresh) state, the
    compiled step and sampler, and the schedule of checkpoints and sample grids."""

    def __init__(self, config: ml_collections.ConfigDict, workdir: str, dataset: data.ImageDataset, mesh):
        self.config, self.workdir, self.mesh = config, workdir, mesh
        self.main = parallel.is_main_process()  # process 0 writes everything but the checkpoints
        self.model, self.schedule = factory.build_model(config), factory.build_schedule(config)
        self.total = total_steps(config, len(dataset))
        self.tx = factory.build_optimizer(config, self.total)
        init_key, self.data_key, self.step_key = factory.run_keys(config.train.seed)
        image_shape = dataset.images.shape[1:]
        self.state = factory.create_sharded_state(self.model, self.tx, init_key, image_shape, mesh, config.train.sharding)
        self.manager = checkpoint.make_manager(workdir, keep=config.checkpoint.keep)
        self.messages = self._restore(dataset)
        self.start = int(self.state.step)
        self.images = parallel.put_replicated(dataset.images, mesh)
        self.labels = parallel.put_replicated(dataset.labels, mesh)
        self.per_call = factory.steps_per_call(config, self.model)
        shardings = jax.tree.map(lambda a: a.sharding, self.state)
        self.step_fn = factory.make_train_step(self.model, self.tx, self.schedule, config, mesh, shardings, self.per_call)
        self.sampler = sampling.make_sampler(self.model, self.schedule, (config.sample.num, *image_shape), mesh,
                                             **sampling.sampler_options(config))
        self.grid_labels = sampling.sample_labels(config.sample.num, config.model.num_classes, config.sample.label)
        self.meta = dict(config=json.loads(config_lib.to_json(config)), process_count=jax.process_count())
        self.writer = None

    def _restore(self, dataset: data.ImageDataset) -> list[str]:
        """Restore the newest good checkpoint (or start afresh); returns lines to log."""
        restored = checkpoint.restore_latest(self.manager, self.state, set_aside_damaged=True)
        if not parallel.all_processes_agree(-1 if restored is None else int(restored[1]["step"])):
            raise checkpoint.CheckpointError(
                f"the processes found different checkpoints in {self.workdir}; the workdir must be one directory shared by all processes"
            )
        metrics_path = os.path.join(self.workdir, "metrics.jsonl")
        if restored is None:
            if self.main:
                _truncate_metrics(metrics_path, 0)  # rows of a run that left no checkpoint
                _write_forward_figure(os.path.join(self.workdir, "forward_diffusion.png"), dataset.images[0],
                                      self.schedule, jax.random.key(0))
            return []
        self.state, meta = restored
        lines = [f"resumed from the checkpoint at step {meta['step']}"]
        saved_processes = meta.get("process_count", 1)
        if saved_processes != jax.process_count():
            lines.append(
                f"the checkpoint was written by {saved_processes} processes, resuming with {jax.process_count()} "
                "(results do not depend on the process count)"
            )
        if self.main:
            _truncate_metrics(metrics_path, int(meta["step"]))
        return lines

    def steps_to_next_event(self, step: int) -> int:
        """Steps in the next call: at most ``per_call``, ending at the next checkpoint,
        samples or the end, so that those fall between calls."""
        every = self.config.checkpoint.every_steps
        n = min(self.per_call, self.total - step, every - step % every)
        if self.config.sample.every_steps > 0:
            n = min(n, self.config.sample.every_steps - step % self.config.sample.every_steps)
        return n

    def dispatch(self, step: int):
        """Start the next call on the device; returns (metrics, steps) without waiting."""
        if self.per_call > 1:
            n = self.steps_to_next_event(step)
            self.state, metrics = self.step_fn(self.state, self.images, self.labels, self.data_key, self.step_key, np.int32(n))
            return metrics, n
        self.state, metrics = self.step_fn(self.state, self.images, self.labels, self.data_key, self.step_key)
        return metrics, 1

    def write_samples(self, step: int, name: str) -> None:
        key = jax.random.fold_in(jax.random.key(self.config.train.seed), step)
        samples = np.asarray(self.sampler(sampling.sampling_variables(self.state), key, self.grid_labels))
        if not self.main:
            return
        images.save_grid(os.path.join(self.workdir, "samples", name), samples)
        self.writer.image("samples", images.grid(data.to_uint8(samples)), step)

    def loop(self, log: MetricsLog, stop: dict, report: Callable[[BaseException], None]) -> None:
        """Train from ``start`` to ``total``, checkpointing and sampling on schedule."""
        config = self.config
        pending: list = []  # (metrics, steps) of dispatched calls not yet read, oldest first
        step = self.start
        while step < self.total:
            pending.append(self.dispatch(step))
            step += pending[-1][1]
            due_checkpoint = step % config.checkpoint.every_steps == 0 or step == self.total
            due_samples = config.sample.every_steps > 0 and step % config.sample.every_steps == 0 and step < self.total
            read_metrics = due_checkpoint or due_samples or step - log.read_step > METRICS_EVERY
            if due_checkpoint or due_samples:
                log.consume(pending)  # never checkpoint a non-finite state
                pending = []
            elif read_metrics:
                # Read all but the call just dispatched, so the device always has work queued.
                log.consume(pending[:-1])
                pending = pending[-1:]
            if due_checkpoint:
                checkpoint.save(self.manager, self.state, self.meta, on_failure=report)
            if due_samples:
                self.write_samples(step, f"step_{step:07d}.png")
            if _stop_requested(stop, read_metrics) and step < self.total:
                log.consume(pending)
                if not due_checkpoint:
                    checkpoint.save(self.manager, self.state, self.meta, on_failure=report)
                raise TrainingInterrupted(stop["signum"], step)
        log.consume(pending)


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
    dataset = _load_dataset(config)

    main = parallel.is_main_process()
    os.makedirs(workdir, exist_ok=True)
    if main:
        with atomic_write(os.path.join(workdir, "config.json")) as f:
            f.write(config_lib.to_json(config))
    run = TrainingRun(config, workdir, dataset, mesh)

    progress = Progress(run.total, run.start, quiet=not main)
    for line in run.messages:
        progress.log(line)
    if dataset.skipped:
        progress.log(f"skipped {dataset.skipped} image files that could not be decoded")
    devices = f", {mesh.size} devices in {jax.process_count()} processes" if mesh.size > 1 else ""
    progress.log(f"training {run.total} steps ({len(dataset)} images, batch {config.train.batch_size}{devices}) from step {run.start}")
    if run.start < run.total:
        parameters = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(run.state.params))
        progress.log(f"model {config.model.name}: {parameters:,} parameters; compiling the training step "
                     f"({run.per_call} steps per call) before the first step")

    with contextlib.ExitStack() as stack:
        stop = stack.enter_context(stop_requests())
        stack.callback(run.manager.close)
        metrics_file = None
        if main:
            run.writer = EventLog(os.path.join(workdir, "tensorboard"))
            stack.callback(run.writer.close)
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
        run.loop(MetricsLog(config, run.start, run.total, progress, metrics_file, run.writer), stop, report)
        if run.start < run.total or not os.path.exists(os.path.join(workdir, "samples", "final.png")):
            run.write_samples(run.total, "final.png")
            if main:
                images.save_loss_curve(os.path.join(workdir, "metrics.jsonl"), os.path.join(workdir, "loss_curve.png"))
    progress.log(f"done: step {int(run.state.step)}; samples in {os.path.join(workdir, 'samples', 'final.png')}")
    return run.state
