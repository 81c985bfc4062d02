"""The package's layout rules (README, "How the code is organised"): no import cycles, the
`jaxddpm` package imports nothing from `parity` at module level, and its files and functions
stay small enough to read."""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
MAX_FILE_LINES = 350
MAX_FUNCTION_LINES = 80
# The config defaults are one flat list of fields, read as a table rather than as code.
LONG_ALLOWED = {"jaxddpm/configs/default.py"}


def _modules(package: str) -> dict[str, pathlib.Path]:
    out = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _top_level_imports(path: pathlib.Path, name: str, known: set[str]) -> set[str]:
    """Modules of ``known`` that ``path`` imports when it is imported (not inside functions)."""
    tree = ast.parse(path.read_text())
    found = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in tree.body:
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        found |= {n for n in names if n in known}
    return found - {name}


def _graph() -> dict[str, set[str]]:
    modules = {**_modules("jaxddpm"), **_modules("parity")}
    return {name: _top_level_imports(path, name, set(modules)) for name, path in modules.items()}


def test_jaxddpm_imports_nothing_from_parity_at_module_level():
    offenders = {name: sorted(i for i in imports if i.startswith("parity"))
                 for name, imports in _graph().items() if name.startswith("jaxddpm")}
    assert not {k: v for k, v in offenders.items() if v}


def test_no_import_cycles():
    graph = _graph()
    # a package imports its submodules for re-export; only cycles between modules count
    edges = {name: {i for i in imports if not name.startswith(i + ".")} for name, imports in graph.items()}
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(node: str, stack: list[str]) -> bool:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycle.extend(stack[stack.index(nxt):] + [node, nxt] if nxt in stack else [node, nxt])
                return True
            if state.get(nxt) is None and visit(nxt, stack + [node]):
                return True
        state[node] = 2
        return False

    assert not any(visit(n, []) for n in sorted(edges) if state.get(n) is None), " -> ".join(cycle)


def test_files_and_functions_are_short():
    long_files, long_functions = [], []
    for path in _modules("jaxddpm").values():
        rel = str(path.relative_to(ROOT))
        lines = path.read_text().count("\n")
        if lines > MAX_FILE_LINES and rel not in LONG_ALLOWED:
            long_files.append(f"{rel}: {lines} lines")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES and rel not in LONG_ALLOWED:
                    long_functions.append(f"{rel}: {node.name} {length} lines")
    assert not long_files and not long_functions, long_files + long_functions


def test_the_rules_see_what_they_check():
    """The import graph is read correctly: known edges are present."""
    graph = _graph()
    assert "jaxddpm.factory" in graph["jaxddpm.trainer"]
    assert "jaxddpm.kernels.policy" in graph["jaxddpm.kernels.conv"]
    assert "jaxddpm" in graph["parity.checks"] or "jaxddpm.models" in graph["parity.convert"]
