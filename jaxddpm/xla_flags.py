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
"""

from __future__ import annotations

import os

CPU_FLAGS: tuple[str, ...] = ("--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",)
OPT_OUT = "JAXDDPM_XLA_FLAGS"

_applied_before_backends: bool | None = None


def _flag_name(flag: str) -> str:
    return flag.split("=", 1)[0]


def merged(existing: str, flags: tuple[str, ...] = CPU_FLAGS) -> str:
    """``existing`` with each of ``flags`` appended unless a flag of that name is there."""
    present = {_flag_name(f) for f in existing.split()}
    extra = [f for f in flags if _flag_name(f) not in present]
    return " ".join([existing.strip()] + extra).strip() if extra else existing


def _backends_started() -> bool:
    try:
        from jax._src import xla_bridge

        return bool(xla_bridge.backends_are_initialized())
    except Exception:  # private API moved: assume the worst
        return True


def apply() -> None:
    """Add `CPU_FLAGS` to ``XLA_FLAGS`` (see the module docstring). Idempotent."""
    global _applied_before_backends
    if os.environ.get(OPT_OUT, "1").strip().lower() in ("0", "false", "no", "off"):
        return
    os.environ["XLA_FLAGS"] = merged(os.environ.get("XLA_FLAGS", ""))
    if _applied_before_backends is None:
        _applied_before_backends = not _backends_started()


def in_effect() -> bool:
    """Whether the CPU flags were in ``XLA_FLAGS`` before JAX created its backends."""
    flags = os.environ.get("XLA_FLAGS", "").split()
    return bool(_applied_before_backends) and all(f in flags for f in CPU_FLAGS)
