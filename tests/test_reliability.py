"""Interruptions, damaged checkpoints and non-finite values never cost good state."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxddpm import factory
from jaxddpm.trainer import train_and_evaluate
from tests.helpers import tiny_argv, tiny_config


def checkpoint_steps(workdir):
    return sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")) if s.isdigit())


def assert_same_state(a, b):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_damaged_newest_checkpoint_is_set_aside_and_resume_uses_the_previous(tiny_run, tiny_run_6_steps, tmp_path):
    straight = tiny_run_6_steps
    workdir = str(tmp_path / "run")
    shutil.copytree(tiny_run, workdir)  # a finished 4-step run
    assert checkpoint_steps(workdir)[-2:] == [2, 4]
    damaged = 0
    for root, _, files in os.walk(os.path.join(workdir, "checkpoints", "4")):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "r+b") as f:
                f.truncate(max(0, os.path.getsize(path) // 3))  # a half-written file
            damaged += 1
    assert damaged
    with pytest.warns(UserWarning, match="checkpoint at step 4 could not be restored"):
        resumed = train_and_evaluate(tiny_config(train__num_steps=6), workdir)
    assert_same_state(straight, resumed)
    kept = os.listdir(os.path.join(workdir, "damaged_checkpoints"))
    assert len(kept) == 1 and kept[0].startswith("4-")


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    workdir = str(tmp_path / "run")
    original = factory.train_step

    def poisoned(state, batch, key, **kw):
        new_state, metrics = original(state, batch, key, **kw)
        metrics["loss"] = jnp.where(state.step >= 2, jnp.nan, metrics["loss"])  # step 3 onwards
        return new_state, metrics

    monkeypatch.setattr(factory, "train_step", poisoned)
    with pytest.raises(FloatingPointError, match="non-finite loss at step 3"):
        train_and_evaluate(tiny_config(train__num_steps=6), workdir)
    assert checkpoint_steps(workdir) == [2]


# The tiny run (its compiled programs are shared with the other tests), logging often.
KILL_RUN = dict(train__log_every_steps=5)


def _start(workdir, steps, every):
    argv = tiny_argv(train__num_steps=steps, checkpoint__every_steps=every, **KILL_RUN)
    return subprocess.Popen(
        [sys.executable, "-m", "jaxddpm.cli", "train", "--workdir", workdir] + argv,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _logged_steps(workdir):
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line)["step"] for line in f if line.endswith("\n")]


def _wait_for_training(workdir, proc, timeout=120) -> int:
    """Until the run has restored its state and logged a step beyond the one it started at;
    returns that starting step."""
    for line in proc.stdout:
        if line.startswith("training "):
            after_step = int(line.rsplit("from step ", 1)[1])
            break
    else:
        raise AssertionError(f"training did not start: {proc.communicate()}")
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if max(_logged_steps(workdir), default=0) > after_step:
            return after_step
        time.sleep(0.01)
    raise AssertionError(f"training did not progress: {proc.communicate()}")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_checkpoint_then_exit(tmp_path, sig):
    workdir = str(tmp_path / "run")
    proc = _start(workdir, steps=100_000, every=100_000)
    _wait_for_training(workdir, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err
    assert f"interrupted by {signal.Signals(sig).name} at step" in err and "Traceback" not in err
    steps = checkpoint_steps(workdir)
    assert len(steps) == 1 and 0 < steps[0] < 100_000


def _kill_when(workdir, proc, moment, rng, timeout=120) -> int:
    """SIGKILL ``proc`` once it trains: at a random moment, while a checkpoint is being
    written, or at a random moment after it has written a checkpoint of its own. Returns the
    step the run had started from."""
    ckpt_dir = os.path.join(workdir, "checkpoints")
    started_at = _wait_for_training(workdir, proc, timeout)
    deadline = time.time() + timeout
    if moment == "checkpoint":  # the moment orbax's temporary directory for a step appears
        while time.time() < deadline and proc.poll() is None:
            if os.path.isdir(ckpt_dir) and any("tmp" in name for name in os.listdir(ckpt_dir)):
                break
            time.sleep(0.002)
    else:
        if moment == "after checkpoint":
            while time.time() < deadline and proc.poll() is None:
                if os.path.isdir(ckpt_dir) and max(checkpoint_steps(workdir), default=0) > started_at:
                    break
                time.sleep(0.01)
        time.sleep(float(rng.uniform(0.0, 0.5)))
    assert proc.poll() is None, f"the run ended before the kill ({moment})"
    proc.kill()
    proc.communicate(timeout=60)
    return started_at


@pytest.mark.slow
def test_sigkill_at_any_moment_loses_nothing(tmp_path):
    """3 SIGKILLs (after a checkpoint, during a checkpoint write, at a random moment), each
    followed by the same command; the finished run must equal an uninterrupted one bit for
    bit, and the runs after the first two kills must have resumed from a checkpoint."""
    from jaxddpm.generate import load_workdir

    steps, every = 300, 25
    reference = str(tmp_path / "reference")
    train_and_evaluate(tiny_config(train__num_steps=steps, checkpoint__every_steps=every, **KILL_RUN), reference)
    workdir = str(tmp_path / "killed")
    rng = np.random.default_rng(0)
    outcomes = []
    for moment in ["after checkpoint", "checkpoint", "random"]:
        proc = _start(workdir, steps, every)
        started_at = _kill_when(workdir, proc, moment, rng)
        ckpts = checkpoint_steps(workdir) if os.path.isdir(os.path.join(workdir, "checkpoints")) else []
        logged = _logged_steps(workdir)
        outcomes.append((moment, started_at, proc.returncode, ckpts[-1] if ckpts else 0, max(logged, default=0)))
        # At most one checkpoint interval of logged work is lost to the kill.
        assert max(logged, default=0) - (ckpts[-1] if ckpts else 0) <= every, outcomes
    proc = _start(workdir, steps, every)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert all(code == -signal.SIGKILL for _, _, code, _, _ in outcomes), outcomes
    # The second and third runs resumed from the checkpoints the kills left, and each kill
    # came after its run had made progress.
    assert outcomes[1][1] == outcomes[0][3] > 0 and outcomes[2][1] == outcomes[1][3] > 0, outcomes
    assert all(o[4] > o[1] for o in outcomes), outcomes
    _, a = load_workdir(reference)
    _, b = load_workdir(workdir)
    assert int(b.step) == steps
    assert_same_state(a, b)
    print("kill trials (moment, started at, exit code, last checkpoint, last logged step):", outcomes)


@pytest.fixture
def tmpfs(tmp_path):
    """Mount a small tmpfs (read-only or tiny) under tmp_path; skipped where mount is not allowed."""
    mounted = []

    def mount(options):
        target = tmp_path / f"fs{len(mounted)}"
        target.mkdir()
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
        mounted.append(target)
        return target

    yield mount
    busy = []
    for target in mounted:
        proc = subprocess.run(["umount", str(target)], capture_output=True, text=True)
        if proc.returncode != 0:  # a file the run left open keeps the file system busy
            busy.append(f"{target}: {proc.stderr.strip()}")
    assert not busy, busy


@pytest.mark.parametrize(
    "options, message",
    [
        ("ro", "Read-only file system"),
        ("size=100k", "No space left on device"),
        ("size=300k", "No space left on device"),
    ],
)
@pytest.mark.slow
def test_read_only_or_full_workdir_stderr_is_one_line(tmpfs, options, message):
    """The whole stderr of the command is one line, and the exit code is 1."""
    target = tmpfs(options)
    proc = subprocess.run(
        [sys.executable, "-m", "jaxddpm.cli", "train", "--workdir", str(target / "run")] + tiny_argv(),
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1 and message in proc.stderr, proc.stderr
    run = target / "run"
    from jaxddpm import checkpoint
    from jaxddpm.generate import load_workdir

    if checkpoint.has_checkpoints(str(run)):  # what was written before the disk filled still restores
        _, state = load_workdir(str(run))
        assert int(state.step) > 0


def test_full_workdir_reports_the_cause_and_exits_1(tmpfs, capsys):
    """Our own report on a full disk: one line naming the cause, exit code 1."""
    from jaxddpm import cli

    target = tmpfs("size=300k")
    code = cli.main(["train", "--workdir", str(target / "run")] + tiny_argv())
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("error: ") and err.count("\n") == 1 and "No space left on device" in err


def test_stderr_held_during_a_checkpoint_write_is_replayed_or_dropped(capfd, monkeypatch):
    """Library output on file descriptor 2 during a write: shown after a successful write,
    dropped (kept in the error's details) after a failed one, shown with JAXDDPM_DEBUG=1."""
    import os

    from jaxddpm import checkpoint

    monkeypatch.delenv("JAXDDPM_DEBUG", raising=False)
    with checkpoint._held_stderr():
        os.write(2, b"from a writer thread\n")
    assert capfd.readouterr().err == "from a writer thread\n"

    with pytest.raises(OSError):
        with checkpoint._held_stderr() as held:
            os.write(2, b"traceback of a failed write\n")
            raise OSError("disk full")
    assert capfd.readouterr().err == ""
    assert held["text"] == "traceback of a failed write\n"

    monkeypatch.setenv("JAXDDPM_DEBUG", "1")
    with pytest.raises(OSError):
        with checkpoint._held_stderr():
            os.write(2, b"shown when debugging\n")
            raise OSError("disk full")
    assert capfd.readouterr().err == "shown when debugging\n"


def test_a_failed_write_reports_while_its_output_is_still_held(tmp_path, capfd, monkeypatch):
    """`checkpoint.save(on_failure=...)` runs the hook before fd 2 is given back, and where
    the hook points fd 2 elsewhere (as the CLI does: /dev/null) the hold leaves it there,
    so late library output cannot reach the terminal between the two."""
    import os

    from jaxddpm import checkpoint

    monkeypatch.delenv("JAXDDPM_DEBUG", raising=False)

    class FailingManager:
        directory = str(tmp_path)

        def save(self, *args, **kwargs):
            os.write(2, b"traceback printed by a writer thread\n")
            raise OSError("[Errno 28] No space left on device")

    seen = {}
    real = os.dup(2)
    sink = tmp_path / "sink"

    def on_failure(error):
        os.write(2, b"still held\n")  # goes to the hold's buffer, not the terminal
        seen["error"] = error
        fd = os.open(sink, os.O_WRONLY | os.O_CREAT)
        os.dup2(fd, 2)
        os.close(fd)

    from jaxddpm.train import TrainState

    state = TrainState(step=jnp.array(3), params={}, batch_stats={}, opt_state={}, ema_params={})
    try:
        with pytest.raises(checkpoint.CheckpointError, match="No space left on device") as info:
            checkpoint.save(FailingManager(), state, {}, on_failure=on_failure)
        os.write(2, b"after the hold\n")  # where the hook pointed fd 2
    finally:
        os.dup2(real, 2)
        os.close(real)
    assert seen["error"] is info.value
    assert "traceback printed by a writer thread" in info.value.details and "still held" in info.value.details
    assert sink.read_text() == "after the hold\n"
    assert capfd.readouterr().err == ""
