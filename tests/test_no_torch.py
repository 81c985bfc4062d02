"""jaxddpm itself runs without PyTorch; only the parity package imports it."""

import pathlib
import re
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_no_module_of_jaxddpm_imports_torch():
    offenders = [
        str(p.relative_to(ROOT))
        for p in (ROOT / "jaxddpm").rglob("*.py")
        if re.search(r"^\s*(import torch|from torch)", p.read_text(), flags=re.M)
    ]
    assert offenders == []


def test_training_modules_import_with_torch_blocked():
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch' or name.startswith('torch.'):\n"
        "            raise ImportError('torch blocked')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import jaxddpm, jaxddpm.cli, jaxddpm.trainer, jaxddpm.generate, jaxddpm.data\n"
        "assert 'torch' not in sys.modules\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
