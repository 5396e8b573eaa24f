"""Tests for kern_finetune.labels.label_check: the label check on real vectors of the bundled sample's subset."""

from __future__ import annotations

import csv
import dataclasses
from pathlib import Path

import numpy as np
import pytest

from kern_finetune.labels.label_check import find_label_issues, without_label_issues, write_label_issues
from kern_finetune.labels.select import Selection



@pytest.fixture(scope="module")
def flipped(subset_sel: Selection) -> tuple[Selection, np.ndarray]:
    """The subset's selection with 15 weak training labels moved to the next class (known wrong labels)."""
    sel = subset_sel
    weak = np.array([i for i in sel.train_idx if sel.source[i] == "weak"])
    rows = np.random.default_rng(0).choice(weak, size=15, replace=False)
    y = sel.y.copy()
    y[rows] = (y[rows] + 1) % len(sel.classes)
    return dataclasses.replace(sel, y=y), np.sort(rows)


def test_flipped_weak_labels_are_found(flipped: tuple[Selection, np.ndarray], subset_base: np.ndarray) -> None:
    sel, rows = flipped
    found = find_label_issues(subset_base, sel, seed=0)
    hits = np.isin(rows, found["indices"])
    assert hits.mean() >= 0.6, f"only {hits.sum()} of {len(rows)} flipped labels flagged"
    # Flagged rows are a small share of the checked labels, not everything that disagrees a little.
    assert found["n_flagged"] == len(found["indices"]) < 0.25 * found["n_checked"]
    assert found["n_checked"] == len(sel.labeled_idx)
    # every class has plenty of labels here: five folds, nothing skipped, and every row got probabilities
    assert found["n_folds"] == 5 and found["unchecked_classes"] == [] and found["note"] is None
    assert found["pred_probs"].shape == (len(sel.labeled_idx), len(sel.classes)) and found["checked"].all()
    assert np.allclose(found["pred_probs"].sum(1), 1.0)
    # The report a labeler reviews: ids, given and suggested labels line up with the rows.
    for i, rid, given, suggested in zip(found["indices"], found["ids"], found["given"], found["suggested"], strict=True):
        assert rid == sel.ids[i] and given == sel.classes[sel.y[i]] and suggested != given
    assert (np.array(found["probability_given"]) < 0.5).all()  # their own label is the less likely one


def test_manual_labels_are_never_flagged(flipped: tuple[Selection, np.ndarray], subset_base: np.ndarray) -> None:
    sel, rows = flipped
    as_manual = dataclasses.replace(sel, source=["manual" if i in set(rows.tolist()) else s for i, s in enumerate(sel.source)])
    found = find_label_issues(subset_base, as_manual, seed=0)
    assert not set(found["indices"].tolist()) & set(rows.tolist())
    assert all(as_manual.source[i] == "weak" for i in found["indices"])


def test_gold_is_not_used(subset_sel: Selection, subset_base: np.ndarray) -> None:
    blind = dataclasses.replace(subset_sel, gold=[None] * len(subset_sel.gold))
    a, b = find_label_issues(subset_base, subset_sel, seed=0), find_label_issues(subset_base, blind, seed=0)
    assert np.array_equal(a["indices"], b["indices"])


def test_without_label_issues_returns_a_copy(flipped: tuple[Selection, np.ndarray], subset_base: np.ndarray) -> None:
    sel, _ = flipped
    train_before, val_before = sel.train_idx.copy(), sel.val_idx.copy()
    found = find_label_issues(subset_base, sel, seed=0)
    clean = without_label_issues(sel, found)
    assert np.array_equal(sel.train_idx, train_before) and np.array_equal(sel.val_idx, val_before)  # untouched
    assert not set(clean.labeled_idx.tolist()) & set(found["indices"].tolist())
    assert len(clean.labeled_idx) == len(sel.labeled_idx) - len(found["indices"])
    assert np.array_equal(clean.test_idx, sel.test_idx) and np.array_equal(clean.y, sel.y)


def test_write_label_issues(flipped: tuple[Selection, np.ndarray], subset_base: np.ndarray, tmp_path: Path) -> None:
    found = find_label_issues(subset_base, flipped[0], seed=0)
    path = tmp_path / "label_issues.csv"
    write_label_issues(path, found)
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["record_id", "given_label", "suggested_label", "probability_given", "source", "confidence",
                       "text"]
    assert [r[0] for r in rows[1:]] == found["ids"]
    sel = flipped[0]
    for r, i in zip(rows[1:], found["indices"]):  # a labeler reads the record and where its label came from
        assert r[4] == "weak" and float(r[5]) == pytest.approx(sel.confidence[i], abs=1e-4)
        assert r[6].lstrip("'") == sel.texts[i]
    assert [p.name for p in tmp_path.iterdir()] == ["label_issues.csv"]  # no temp file left behind


def test_a_capped_fit_still_checks_every_label(flipped: tuple[Selection, np.ndarray], subset_base: np.ndarray) -> None:
    """A large project fits the folds on a sample; the labels outside it are predicted out of sample."""
    sel, rows = flipped
    full = find_label_issues(subset_base, sel, seed=0)
    capped = find_label_issues(subset_base, sel, seed=0, max_fit=300)
    assert full["n_fit"] == len(sel.labeled_idx) and full["n_checked"] == len(sel.labeled_idx)
    assert 300 <= capped["n_fit"] < len(sel.labeled_idx)
    assert capped["n_checked"] == len(sel.labeled_idx) and capped["checked"].all()
    assert np.allclose(capped["pred_probs"].sum(1), 1.0)
    assert np.isin(rows, capped["indices"]).mean() >= 0.5  # still finds most flipped labels
    assert capped["oof_accuracy"] > 80
