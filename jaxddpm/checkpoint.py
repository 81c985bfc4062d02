"""Orbax checkpoints of the whole `TrainState`, one directory per step under ``checkpoints/``.

Orbax writes each step to a temporary directory and renames it when complete, so a step
directory that exists is whole. A step that still fails to restore (damaged on disk) is
skipped with a warning and the next older one is tried; when training resumes, the damaged
step is moved, never deleted, to ``damaged_checkpoints/`` so the step can be written again.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from typing import Any

import flax.serialization
import jax
import orbax.checkpoint as ocp

from jaxddpm.train import TrainState

CHECKPOINT_DIR = "checkpoints"


class CheckpointError(RuntimeError):
    """No usable checkpoint where one is needed, or a checkpoint could not be written.

    ``details`` holds what the checkpoint library's threads printed while a write failed
    (kept off the terminal; shown with ``JAXDDPM_DEBUG=1``)."""

    details: str = ""


def show_library_output() -> bool:
    """Whether ``JAXDDPM_DEBUG`` asks to keep the checkpoint library's own error output
    (held or silenced by default once a failure is reported in one line)."""
    return os.environ.get("JAXDDPM_DEBUG", "").strip() not in ("", "0")


@contextlib.contextmanager
def _held_stderr():
    """Hold what is written to file descriptor 2 (by any thread or library) while the
    block runs. Yields a dict whose "text" is filled in at the end; the text is written
    back to stderr if the block succeeded (or with ``JAXDDPM_DEBUG=1``) and otherwise
    dropped: when a write fails, orbax/tensorstore threads print one traceback per array
    for the error that `save` reports once."""
    held: dict = {"text": ""}
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no file descriptor 2 to hold
        yield held
        return
    try:
        buffer = os.fdopen(os.memfd_create("jaxddpm-stderr"), "w+b") if hasattr(os, "memfd_create") else tempfile.TemporaryFile()
    except OSError:
        os.close(saved)
        yield held
        return
    ok = False
    with buffer:
        os.dup2(buffer.fileno(), 2)
        try:
            yield held
            ok = True
        finally:
            try:
                sys.stderr.flush()
            except (OSError, ValueError):
                pass
            if _same_file(2, buffer.fileno()):  # else the block pointed fd 2 elsewhere itself: keep that
                os.dup2(saved, 2)
            os.close(saved)
            buffer.seek(0)
            data = buffer.read()
            held["text"] = data.decode(errors="replace")
            if data and (ok or show_library_output()):
                os.write(2, data)


def _same_file(fd_a: int, fd_b: int) -> bool:
    try:
        a, b = os.fstat(fd_a), os.fstat(fd_b)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)


def make_manager(workdir: str, keep: int = 3, read_only: bool = False) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=None if read_only else keep,
        create=not read_only,
        read_only=read_only,
        enable_async_checkpointing=False,
    )
    # A read-only manager makes orbax log two warnings about its own options on every open.
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    if read_only and not show_library_output():
        absl_logger.setLevel(logging.ERROR)
    try:
        return ocp.CheckpointManager(checkpoint_dir(workdir), options=options)
    finally:
        absl_logger.setLevel(level)


def restore_workdir(workdir: str, restore: Callable, target: Any) -> tuple[Any, dict]:
    """``restore(manager, target)`` (`restore_latest` or `restore_variables_latest`) on the
    workdir's checkpoints, opened read-only; `CheckpointError` if none restores."""
    manager = make_manager(workdir, read_only=True)
    try:
        restored = restore(manager, target)
    finally:
        manager.close()
    if restored is None:
        raise CheckpointError(f"workdir {workdir}: no checkpoint could be restored")
    return restored


def has_checkpoints(workdir: str) -> bool:
    directory = checkpoint_dir(workdir)
    return os.path.isdir(directory) and any(name.isdigit() for name in os.listdir(directory))


def save(
    manager: ocp.CheckpointManager,
    state: TrainState,
    metadata: dict[str, Any],
    on_failure: Callable[[CheckpointError], None] | None = None,
) -> None:
    """Write ``state`` as the checkpoint of its step; `CheckpointError` if that fails.

    ``on_failure``, if given, is called with that error while the library's output is still
    held, before file descriptor 2 is given back: a caller that wants the library's late
    tracebacks kept off the terminal can point fd 2 elsewhere there, with no gap."""
    step = int(jax.device_get(state.step))
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    # orbax logs a failed write from its writer threads before raising it here; the error
    # is reported once, by the exception below.
    absl_logger.setLevel(logging.CRITICAL)
    try:
        with _held_stderr() as held:
            try:
                manager.save(
                    step,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardSave(flax.serialization.to_state_dict(state)),
                        metadata=ocp.args.JsonSave(dict(metadata, step=step)),
                    ),
                    force=True,
                )
                manager.wait_until_finished()
            except Exception as e:  # noqa: BLE001 - orbax/tensorstore wrap I/O errors in several types
                text = str(e)
                reason = next((r for r in ("No space left on device", "Read-only file system", "Permission denied") if r in text), type(e).__name__)
                error = CheckpointError(f"could not write the checkpoint of step {step} in {manager.directory}: {reason}")
                if on_failure is not None:
                    on_failure(error)
                raise error from None
    except CheckpointError as error:
        error.details = held["text"]
        raise
    finally:
        absl_logger.setLevel(level)


@contextlib.contextmanager
def _quiet_failed_reads():
    """When orbax fails to read a damaged array, it leaves one never-awaited read coroutine
    per array behind, and Python prints a traceback for each when they are collected
    (hundreds of lines for one damaged checkpoint, reported once by the caller). Those are
    dropped (``JAXDDPM_DEBUG=1`` keeps them); any other unraisable error is printed as usual."""
    previous = sys.unraisablehook

    def hook(unraisable) -> None:
        if show_library_output() or not is_failed_read_report(unraisable):
            previous(unraisable)

    sys.unraisablehook = hook
    try:
        yield
    finally:
        gc.collect()  # collect the left-behind coroutines while the hook is in place
        sys.unraisablehook = previous


def is_failed_read_report(unraisable) -> bool:
    """Whether an unraisable exception is orbax's report of a failed array read: a read
    coroutine collected unawaited, or TensorStore's callback into an event loop that the
    failed restore already closed."""
    code = getattr(unraisable.object, "cr_code", None)
    if code is not None and "orbax" in code.co_filename:
        return True
    return isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed"


def _restore_newest(manager: ocp.CheckpointManager, state_args, set_aside_damaged: bool) -> dict | None:
    """``manager.restore`` of the newest step that restores with ``state_args`` (and its
    metadata), trying older steps after a warning; None if none restores. With
    ``set_aside_damaged``, steps that fail are moved to ``<workdir>/damaged_checkpoints/``."""
    manager.reload()
    for step in sorted(manager.all_steps(), reverse=True):
        try:
            with _quiet_failed_reads():
                return manager.restore(step, args=ocp.args.Composite(state=state_args, metadata=ocp.args.JsonRestore()))
        except Exception as e:  # noqa: BLE001 - a damaged step can fail in many ways
            problem = f"checkpoint at step {step} could not be restored ({type(e).__name__})"
            if set_aside_damaged:
                problem += f"; moved to {_set_aside(manager, step)}"
            warnings.warn(f"{problem}; trying an older one", stacklevel=3)
    return None


def restore_latest(
    manager: ocp.CheckpointManager, target: TrainState, set_aside_damaged: bool = False
) -> tuple[TrainState, dict] | None:
    """The newest checkpoint that restores into ``target``'s structure, or None if none.

    With ``set_aside_damaged``, steps that fail to restore are moved to
    ``<workdir>/damaged_checkpoints/`` (kept, not deleted).
    """
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, flax.serialization.to_state_dict(target))
    restored = _restore_newest(manager, ocp.args.StandardRestore(abstract), set_aside_damaged)
    if restored is None:
        return None
    return flax.serialization.from_state_dict(target, restored["state"]), dict(restored["metadata"])


def restore_variables_latest(manager: ocp.CheckpointManager, abstract_variables: dict) -> tuple[dict, dict] | None:
    """The sampling variables (``{"params": EMA parameters, "batch_stats": ...}``) of the
    newest checkpoint that restores, and its metadata; None if none does.

    Only those arrays are read (orbax's partial restore): not the optimizer state, not the
    raw parameters. ``abstract_variables`` gives their shapes, dtypes and shardings."""
    target = {"ema_params": abstract_variables["params"], "batch_stats": abstract_variables["batch_stats"]}
    restore_args = ocp.checkpoint_utils.construct_restore_args(target)
    try:
        args = ocp.args.PyTreeRestore(item=target, restore_args=restore_args, partial_restore=True)
    except TypeError:  # orbax before partial_restore: an empty transform restores the subtree
        args = ocp.args.PyTreeRestore(item=target, restore_args=restore_args, transforms={})
    restored = _restore_newest(manager, args, set_aside_damaged=False)
    if restored is None:
        return None
    state = restored["state"]
    return {"params": state["ema_params"], "batch_stats": state["batch_stats"]}, dict(restored["metadata"])


def _set_aside(manager: ocp.CheckpointManager, step: int) -> str:
    """Move a damaged step to ``damaged_checkpoints/`` beside ``checkpoints/``; returns where."""
    source = os.path.join(str(manager.directory), str(step))
    target_dir = os.path.join(os.path.dirname(str(manager.directory)), "damaged_checkpoints")
    os.makedirs(target_dir, exist_ok=True)
    target = os.path.join(target_dir, f"{step}-{int(time.time())}")
    os.replace(source, target)
    manager.reload()
    return target
