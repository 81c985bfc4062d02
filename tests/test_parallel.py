"""One training code path on 1 device, 8 simulated devices, and 2 real processes.

The multi-device runs happen in subprocesses (the device count is fixed when JAX starts).
8 devices are compared with a 1-device run in this process: same losses, parameters, EMA
parameters, optimizer state and BatchNorm statistics, up to float32 reduction order. 2
processes are compared with 2 devices in one process, which run the same program over the
same shards, to float32 rounding.
"""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from jaxddpm import cli, parallel
from jaxddpm.evaluate import fresh_state
from jaxddpm.generate import load_workdir, sample_workdir
from jaxddpm.trainer import train_and_evaluate
from tests.helpers import tiny_argv, tiny_config

STEPS = 4
RUN = dict(train__num_steps=STEPS, train__log_every_steps=1, checkpoint__every_steps=2)

# Worker for the simulated-device runs: trains each (workdir, sharding) in turn. The tiny
# model's arrays are all smaller than FSDP_MIN_SIZE, so fsdp runs lower it to split them.
WORKER = """
import sys
from jaxddpm import parallel
from jaxddpm.generate import sample_workdir
from jaxddpm.trainer import train_and_evaluate
from tests.helpers import tiny_config
import jax
assert jax.device_count() == 8, jax.devices()
parallel.FSDP_MIN_SIZE = 16
for workdir, mode in zip(sys.argv[1::2], sys.argv[2::2]):
    state = train_and_evaluate(tiny_config(**{kwargs}, train__sharding=mode), workdir)
    split = [x.sharding.spec for x in jax.tree.leaves(state.params) if not x.sharding.is_fully_replicated]
    assert bool(split) == (mode == "fsdp"), (mode, split)
    assert all(s.count("data") == 1 for s in split), split
    sample_workdir(workdir, num=8, seed=0, out=workdir + "/eight.png")  # sampling shards its batch too
"""


def env_with_devices(n: int) -> dict:
    # The test process's own XLA flags too (tests/conftest.py), so that both sides of each
    # comparison are compiled alike.
    flags = f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={n}".strip()
    env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = os.pathsep.join([os.getcwd(), env.get("PYTHONPATH", "")])
    return env


def losses(workdir: str) -> np.ndarray:
    return np.asarray([json.loads(line)["loss"] for line in open(os.path.join(workdir, "metrics.jsonl"))])


def flat(tree) -> np.ndarray:
    return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)])


def assert_states_match(state, reference, initial) -> None:
    """Equal up to float32 reduction order: the step exactly, BatchNorm statistics
    elementwise, and the training updates in relative norm.

    Adam divides each update by the root of its own second moment, so elements whose
    gradients are near zero turn rounding differences into update differences of up to
    the learning rate. Measured on this tiny config (8 devices vs 1, 4 steps): the
    parameter updates differ by 1.1% in relative norm, the Adam moments by 0.18%. A
    wrong reduction (per-device BatchNorm, a missing gradient all-reduce) changes them
    by tens of percent.
    """
    assert int(state.step) == int(reference.step)
    a, b = flat(state.batch_stats), flat(reference.batch_stats)
    assert np.isclose(a, b, rtol=1e-4, atol=1e-6).all(), f"batch_stats differ by up to {np.max(np.abs(a - b)):.3g}"
    for name in ("params", "ema_params"):
        a, b, start = flat(getattr(state, name)), flat(getattr(reference, name)), flat(getattr(initial, name))
        relative = np.linalg.norm(a - b) / np.linalg.norm(b - start)
        assert relative <= 0.05, f"{name}: the updates differ by {relative:.3g} in relative norm"
    a, b = flat(state.opt_state), flat(reference.opt_state)
    assert np.linalg.norm(a - b) / np.linalg.norm(b) <= 1e-2, "opt_state"


def assert_states_equal(state, other) -> None:
    """Equal up to float32 rounding: every leaf to 1e-6 of its own largest magnitude."""
    leaves = jax.tree_util.tree_leaves_with_path(state)
    assert len(leaves) == len(jax.tree.leaves(other))
    for (path, a), b in zip(leaves, jax.tree.leaves(other)):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        scale = max(float(np.max(np.abs(b), initial=0.0)), 1e-30)
        assert a.shape == b.shape and np.max(np.abs(a - b), initial=0.0) <= 1e-6 * scale, f"{jax.tree_util.keystr(path)}: differs by {np.max(np.abs(a - b)):.3g}"


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """A 1-device run of STEPS steps, and its continuation to STEPS + 2."""
    workdir = str(tmp_path_factory.mktemp("one-device") / "run")
    first = train_and_evaluate(tiny_config(**RUN), workdir)
    first_losses = losses(workdir)
    second = train_and_evaluate(tiny_config(**dict(RUN, train__num_steps=STEPS + 2)), workdir)
    initial = fresh_state(tiny_config(**RUN))
    return dict(state=first, losses=first_losses, resumed=second, resumed_losses=losses(workdir), initial=initial)


@pytest.mark.slow
def test_eight_devices_match_one_device(reference, tmp_path):
    runs = {mode: str(tmp_path / mode) for mode in ("replicated", "fsdp")}
    argv = [arg for mode, workdir in runs.items() for arg in (workdir, mode)]
    subprocess.run(
        [sys.executable, "-c", WORKER.replace("{kwargs}", repr(RUN)), *argv],
        env=env_with_devices(8), check=True, timeout=600,
    )
    for mode, workdir in runs.items():
        np.testing.assert_allclose(losses(workdir), reference["losses"], rtol=1e-5, err_msg=mode)
        assert_states_match(load_workdir(workdir)[1], reference["state"], reference["initial"])
        eight = np.load(workdir + "/eight.npz")["samples"]
        one = np.load(sample_workdir(workdir, num=8, seed=0, out=str(tmp_path / f"{mode}-one.png"))[1])["samples"]
        np.testing.assert_allclose(eight, one, atol=1e-3)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_two_devices_and_resume_in_one_process(reference, tmp_path):
    """2 processes of 1 device each against 1 process of 2 devices, run side by side: the same
    program over the same 2 shards, so they agree to float32 rounding at every step (the
    1-device comparison, where Adam amplifies reduction-order rounding, is
    `test_eight_devices_match_one_device`'s). Then each run's checkpoint resumes in this
    1-device process, and the two continuations agree too."""
    runs = {name: str(tmp_path / name) for name in ("processes", "devices")}
    common = ["train", *tiny_argv(**RUN)]
    coordinator = ["--coordinator", f"localhost:{free_port()}", "--num-processes", "2"]
    commands = [([*common, "--workdir", runs["processes"], *coordinator, "--process-id", str(i)], 1) for i in range(2)]
    commands.append(([*common, "--workdir", runs["devices"]], 2))
    procs = [
        subprocess.Popen([sys.executable, "-m", "jaxddpm.cli", *argv], env=env_with_devices(n),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for argv, n in commands
    ]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outputs
    assert "2 devices in 2 processes" in outputs[0]
    assert "step 1/" not in outputs[1]  # only process 0 logs
    np.testing.assert_allclose(losses(runs["processes"]), losses(runs["devices"]), rtol=1e-6)
    assert_states_equal(load_workdir(runs["processes"])[1], load_workdir(runs["devices"])[1])
    # Both read the same data as the 1-device run: its first loss (before any update).
    np.testing.assert_allclose(losses(runs["processes"])[0], reference["losses"][0], rtol=1e-6)

    resumed = {name: train_and_evaluate(tiny_config(**dict(RUN, train__num_steps=STEPS + 2)), workdir)
               for name, workdir in runs.items()}
    np.testing.assert_allclose(losses(runs["processes"]), losses(runs["devices"]), rtol=1e-6)
    assert int(resumed["processes"].step) == STEPS + 2
    assert_states_equal(resumed["processes"], resumed["devices"])


def test_batch_not_divisible_by_the_device_count_is_a_usage_error(tmp_path):
    workdir = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "jaxddpm.cli", "train", "--workdir", str(workdir), *tiny_argv(train__batch_size=12)],
        env=env_with_devices(8), capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "error: train.batch_size=12 is not divisible by the 8 devices; allowed: a multiple of 8"
    assert not workdir.exists()


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--num-processes", "2", "--process-id", "2"], "--process-id must lie in [0, 2) for 2 processes, got 2"),
        (["--num-processes", "0"], "--num-processes must be at least 1, got 0"),
    ],
)
def test_bad_launch_flags_are_usage_errors(tmp_path, capsys, flags, message):
    code = cli.main(["train", "--workdir", str(tmp_path / "run"), *tiny_argv(), *flags])
    assert code == 2
    assert capsys.readouterr().err.strip() == f"error: {message}"
    assert not (tmp_path / "run").exists()


def test_unknown_sharding_mode():
    mesh = parallel.make_mesh()
    with pytest.raises(ValueError, match="allowed: replicated, fsdp"):
        parallel.leaf_sharding((4,), mesh, "zero3")
