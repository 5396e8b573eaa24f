"""The mutation list (tests/mutations.py) is well-formed and its edits still apply to the product code.

The mutation run itself is slow and not part of the suite: ``python tests/mutations.py``.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _load():
    spec = importlib.util.spec_from_file_location("kern_mutations", HERE / "mutations.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_every_mutation_applies_once_and_names_existing_tests():
    mutations = _load()
    assert mutations.check() == []
    names = {m.name for m in mutations.MUTATIONS}
    assert {"labels-shuffled", "head-skipped", "hmac-without-timestamp", "search-past-refinery-limit"} <= names


def test_check_reports_a_stale_snippet_and_a_missing_test(tmp_path: Path):
    mutations = _load()
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_x.py").write_text("def test_a():\n    pass\n")
    (tmp_path / "mod.py").write_text("x = 1\nx = 1\n")
    bad = (
        mutations.Mutation("twice", "", "mod.py", "x = 1", "x = 2", ("tests/test_x.py::test_a",)),
        mutations.Mutation("gone", "", "mod.py", "y = 1", "y = 2", ("tests/test_x.py::test_b",)),
    )
    problems = mutations.check(bad, root=tmp_path)
    assert any("twice: old text found 2 times" in p for p in problems)
    assert any("gone: old text found 0 times" in p for p in problems)
    assert any("gone: no test function test_b" in p for p in problems)
