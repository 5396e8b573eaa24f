"""Few labels are normal (issue 16.2): a new project's classes have 2-4 labels each. The label check uses
fewer folds or skips the classes it cannot check and says which; ``run`` either writes a complete output
or exits 1 with one line naming how many labels it needs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kern_finetune.cli import main
from kern_finetune.labels.label_check import MIN_LABELS_TO_CHECK, find_label_issues
from kern_finetune.output.save import RUN_OUTPUTS
from kern_finetune.labels.select import Selection

CLASSES = ["World", "Sports", "Business", "Sci/Tech"]


def _selection(per_class: list[int], sources: list[str], *, seed: int = 0) -> tuple[np.ndarray, Selection]:
    """Clustered 16-d vectors: ``per_class[c]`` labeled rows of class c (sources cycle through
    ``sources``), plus 20 unlabeled rows."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(len(per_class), 16)) * 3
    y, src, rows = [], [], []
    for c, n in enumerate(per_class):
        for k in range(n):
            rows.append(centers[c] + rng.normal(size=16))
            y.append(c)
            src.append(sources[k % len(sources)])
    n_lab = len(y)
    rows += list(rng.normal(size=(20, 16)))
    y += [-1] * 20
    src += [""] * 20
    n = len(y)
    labeled = np.arange(n_lab)
    sel = Selection(ids=[str(i) for i in range(n)], texts=["t"] * n, classes=CLASSES[: len(per_class)],
                    y=np.array(y), source=src, confidence=np.full(n, np.nan), train_idx=labeled[::2],
                    val_idx=labeled[1::2], test_idx=np.arange(n_lab, n), gold=[None] * n)
    return np.array(rows, dtype=np.float32), sel


@pytest.mark.parametrize("per_class", [2, 4])
def test_label_check_with_fewer_labels_than_folds(per_class: int) -> None:
    base, sel = _selection([per_class] * 4, ["weak", "manual"])
    found = find_label_issues(base, sel, seed=0)  # raised "n_splits=5 cannot be greater ..." before
    if per_class >= MIN_LABELS_TO_CHECK:
        assert found["n_folds"] == per_class and found["n_checked"] == 4 * per_class
        assert found["unchecked_classes"] == [] and found["note"] is None
    else:
        assert found["n_folds"] == 0 and found["n_checked"] == 0 and found["n_flagged"] == 0
        assert found["unchecked_classes"] == CLASSES and "fewer than 2 classes" in found["note"]


def test_a_class_too_small_to_check_is_named_and_never_flagged() -> None:
    base, sel = _selection([30, 30, 30, 2], ["weak"])
    found = find_label_issues(base, sel, seed=0)
    assert found["unchecked_classes"] == ["Sci/Tech"] and found["n_folds"] == 5
    assert found["n_checked"] == 90  # the two Sci/Tech labels get no out-of-fold verdict...
    assert not {sel.ids[i] for i in found["indices"]} & {"90", "91"}  # ...so they are never flagged


def test_no_weak_labels_means_nothing_to_check() -> None:
    base, sel = _selection([6, 6], ["manual"])
    found = find_label_issues(base, sel, seed=0)
    assert found["n_checked"] == 0 and "no weak labels" in found["note"] and found["n_flagged"] == 0


def _export(path: Path, records: list[dict], per_class: int, *, weak_per_class: int = 0) -> Path:
    """Records with ``per_class`` manual (and ``weak_per_class`` confident weak) labels per class,
    taken from the gold; no other labels."""
    manual = {c: 0 for c in CLASSES}
    weak = {c: 0 for c in CLASSES}
    out = []
    for rec in records:
        rec = {k: v for k, v in rec.items() if not k.startswith("__")}
        rec.update({"__Topic__MANUAL": None, "__Topic__WEAK_SUPERVISION": None,
                    "__Topic__WEAK_SUPERVISION__confidence": None})
        if rec.get("Class Index"):
            c = CLASSES[int(rec["Class Index"]) - 1]
            if manual[c] < per_class:
                rec["__Topic__MANUAL"] = c
                manual[c] += 1
            elif weak[c] < weak_per_class:
                rec["__Topic__WEAK_SUPERVISION"], rec["__Topic__WEAK_SUPERVISION__confidence"] = c, 0.95
                weak[c] += 1
        out.append(rec)
    path.write_text(json.dumps(out), encoding="utf-8")
    return path


def _run(export: Path, out: Path, cache: Path) -> int:
    return main(["run", "--export", str(export), "--task", "Topic", "--gold-attribute", "Class Index",
                 "--text-attributes", "Title", "--out", str(out), "--cache-dir", str(cache), "--epochs", "3",
                 "--mode", "head"])


@pytest.fixture(scope="module")
def few_records(subset_records) -> list[dict]:
    return subset_records[:120]  # within test_outputs' 300: their Title vectors are cached already


def test_run_with_two_manual_labels_per_class_and_no_weak_labels(few_records, shared_cache: Path,
                                                                 tmp_path: Path) -> None:
    export = _export(tmp_path / "two.json", few_records, 2)
    out = tmp_path / "out"
    assert _run(export, out, shared_cache) == 0
    assert {p.name for p in out.iterdir()} == RUN_OUTPUTS
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_train"] + metrics["n_val"] == 8
    assert "no weak labels" in metrics["label_check"]["note"]


def test_run_with_four_labels_per_class_checks_with_four_folds(few_records, shared_cache: Path,
                                                               tmp_path: Path) -> None:
    export = _export(tmp_path / "four.json", few_records, 2, weak_per_class=2)
    out = tmp_path / "out"
    assert _run(export, out, shared_cache) == 0
    check = json.loads((out / "metrics.json").read_text())["label_check"]
    assert check["n_folds"] == 4 and check["n_checked"] == 16 and check["note"] is None


def test_run_with_one_label_per_class_is_one_line_naming_the_need(few_records, shared_cache: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    export = _export(tmp_path / "one.json", few_records, 1)
    assert _run(export, tmp_path / "out", shared_cache) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert "at least 2" in err and not (tmp_path / "out").exists()
