"""Data parallelism on a `jax.sharding.Mesh` of every device of every process.

One code path serves one CPU, eight GPUs, or a multi-host TPU slice: the training step is
jit-compiled with the batch sharded over the mesh's ``data`` axis and the train state
either replicated or, with ``train.sharding = "fsdp"``, each large array split along one
of its axes. XLA inserts the collectives, so BatchNorm statistics and gradients are
reductions over the global batch, exactly the quantities a single device computes.
Random numbers do not depend on the sharding (``jax_threefry_partitionable``), so a run's
result does not depend on the number of devices or processes up to float32 reduction order.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jaxddpm.options import SHARDING_MODES

DATA_AXIS = "data"
FSDP_MIN_SIZE = 2**14  # arrays smaller than this stay replicated under fsdp


class DistributedError(RuntimeError):
    """A multi-process launch that cannot work; the message says what to change."""


def initialize(coordinator: str | None = None, num_processes: int | None = None, process_id: int | None = None) -> None:
    """`jax.distributed.initialize`, with the launch arguments checked first.

    Arguments left as None are found by JAX from the environment (SLURM, Open MPI, TPU
    slices, Kubernetes, or ``JAX_COORDINATOR_ADDRESS``/``JAX_NUM_PROCESSES``/``JAX_PROCESS_ID``).
    """
    if num_processes is not None and num_processes < 1:
        raise DistributedError(f"--num-processes must be at least 1, got {num_processes}")
    if process_id is not None and num_processes is not None and not 0 <= process_id < num_processes:
        raise DistributedError(f"--process-id must lie in [0, {num_processes}) for {num_processes} processes, got {process_id}")
    try:
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)
    except (ValueError, RuntimeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DistributedError(f"could not join the distributed run: {first}") from None


def make_mesh(devices: list | None = None) -> Mesh:
    """A one-axis mesh (``data``) over ``devices`` (default: all devices of all processes)."""
    return Mesh(np.asarray(devices if devices is not None else jax.devices()), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over the ``data`` axis."""
    return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def check_batch_size(batch_size: int, mesh: Mesh, what: str = "train.batch_size") -> None:
    n = mesh.size
    if batch_size % n:
        raise ValueError(f"{what}={batch_size} is not divisible by the {n} devices; allowed: a multiple of {n}")


def leaf_sharding(shape: tuple[int, ...], mesh: Mesh, mode: str) -> NamedSharding:
    """Replicated, or (fsdp) split along the largest axis the device count divides."""
    if mode not in SHARDING_MODES:
        raise ValueError(f"sharding mode {mode!r} is unknown; allowed: {', '.join(SHARDING_MODES)}")
    n = mesh.size
    if mode == "replicated" or n == 1 or int(np.prod(shape, dtype=np.int64)) < FSDP_MIN_SIZE:
        return replicated(mesh)
    candidates = [axis for axis in np.argsort(shape)[::-1] if shape[axis] % n == 0]
    if not candidates:
        return replicated(mesh)
    spec = [None] * len(shape)
    spec[int(candidates[0])] = DATA_AXIS
    return NamedSharding(mesh, PartitionSpec(*spec))


def tree_shardings(tree: Any, mesh: Mesh, mode: str) -> Any:
    """A sharding for every array leaf of ``tree`` (abstract or concrete)."""
    return jax.tree.map(lambda leaf: leaf_sharding(tuple(np.shape(leaf)), mesh, mode), tree)


def put_replicated(array: np.ndarray, mesh: Mesh) -> jax.Array:
    """A host array, identical on every process, as one global replicated array."""
    array = np.asarray(array)
    return jax.make_array_from_callback(array.shape, replicated(mesh), lambda index: array[index])


def is_main_process() -> bool:
    """Process 0 writes logs, figures and sample grids; every process writes checkpoints."""
    return jax.process_index() == 0


def all_processes_agree(value: int) -> bool:
    """True when ``value`` is the same on every process (always, with one process)."""
    if jax.process_count() == 1:
        return True
    values = multihost_utils.process_allgather(np.asarray(value, np.int64))
    return bool(np.all(values == values.reshape(-1)[0]))


def any_process(flag: bool) -> bool:
    """True when ``flag`` is set on any process."""
    if jax.process_count() == 1:
        return flag
    return bool(np.any(multihost_utils.process_allgather(np.asarray(flag, np.int32))))
