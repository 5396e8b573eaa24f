"""The package's shape, as issue 18 asks it to stay: no module imports another module's underscore names,
no import cycle (at module level or inside functions), no class over 300 lines and no function over 80 lines
outside the training loops."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "kern_finetune"
MAX_CLASS_LINES = 300
MAX_FUNCTION_LINES = 80
TRAINING_LOOPS: set[str] = set()
"""``module:qualname`` of the functions that are one training loop each, allowed past the function limit."""


def _modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    return out


MODULES = _modules()


def _resolve(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    if node.level > 1:
        base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _is_package(module: str) -> bool:
    return (PACKAGE.parent / module.replace(".", "/") / "__init__.py").exists()


def _type_checking_only(tree: ast.Module) -> set[int]:
    """ids of the import nodes under ``if TYPE_CHECKING:``: never run, so no import at run time."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            out.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return out


def _imports(module: str, tree: ast.Module) -> list[tuple[str, str | None, int, bool]]:
    """(imported module, imported name or None, line, at module level) for each import in ``tree`` that runs
    (those under ``if TYPE_CHECKING:`` left out)."""
    top = set(map(id, tree.body))
    skip = _type_checking_only(tree)
    found = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append((alias.name, None, node.lineno, id(node) in top))
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, node, _is_package(module))
            for alias in node.names:
                found.append((target, alias.name, node.lineno, id(node) in top))
    return found


def test_no_module_imports_an_underscore_name_from_another_module() -> None:
    offences = []
    for module, tree in MODULES.items():
        for target, name, line, _ in _imports(module, tree):
            if not target.startswith("kern_finetune"):
                continue
            if f"{target}.{name}" in MODULES:
                name = None  # a submodule, judged by its own name below
            if name is not None and name.startswith("_") and not name.startswith("__"):
                offences.append(f"{module}:{line} imports {target}{'.' + name if name else ''}")
    assert offences == []


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def _graph(*, module_level_only: bool) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for module, tree in MODULES.items():
        for target, name, _, top in _imports(module, tree):
            if module_level_only and not top:
                continue
            for candidate in (f"{target}.{name}", target):
                if candidate in MODULES and candidate != module and not module.startswith(candidate + "."):
                    graph[module].add(candidate)
                    break
    # importing a package's submodule runs the package's __init__ first: not an edge back
    return graph


def test_no_import_cycle_at_module_level() -> None:
    assert _cycle(_graph(module_level_only=True)) is None


def test_no_import_cycle_inside_functions_either() -> None:
    """A lazy import inside a function hides a cycle from the module-level check; a cycle through a
    package's ``__init__`` (which imports its submodules) counts like any other."""
    assert _cycle(_graph(module_level_only=False)) is None


def _sizes() -> list[tuple[str, str, str, int]]:
    rows = []
    for module, tree in MODULES.items():
        def walk(node: ast.AST, prefix: str) -> None:
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                    kind = "class" if isinstance(child, ast.ClassDef) else "function"
                    name = f"{prefix}{child.name}"
                    rows.append((module, name, kind, child.end_lineno - child.lineno + 1))
                    walk(child, name + ".")
        walk(tree, "")
    return rows


@pytest.mark.parametrize("kind, limit", [("class", MAX_CLASS_LINES), ("function", MAX_FUNCTION_LINES)])
def test_units_stay_small(kind: str, limit: int) -> None:
    too_big = [
        f"{module}:{name} ({lines} lines)"
        for module, name, k, lines in _sizes()
        if k == kind and lines > limit and f"{module}:{name}" not in TRAINING_LOOPS
    ]
    assert too_big == []
