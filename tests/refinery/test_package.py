"""The refinery package speaks refinery and nothing else: it loads no training library."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "kern_finetune" / "refinery"


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

# no private imports and no import cycle, for this package as for the rest: tests/test_architecture.py
