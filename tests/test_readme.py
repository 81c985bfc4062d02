"""The README's Python example runs as written."""

import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


@pytest.mark.slow
def test_readme_functional_api_example_runs():
    blocks = python_blocks()
    assert blocks, "README has no Python example"
    namespace: dict = {}
    exec(compile(blocks[0], str(README), "exec"), namespace)  # noqa: S102 - our own README
    assert namespace["images"].shape == (16, 16, 16, 1)
    assert namespace["x_t"].shape == (8, 16, 16, 1)
    assert int(namespace["state"].step) == 5 and namespace["metrics"]["loss"].shape == (4,)
