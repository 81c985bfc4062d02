"""What runs without the optional dependencies: jaxddpm never loads PyTorch (only the parity
package imports it when it loads; `jaxddpm.bench` and `jaxddpm.inception` inside the functions
that need it), and training, export and the Pipeline need neither TensorFlow, TFDS nor
scikit-learn."""

import ast
import pathlib
import re
import subprocess
import sys
import tomllib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _imports_torch(nodes) -> bool:
    for node in nodes:
        if isinstance(node, ast.Import) and any(a.name.split(".")[0] == "torch" for a in node.names):
            return True
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "torch":
            return True
    return False


def test_no_module_of_jaxddpm_imports_torch_when_it_loads():
    top_level, in_functions = [], []
    for p in sorted((ROOT / "jaxddpm").rglob("*.py")):
        tree = ast.parse(p.read_text())
        name = str(p.relative_to(ROOT))
        if _imports_torch(tree.body):
            top_level.append(name)
        if _imports_torch(ast.walk(tree)):
            in_functions.append(name)
    assert top_level == []
    assert in_functions == ["jaxddpm/bench.py", "jaxddpm/inception.py"]  # the rule sees function-level imports


# What `jaxddpm train`, `sample`, `eval` and `export` import, and the torch-free measuring tools.
MODULES = ("jaxddpm, jaxddpm.cli, jaxddpm.trainer, jaxddpm.generate, jaxddpm.evaluate, jaxddpm.events, jaxddpm.data, "
           "jaxddpm.profiling, jaxddpm.pipeline, jaxddpm.bench, jaxddpm.inception")


def _run(code: str, timeout: int = 120) -> None:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr


# Makes the named packages fail to import with ModuleNotFoundError, as if not installed.
# (find_spec still answers, so that code which only asks whether a package exists, such
# as etils' check for TensorFlow, goes on to the import and fails there.)
BLOCK = """
import importlib.abc, importlib.machinery, sys
class Missing(importlib.abc.Loader):
    def create_module(self, spec):
        raise ModuleNotFoundError(f"No module named {{spec.name!r}}", name=spec.name)
    def exec_module(self, module):
        pass
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {blocked!r}:
            return importlib.machinery.ModuleSpec(name, Missing())
        return None
sys.meta_path.insert(0, Block())
"""


def test_core_dependencies_leave_out_the_heavy_optional_ones():
    """A plain `pip install jaxddpm` gets neither TensorFlow, TFDS, PyTorch nor scikit-learn."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {re.split(r"[<>=;\[ ]", dep, maxsplit=1)[0].lower() for dep in project["dependencies"]}
    assert not names & {"tensorflow", "tensorflow-cpu", "tensorflow-datasets", "torch", "scikit-learn", "keras", "matplotlib"}
    assert any(dep.startswith("tensorflow-datasets") for dep in project["optional-dependencies"]["flowers"])


@pytest.mark.slow
def test_train_and_the_pipeline_run_without_the_optional_dependencies(tmp_path):
    """What a plain install runs: `jaxddpm train` (tiny), `jaxddpm export`, the README's
    Pipeline lines and `jaxddpm convert` to and from diffusers' format, with torch, diffusers,
    TensorFlow, TFDS, scikit-learn and matplotlib impossible to import."""
    workdir, export, grid = tmp_path / "run", tmp_path / "export", tmp_path / "grid.png"
    _run(
        BLOCK.format(blocked={"torch", "tensorflow", "tensorflow_datasets", "sklearn", "keras", "matplotlib", "diffusers"})
        + "from tests.helpers import tiny_argv\n"
        + "from jaxddpm import cli\n"
        + f"assert cli.main(['train', '--workdir', {str(workdir)!r}, *tiny_argv()]) == 0\n"
        + f"assert cli.main(['export', '--workdir', {str(workdir)!r}, '--out', {str(export)!r}]) == 0\n"
        + "import jaxddpm\n"
        + f"pipe = jaxddpm.Pipeline.from_workdir({str(workdir)!r})\n"
        + f"jaxddpm.save_grid({str(grid)!r}, pipe.sample(16, seed=0))\n"
        + f"assert (jaxddpm.Pipeline.from_pretrained({str(export)!r}).sample(16, seed=0) == pipe.sample(16, seed=0)).all()\n"
        # The diffusers format both ways, for a DDPMUNet (random weights).
        + "from tests.helpers import tiny_ddpm_pipeline\n"
        + f"tiny_ddpm_pipeline('fused').save_pretrained({str(tmp_path / 'ddpm')!r})\n"
        + f"assert cli.main(['convert', '--to-diffusers', {str(tmp_path / 'ddpm')!r}, '--out', {str(tmp_path / 'hf')!r}]) == 0\n"
        + f"assert cli.main(['convert', '--from-diffusers', {str(tmp_path / 'hf')!r}, '--out', {str(tmp_path / 'back')!r}]) == 0\n"
        + "assert not {m.split('.')[0] for m in sys.modules if sys.modules[m] is not None} "
        + "& {'torch', 'tensorflow', 'tensorflow_datasets', 'sklearn', 'diffusers'}\n",
        timeout=300,
    )
    assert grid.stat().st_size > 0


def test_commands_do_not_load_torch_when_it_is_installed():
    """With torch installed, these modules must still not load it (it costs seconds at
    every start of a command)."""
    pytest.importorskip("torch", reason="checks that an installed torch is not loaded")
    _run(
        "import sys\n"
        f"import {MODULES}\n"
        "loaded = sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))\n"
        "assert not loaded, loaded[:5]\n"
    )
