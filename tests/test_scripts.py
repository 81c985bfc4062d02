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
    out = _run_script("scripts/bench_conv_grads.py", "--batch", "1", "--reps", "1",
                      "--layers", "up_blocks_0/conv2,down_blocks_3/transform")
    assert out.returncode == 0, out.stderr
    rows = {line.split()[0]: line for line in out.stdout.splitlines()[1:]}
    assert set(rows) == {"up_blocks_0/conv2", "down_blocks_3/transform"}  # layer names read from the model
    # the forms the default ConvPolicy picks for these shapes (ConvPolicy.grad_forms), each timed
    assert "winograd* " in rows["up_blocks_0/conv2"].split("kernel grad:")[0] and "taps " in rows["up_blocks_0/conv2"]
    assert "gemm* " in rows["down_blocks_3/transform"] and "phases " in rows["down_blocks_3/transform"]


def test_forms_script_rejects_an_unknown_key():
    out = _run_script("scripts/bench_forms.py", "no_such_field=0", "--sizes", "quick")
    assert out.returncode == 1 and "'no_such_field=0' is not key=value with a key among" in out.stderr


def test_forms_script_times_policies_the_trainer_functional_api_and_torch():
    variants = ["impl=xla/upsample=dilated/steps=2", "api=functional/steps=2", "torch"]
    out = _run_script("scripts/bench_forms.py", *variants, "--sizes", "quick", "--batch", "2", "--reps", "1")
    assert out.returncode == 0, out.stderr
    timed = json.loads(out.stdout)["s_per_step"]
    assert list(timed) == variants
    assert all(v["median_s"] > 0 for v in timed.values()) and timed[variants[0]]["first_over_this"] == 1.0


def test_forms_script_samples_and_compares_the_samples():
    out = _run_script("scripts/bench_forms.py", "default", "winograd_min_channels=1", "--program", "sample",
                      "--sizes", "quick", "--batch", "2", "--reps", "1")
    assert out.returncode == 0, out.stderr
    timed = json.loads(out.stdout)["s_per_step"]
    assert timed["default"]["max_abs_sample_difference"] == 0.0
    # Winograd on every width rounds differently, but computes the same chain
    assert 0.0 < timed["winograd_min_channels=1"]["max_abs_sample_difference"] < 1e-3
