"""Orbax checkpoints of the whole `TrainState`, one directory per step under ``checkpoints/``.

Orbax writes each step to a temporary directory and renames it when complete, so a step
directory that exists is whole. A step that still fails to restore (damaged on disk) is
skipped with a warning and the next older one is tried; when training resumes, the damaged
step is moved, never deleted, to ``damaged_checkpoints/`` so the step can be written again.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from typing import Any

import flax.serialization
import jax
import orbax.checkpoint as ocp

from jaxddpm.train import TrainState

CHECKPOINT_DIR = "checkpoints"


class CheckpointError(RuntimeError):
    """No usable checkpoint where one is needed."""


def checkpoint_dir(workdir: str) -> str:
    return os.path.join(os.path.abspath(workdir), CHECKPOINT_DIR)


def make_manager(workdir: str, keep: int = 3, read_only: bool = False) -> ocp.CheckpointManager:
    options = ocp.CheckpointManagerOptions(
        max_to_keep=None if read_only else keep,
        create=not read_only,
        read_only=read_only,
        enable_async_checkpointing=False,
    )
    return ocp.CheckpointManager(checkpoint_dir(workdir), options=options)


def has_checkpoints(workdir: str) -> bool:
    directory = checkpoint_dir(workdir)
    return os.path.isdir(directory) and any(name.isdigit() for name in os.listdir(directory))


def save(manager: ocp.CheckpointManager, state: TrainState, metadata: dict[str, Any]) -> None:
    """Write ``state`` as the checkpoint of its step; `CheckpointError` if that fails."""
    step = int(jax.device_get(state.step))
    absl_logger = logging.getLogger("absl")
    level = absl_logger.level
    # orbax logs a failed write from its writer threads before raising it here; the error
    # is reported once, by the exception below.
    absl_logger.setLevel(logging.CRITICAL)
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
        raise CheckpointError(f"could not write the checkpoint of step {step} in {manager.directory}: {reason}") from None
    finally:
        absl_logger.setLevel(level)


def restore_latest(
    manager: ocp.CheckpointManager, target: TrainState, set_aside_damaged: bool = False
) -> tuple[TrainState, dict] | None:
    """The newest checkpoint that restores into ``target``'s structure, or None if none.

    With ``set_aside_damaged``, steps that fail to restore are moved to
    ``<workdir>/damaged_checkpoints/`` (kept, not deleted).
    """
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, flax.serialization.to_state_dict(target))
    manager.reload()
    for step in sorted(manager.all_steps(), reverse=True):
        try:
            restored = manager.restore(
                step,
                args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), metadata=ocp.args.JsonRestore()),
            )
        except Exception as e:  # noqa: BLE001 - a damaged step can fail in many ways
            warnings.warn(f"checkpoint at step {step} could not be restored ({type(e).__name__}); trying an older one", stacklevel=2)
            if set_aside_damaged:
                _set_aside(manager, step)
            continue
        return flax.serialization.from_state_dict(target, restored["state"]), dict(restored["metadata"])
    return None


def _set_aside(manager: ocp.CheckpointManager, step: int) -> None:
    source = os.path.join(str(manager.directory), str(step))
    target_dir = os.path.join(os.path.dirname(str(manager.directory)), "damaged_checkpoints")
    os.makedirs(target_dir, exist_ok=True)
    target = os.path.join(target_dir, f"{step}-{int(time.time())}")
    os.replace(source, target)
    warnings.warn(f"moved the damaged checkpoint of step {step} to {target}", stacklevel=2)
    manager.reload()
