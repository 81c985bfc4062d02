"""The README's Python examples run as written."""

import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def python_block(containing: str) -> str:
    blocks = [b for b in python_blocks() if containing in b]
    assert len(blocks) == 1, f"README should have one Python example with {containing!r}"
    return blocks[0]


def test_readme_pipeline_example_runs(tiny_run, tmp_path, monkeypatch):
    """The three lines after training, on a finished tiny run in place of runs/quickstart."""
    block = python_block("Pipeline.from_workdir")
    assert '"runs/quickstart"' in block
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(block.replace('"runs/quickstart"', repr(tiny_run)), str(README), "exec"), namespace)  # noqa: S102
    assert (tmp_path / "grid.png").stat().st_size > 0
    assert namespace["pipe"].step == 4


@pytest.mark.slow
def test_readme_functional_api_example_runs():
    """As written but for the model's widths: 2 levels of 4 and 8 channels in place of the
    quickstart's 3 (the same calls, fewer layers to compile)."""
    block = python_block("make_schedule")
    assert "channels=(32, 64, 128)" in block
    namespace: dict = {}
    exec(compile(block.replace("channels=(32, 64, 128)", "channels=(4, 8)"), str(README), "exec"), namespace)  # noqa: S102
    assert namespace["images"].shape == (16, 16, 16, 1)
    assert namespace["x_t"].shape == (8, 16, 16, 1)
    assert int(namespace["state"].step) == 5 and namespace["metrics"]["loss"].shape == (4,)
