"""Settings every test process shares, the pytest process and the subprocesses it starts.

Compiling is most of this suite's time, so it is made cheap without changing what is
computed:

* One persistent JAX compilation cache per test run (a temporary directory, removed at the
  end), shared by the subprocesses: a program compiled once (the tiny training step, its
  sampler, a CLI run's programs) is read back, not compiled again, by every later test and
  subprocess that builds the same program.
* XLA:CPU's backend at LLVM optimisation level 2 (``--xla_backend_optimization_level=2``)
  instead of XLA's default: the tests' programs compile faster (a small SimpleUNet's 4-step
  training program: 26.3 s -> 18.1 s, ``python scripts/check_xla_opt_level.py``) and
  compute the same values bit for bit (4 training steps and a sampling chain, compared at
  both levels). Level 0 compiles faster still but rounds differently, so it is not used but
  for initialisations, which jaxddpm always compiles at level 0 on the CPU
  (`jaxddpm.train.init_compiler_options`).
  ``JAXDDPM_TEST_XLA_OPT=default`` runs the suite at XLA's default level.

Both reach subprocesses through the environment (``JAX_COMPILATION_CACHE_DIR``,
``XLA_FLAGS``), which JAX reads when it starts.
"""

import os
import shutil
import tempfile

_CACHE_DIR = None
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _CACHE_DIR = tempfile.mkdtemp(prefix="jaxddpm-tests-jit-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE_DIR
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

# Tests are sized for a 2-core CPU; keep XLA from oversubscribing it.
_flags = ["--xla_cpu_multi_thread_eigen=true"]
if os.environ.get("JAXDDPM_TEST_XLA_OPT") != "default":
    _flags.append("--xla_backend_optimization_level=2")
os.environ.setdefault("XLA_FLAGS", " ".join(_flags))

import jax  # noqa: E402
import pytest  # noqa: E402

# Silent broadcasting between arrays of different rank is a bug in this code base.
jax.config.update("jax_numpy_rank_promotion", "raise")


def pytest_unconfigure(config):
    if _CACHE_DIR is not None:
        shutil.rmtree(_CACHE_DIR, ignore_errors=True)



@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """The workdir of one finished 4-step run of `tests.helpers.tiny_config()`, shared by the
    tests that only read a trained run (copy it before changing anything in it)."""
    from jaxddpm.trainer import train_and_evaluate
    from tests.helpers import tiny_config

    workdir = str(tmp_path_factory.mktemp("tiny") / "run")
    state = train_and_evaluate(tiny_config(), workdir)
    assert int(state.step) == 4
    return workdir


@pytest.fixture(scope="session")
def tiny_run_6_steps(tmp_path_factory):
    """The final state of an uninterrupted 6-step run: what resumed runs must end at."""
    from jaxddpm.trainer import train_and_evaluate
    from tests.helpers import tiny_config

    return train_and_evaluate(tiny_config(train__num_steps=6), str(tmp_path_factory.mktemp("straight") / "run"))


def pytest_collection_modifyitems(config, items):
    """Modules with slow tests first (each module keeps its own order): with ``-n 2`` the
    two workers then share the long modules instead of one finishing them alone at the end."""
    slow = {}
    for item in items:
        slow.setdefault(item.module.__name__, 0)
        slow[item.module.__name__] += item.get_closest_marker("slow") is not None
    order = {name: i for i, name in enumerate(sorted(slow, key=lambda name: -slow[name]))}
    items.sort(key=lambda item: order[item.module.__name__])
