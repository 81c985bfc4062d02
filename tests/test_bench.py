"""`jaxddpm bench` (jaxddpm.bench): the harness runs and writes its JSON (no timing assertions)."""

import json

import pytest

pytest.importorskip("torch", reason="the benchmark times jaxddpm against PyTorch (pip install -e '.[parity]')")
pytestmark = pytest.mark.torch

from jaxddpm.bench import main  # noqa: E402


@pytest.mark.slow
def test_quick_bench_writes_results(tmp_path, capsys):
    assert main(["--quick", "--batch", "2", "--sample-batch", "2", "--reps", "1", "--sample-reps", "1", "--out", str(tmp_path)]) == 0
    files = list(tmp_path.glob("*-quick.json"))
    assert len(files) == 1
    r = json.loads(files[0].read_text())
    for section in ("train", "sample"):
        assert r[section]["jaxddpm"]["median_s"] > 0 and r[section]["torch_eager"]["median_s"] > 0
        assert r[section]["ratio_vs_eager"] > 0
    assert r["train"]["jaxddpm"]["flops_per_step"] > 0 and r["train"]["jaxddpm"]["compile_s"] > 0
    assert r["train"]["jaxddpm_loop"]["steps_per_call"] == 8 and r["train"]["ratio_loop_vs_eager"] > 0
    assert "ratio (torch / jaxddpm)" in capsys.readouterr().out


