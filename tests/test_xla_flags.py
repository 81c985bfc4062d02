"""jaxddpm's XLA:CPU flags: appended, never overriding the user's, and opt-out."""

import os
import subprocess
import sys

import pytest

from jaxddpm.kernels import xla_flags

FLAG = xla_flags.CPU_FLAGS[0]
NAME = FLAG.split("=")[0]


def test_merged_appends_without_overriding():
    assert xla_flags.merged("") == FLAG
    assert xla_flags.merged("--xla_force_host_platform_device_count=8") == f"--xla_force_host_platform_device_count=8 {FLAG}"
    assert xla_flags.merged(f"{NAME}=") == f"{NAME}="  # the user's own value wins
    assert xla_flags.merged(FLAG) == FLAG


def _in_effect(env: dict) -> str:
    code = "import jaxddpm, jax, os; jax.numpy.zeros(1).block_until_ready(); print(jaxddpm.kernels.xla_flags.in_effect(), os.environ.get('XLA_FLAGS', ''))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


@pytest.mark.slow
def test_import_sets_the_flag_before_jax_starts_and_can_be_turned_off():
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", xla_flags.OPT_OUT)}
    supported = xla_flags.jaxlib_version() >= xla_flags.MIN_JAXLIB
    # An older jaxlib's XLA would abort on the flag, so it is not added there.
    assert _in_effect(env) == (f"True {FLAG}" if supported else "False")
    assert _in_effect(dict(env, **{xla_flags.OPT_OUT: "0"})) == "False"
    if supported:  # (an older XLA aborts on the user's own value too)
        assert _in_effect(dict(env, XLA_FLAGS=f"{NAME}=")) == f"False {NAME}="


def test_no_flag_for_a_jaxlib_whose_xla_would_abort_on_it(monkeypatch):
    # jaxlib 0.8.1 aborts at JAX's first computation on this flag value (measured).
    monkeypatch.setenv("XLA_FLAGS", "")  # restored after the test
    monkeypatch.delenv(xla_flags.OPT_OUT, raising=False)
    monkeypatch.setattr(xla_flags, "jaxlib_version", lambda: (0, 8, 1))
    xla_flags.apply()
    assert os.environ["XLA_FLAGS"] == ""
    monkeypatch.setattr(xla_flags, "jaxlib_version", lambda: xla_flags.MIN_JAXLIB)
    xla_flags.apply()
    assert os.environ["XLA_FLAGS"] == FLAG
    assert xla_flags.jaxlib_version() is not None  # read from the installed jaxlib's metadata
