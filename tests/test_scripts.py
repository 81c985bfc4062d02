"""The measurement scripts in scripts/ run at their smallest sizes (no timing assertions)."""

import json
import pathlib
import subprocess
import sys

import pytest

pytest.importorskip("torch", reason="the scripts time jaxddpm against PyTorch (pip install -e '.[parity]')")
pytestmark = [pytest.mark.torch, pytest.mark.slow]


def _run_script(*args):
    root = pathlib.Path(__file__).resolve().parents[1]
    return subprocess.run([sys.executable, *args], cwd=root, capture_output=True, text=True, timeout=600)


def test_conv_grads_script_times_each_form_and_marks_the_chosen_one():
    out = _run_script("scripts/bench_conv_grads.py", "--batch", "1", "--reps", "1", "--layers", "up0.conv2,down3.transform")
    assert out.returncode == 0, out.stderr
    rows = {line.split()[0]: line for line in out.stdout.splitlines()[1:]}
    assert set(rows) == {"up0.conv2", "down3.transform"}
    # the forms jaxddpm picks for these shapes (jaxddpm/model.py: _grad_forms), each timed
    assert "winograd* " in rows["up0.conv2"].split("kernel grad:")[0] and "taps " in rows["up0.conv2"]
    assert "gemm* " in rows["down3.transform"] and "phases " in rows["down3.transform"]


def test_ab_script_rejects_an_unknown_constant():
    out = _run_script("scripts/ab_model_constant.py", "_NO_SUCH_CONSTANT", "0")
    assert out.returncode == 2 and "jaxddpm.model has no constant '_NO_SUCH_CONSTANT'" in out.stderr


def test_train_loop_script_times_the_trainer_and_functional_programs():
    out = _run_script("scripts/bench_train_loop.py", "--quick", "--functional", "--batch", "2", "--reps", "1",
                      "--steps-per-call", "2")
    assert out.returncode == 0, out.stderr
    timed = json.loads(out.stdout)["s_per_step"]
    assert set(timed) == {"auto, 2 per call", "functional API, auto, 2 per call"}
    assert all(v["median"] > 0 for v in timed.values())
