"""The multi-project benchmark's bundled exports (``samples/clinc150``, ``samples/rotten_tomatoes``) load as
refinery exports and select what their READMEs say (``scripts/build_projects.py`` built them)."""

from __future__ import annotations

from collections import Counter

import pytest

from conftest import ROOT
from kern_finetune.refinery.export import load_export, resolve_task
from kern_finetune.labels.select import select_labels

CASES = [
    # export, task, gold attribute, manual labels, weak labels selected at 0.7, test records (READMEs)
    ("clinc150", "Intent", "intent", 450, 5583, 13467),
    ("clinc150", "Domain", "domain", 450, 14135, 4915),
    ("rotten_tomatoes", "Sentiment", "category", 180, 5022, 8333),
]


@pytest.mark.parametrize(("name", "task", "gold", "n_manual", "n_weak", "n_test"), CASES)
def test_bundled_project_selects_as_documented(name: str, task: str, gold: str, n_manual: int, n_weak: int, n_test: int) -> None:
    records = load_export(ROOT / "samples" / name / "export.json.gz")
    sel = select_labels(records, resolve_task(records, task), text_attributes=["text"], gold_attribute=gold, seed=42)
    source = Counter(sel.source[i] for i in sel.labeled_idx)
    assert (source["manual"], source["weak"], len(sel.test_idx)) == (n_manual, n_weak, n_test)
    # every test record has its gold class (the benchmark judges all of them), and manual labels are right
    assert all(sel.gold[i] is not None for i in sel.test_idx)
    manual = [i for i in sel.labeled_idx if sel.source[i] == "manual"]
    assert all(sel.classes[sel.y[i]] == sel.gold[i] for i in manual)
