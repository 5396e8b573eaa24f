"""The refinery package speaks refinery and nothing else: no training library, no private imports, no cycle."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "kern_finetune" / "refinery"


def _imports(path: Path) -> list[ast.ImportFrom]:
    return [n for n in ast.walk(ast.parse(path.read_text(encoding="utf-8"))) if isinstance(n, ast.ImportFrom)]


def test_the_refinery_package_imports_no_training_library() -> None:
    code = (
        "import importlib, pkgutil, sys, kern_finetune.refinery as r\n"
        "names = [m.name for m in pkgutil.iter_modules(r.__path__)]\n"
        "for n in names: importlib.import_module('kern_finetune.refinery.' + n)\n"
        "print(len(names), sorted(m for m in ('torch', 'sentence_transformers', 'sklearn') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    count, loaded = out.stdout.split(" ", 1)
    assert int(count) == len(list(PACKAGE.glob("[!_]*.py"))) and loaded.strip() == "[]"


def test_no_module_imports_a_private_name() -> None:
    private = [f"{p.name}: {n.module}.{a.name}" for p in PACKAGE.glob("*.py") for n in _imports(p)
               for a in n.names if a.name.startswith("_") and a.name != "__future__"]
    assert private == []


def test_no_import_cycle_inside_the_package() -> None:
    edges = {p.stem: {a.name if n.module is None else n.module for n in _imports(p) if n.level == 1
                      for a in n.names} for p in PACKAGE.glob("*.py")}
    edges = {m: {d for d in deps if d in edges} for m, deps in edges.items()}

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(d == goal or (d not in seen and reaches(d, goal, seen | {d})) for d in edges[start])

    assert edges["export"] >= {"columns", "reader", "snapshot"} and "export" not in edges["snapshot"]
    assert [m for m in edges if reaches(m, m, set())] == []
