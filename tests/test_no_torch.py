"""jaxddpm itself runs without PyTorch; only the parity package imports it."""

import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_no_module_of_jaxddpm_imports_torch():
    offenders = [
        str(p.relative_to(ROOT))
        for p in (ROOT / "jaxddpm").rglob("*.py")
        if re.search(r"^\s*(import torch|from torch)", p.read_text(), flags=re.M)
    ]
    assert offenders == []


# What `jaxddpm train`, `sample` and `eval` import, and the torch-free measuring tools.
MODULES = "jaxddpm, jaxddpm.cli, jaxddpm.trainer, jaxddpm.generate, jaxddpm.evaluate, jaxddpm.events, jaxddpm.data, jaxddpm.profiling"


def _run(code: str) -> None:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_training_modules_import_with_torch_blocked():
    _run(
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch' or name.startswith('torch.'):\n"
        "            raise ImportError('torch blocked')\n"
        "sys.meta_path.insert(0, Block())\n"
        f"import {MODULES}\n"
        "assert 'torch' not in sys.modules\n"
    )


def test_training_commands_do_not_load_torch_when_it_is_installed():
    """With torch installed, these modules must still not load it (it costs seconds at
    every start of a command)."""
    pytest.importorskip("torch", reason="checks that an installed torch is not loaded")
    _run(
        "import sys\n"
        f"import {MODULES}\n"
        "loaded = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        "assert not loaded, loaded[:5]\n"
    )
