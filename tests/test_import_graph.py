"""The module graph of `spg_core` and `dashboard` has no cycle, and every module imports on its own.

The graph is read from each module's top-level imports (function-level imports are the few
lazy heavy ones, marked `noqa: PLC0415`); a cycle there is a layering error even when Python
happens to resolve it. The modules are then imported in a fresh interpreter leaves first,
so each one finds everything it needs already importable.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("spg_core", "dashboard")
SCRIPTS = frozenset({"dashboard.app"})  # Streamlit's entrypoint: a script run by `streamlit run`, not imported


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every module of PACKAGES."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if any(folder.is_symlink() for folder in path.parents):
                continue  # dashboard/bundle/pages and dashboard/assets: links to the app's scripts and files
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _top_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Import statements run at import time: module body and its if / try blocks, not functions
    and not `if TYPE_CHECKING:`."""
    out: list[ast.Import | ast.ImportFrom] = []
    todo: list[ast.stmt] = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out.append(node)
        elif isinstance(node, ast.If) and "TYPE_CHECKING" not in ast.unparse(node.test):
            todo += node.body + node.orelse
        elif isinstance(node, ast.Try):
            todo += node.body + node.orelse + node.finalbody + [s for h in node.handlers for s in h.body]
    return out


def _resolve(name: str, node: ast.Import | ast.ImportFrom, modules: dict[str, Path]) -> list[str]:
    """The project modules one import statement of module `name` loads explicitly."""
    if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = name if modules[name].name == "__init__.py" else name.rpartition(".")[0]
            for _ in range(node.level - 1):
                package = package.rpartition(".")[0]
            base = f"{package}.{base}" if base else package
        targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
    return [t for t in targets if t in modules and t != name]


def import_graph() -> dict[str, set[str]]:
    """Module -> the project modules it imports at import time."""
    modules = module_files()
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        graph[name] = {t for node in _top_level_imports(tree) for t in _resolve(name, node, modules)}
    return graph


def test_the_module_graph_has_no_cycle_and_every_module_imports_leaves_first():
    graph = import_graph()
    try:
        order = list(TopologicalSorter(graph).static_order())
    except CycleError as exc:
        raise AssertionError(f"import cycle: {' -> '.join(exc.args[1])}") from None
    assert "spg_core.cli" in order and "dashboard.nav" in order  # the walk saw both packages
    script = "import importlib, sys\nfor name in sys.argv[1:]:\n    importlib.import_module(name)\n"
    modules = [name for name in order if name not in SCRIPTS]
    done = subprocess.run([sys.executable, "-c", script, *modules], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]


def test_the_graph_sees_a_cycle_when_there_is_one(tmp_path, monkeypatch):
    """The check above could fail: two modules importing each other are reported."""
    (tmp_path / "spg_core").mkdir()
    (tmp_path / "spg_core" / "__init__.py").write_text("")
    (tmp_path / "spg_core" / "a.py").write_text("from .b import x\n")
    (tmp_path / "spg_core" / "b.py").write_text("from . import a\nx = 1\n")
    (tmp_path / "dashboard").mkdir()
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    graph = import_graph()
    assert graph["spg_core.a"] == {"spg_core.b"} and graph["spg_core.b"] == {"spg_core.a"}
    try:
        list(TopologicalSorter(graph).static_order())
    except CycleError:
        return
    raise AssertionError("the cycle a <-> b went unseen")
