"""XLA:CPU flags that jaxddpm sets when it is imported (measured in experiments/bench/).

On CPU, XLA lowers convolutions to YNNPACK by default. For this model's convolutions,
and above all for their gradients, XLA's Eigen convolutions are much faster on the
machines we measured (2-core AMD EPYC, full SimpleUNet: a training step 2.71 s -> 1.95 s,
a forward pass at batch 4 0.20 s -> 0.15 s; experiments/bench/README.md). ``import jaxddpm`` therefore appends
``--xla_cpu_experimental_ynn_fusion_type=-individual_convolution`` to ``XLA_FLAGS``.

* A flag the user already put in ``XLA_FLAGS`` is never overridden.
* ``JAXDDPM_XLA_FLAGS=0`` in the environment turns this off.
* The flags only reach XLA if ``import jaxddpm`` comes before JAX's first computation
  (JAX reads ``XLA_FLAGS`` when it creates its backends); `in_effect` says whether they did.
* GPU and TPU backends ignore XLA:CPU flags.
* XLA aborts the process on a flag (or flag value) it does not know. jaxlib releases
  before `MIN_JAXLIB` do not know this one, so with them nothing is added.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import sys

CPU_FLAGS: tuple[str, ...] = ("--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",)
OPT_OUT = "JAXDDPM_XLA_FLAGS"
# The first jaxlib whose XLA accepts CPU_FLAGS (0.8.1 knows the flag but not this value,
# 0.8.0 and earlier not the flag; each aborts at JAX's first computation).
MIN_JAXLIB = (0, 8, 2)

_applied_before_backends: bool | None = None


def _flag_name(flag: str) -> str:
    return flag.split("=", 1)[0]


def merged(existing: str, flags: tuple[str, ...] = CPU_FLAGS) -> str:
    """``existing`` with each of ``flags`` appended unless a flag of that name is there."""
    present = {_flag_name(f) for f in existing.split()}
    extra = [f for f in flags if _flag_name(f) not in present]
    return " ".join([existing.strip()] + extra).strip() if extra else existing


def _backends_started() -> bool:
    if "jax" not in sys.modules:  # no backend without JAX (and importing it here would cost a second)
        return False
    try:
        from jax._src import xla_bridge

        return bool(xla_bridge.backends_are_initialized())
    except Exception:  # private API moved: assume the worst
        return True


def jaxlib_version() -> tuple[int, ...] | None:
    """The installed jaxlib's version as (major, minor, patch), read without importing it."""
    try:
        return tuple(int(p) for p in re.findall(r"\d+", importlib.metadata.version("jaxlib"))[:3])
    except (importlib.metadata.PackageNotFoundError, ValueError):
        return None


def apply() -> None:
    """Add `CPU_FLAGS` to ``XLA_FLAGS`` (see the module docstring). Idempotent."""
    global _applied_before_backends
    if os.environ.get(OPT_OUT, "1").strip().lower() in ("0", "false", "no", "off"):
        return
    version = jaxlib_version()
    if version is None or version < MIN_JAXLIB:
        return
    os.environ["XLA_FLAGS"] = merged(os.environ.get("XLA_FLAGS", ""))
    if _applied_before_backends is None:
        _applied_before_backends = not _backends_started()


def in_effect() -> bool:
    """Whether the CPU flags were in ``XLA_FLAGS`` before JAX created its backends."""
    flags = os.environ.get("XLA_FLAGS", "").split()
    return bool(_applied_before_backends) and all(f in flags for f in CPU_FLAGS)
