"""The house's shape: no import cycle between modules or between tasks/ folders (an import inside a function
counts, and so does one made only for type checking), and no production function a reader must scroll."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

from tasks.common.config import REPO_ROOT

PACKAGES = ("flows", "tasks", "serving", "tools", "deployments")
MAX_FUNCTION_LINES = 80


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (REPO_ROOT / package).rglob("*.py"):
            parts = path.relative_to(REPO_ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules `name` imports, wherever in the file the import statement is."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    named: list[str] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            named += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([base] if base else []))
            named += [base] + [f"{base}.{alias.name}" for alias in node.names]
    found = set()
    for target in named:
        while target and target not in known:  # `from a.b import name`: the module is a.b, or a.b.name
            target = target.rpartition(".")[0]
        if target and target != name:
            found.add(target)
    return found


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph.get(node, ()):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while (member := stack.pop()) != node:
                component.append(member)
            if component:
                found.append(sorted([node, *component]))

    for node in list(graph):
        if node not in index:
            visit(node)
    return found


def folder(module: str) -> str:
    """tasks.measure.loadgen -> tasks.measure; flows.cli -> flows."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "tasks" else parts[0]


def test_no_module_imports_itself_through_others():
    known = modules()
    graph = {name: imports(name, path, known) for name, path in known.items()}
    assert cycles(graph) == []


def test_no_two_folders_import_each_other():
    known = modules()
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in known.items():
        graph[folder(name)] |= {folder(target) for target in imports(name, path, known)} - {folder(name)}
    assert cycles(dict(graph)) == []


def test_the_cycle_finder_finds_a_cycle_through_an_import_inside_a_function(tmp_path):
    (tmp_path / "a.py").write_text("import b\n")
    (tmp_path / "b.py").write_text("def f():\n    from a import x\n")
    known = {"a": tmp_path / "a.py", "b": tmp_path / "b.py"}
    assert cycles({name: imports(name, path, known) for name, path in known.items()}) == [["a", "b"]]


def long_functions(known: dict[str, Path], limit: int = MAX_FUNCTION_LINES) -> list[str]:
    found = []
    for name, path in known.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = node.end_lineno - node.lineno + 1
                if lines > limit:
                    found.append(f"{name}.{node.name}: {lines} lines")
    return found


def test_no_production_function_is_longer_than_a_screen():
    assert long_functions(modules()) == []


def test_the_length_check_sees_a_long_function_and_a_nested_one(tmp_path):
    body = "\n".join(f"        x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    (tmp_path / "long.py").write_text(f"def outer():\n    def inner():\n{body}\n")
    assert long_functions({"long": tmp_path / "long.py"}) == [
        f"long.outer: {MAX_FUNCTION_LINES + 2} lines",
        f"long.inner: {MAX_FUNCTION_LINES + 1} lines",
    ]
