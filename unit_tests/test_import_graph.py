"""The core package imports one way: no two of its modules import each other, directly or round
a circle, at import time. (Imports under ``TYPE_CHECKING`` and inside functions do not run at
import time; a module importing its own parent package is how Python packages work.)"""

from __future__ import annotations

import ast
from pathlib import Path

import modelplug

CORE = Path(modelplug.__file__).parent


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runs_at_import(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """The import statements a module runs when it is imported: top level, and inside top-level
    ``try``/``if`` blocks other than ``if TYPE_CHECKING:``."""
    found: list[ast.Import | ast.ImportFrom] = []
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom, ast.Try, ast.If)):
            found += [n for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom))]
    return found


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the package's modules it imports at import time."""
    modules = {_module_name(p, root): p for p in root.rglob("*.py")}

    def owner(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node in _runs_at_import(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
                continue
            base = node.module or ""
            if node.level:
                package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
                base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
            submodules = {f"{base}.{a.name}" for a in node.names} & modules.keys()
            targets |= submodules if len(submodules) == len(node.names) else submodules | {base}
        graph[name] = {t for m in targets if (t := owner(m)) and t != name
                       and not name.startswith(t + ".")}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []
    found: list[list[str]] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                found.append([*path[path.index(target):], target])
            elif target not in state:
                visit(target)
        path.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
    return found


def test_the_core_package_has_no_import_cycle() -> None:
    graph = import_graph(CORE)
    assert {"modelplug.errors", "modelplug.spec", "modelplug.registry"} <= graph.keys()
    assert cycles(graph) == []


def test_errors_is_the_ground_floor() -> None:
    """The error taxonomy imports nothing of modelplug's, so every module can raise its errors."""
    assert import_graph(CORE)["modelplug.errors"] == set()


def test_a_cycle_is_found(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg.b import thing\n")
    (package / "b.py").write_text("from typing import TYPE_CHECKING\nfrom pkg import c\n"
                                  "if TYPE_CHECKING:\n    from pkg.a import other\n")
    (package / "c.py").write_text("def late():\n    from pkg import a\n")
    assert cycles(import_graph(package)) == []  # TYPE_CHECKING and function imports do not run
    (package / "c.py").write_text("from . import a\n")
    assert cycles(import_graph(package)) == [["pkg.a", "pkg.b", "pkg.c", "pkg.a"]]
