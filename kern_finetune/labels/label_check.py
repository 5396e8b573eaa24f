"""Find weak labels that are likely wrong, so training can drop them.

Confident learning in its simplest form (Northcutt et al. 2021): out-of-fold predicted probabilities from a
logistic regression on the base vectors; a weak label is suspicious when the probability of its own class is
below that class's threshold (the mean probability the model gives the class on records labeled with it)
**and** another class is more likely: the labels cleanlab's ``find_label_issues(filter_by="predicted_neq_given")``
flags, without cleanlab (``docs/decisions.md``, "label check"). Manual labels are never flagged: labelers set
them on purpose. The gold attribute is never used here.

Few labels are normal (a new project): the folds are at most as many as the smallest checked class has
labels, classes with fewer than :data:`MIN_LABELS_TO_CHECK` labels are not checked, and with no weak labels,
or fewer than two checkable classes, nothing is (``note`` says why). On a large project the folds'
classifiers are fitted on a seeded, stratified sample (:func:`kern_finetune.subsample.fit_sample`), and every
label outside it gets the mean of their probabilities, which is out of sample too.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from .select import Selection
from ..subsample import MAX_FIT_RECORDS, fit_sample

log = logging.getLogger(__name__)

__all__ = ["find_label_issues", "without_label_issues", "write_label_issues", "MIN_LABELS_TO_CHECK", "LABEL_ISSUE_COLUMNS"]


_PREDICT_BLOCK = 65536
MIN_LABELS_TO_CHECK = 3
"""A class with fewer labels than this is not checked: its labels are never flagged (they still train the
out-of-fold classifiers). A new project's classes often have only a few labels."""


def find_label_issues(base: np.ndarray, sel: Selection, *, seed: int = 42, n_folds: int = 5,
                      max_fit: int = MAX_FIT_RECORDS) -> dict[str, Any]:
    """Out-of-fold check of the selected labels.

    Returns ``indices`` (record rows with likely wrong weak labels), ``ids``, ``given``, ``suggested`` (the
    most likely class), ``probability_given``, ``texts``, ``sources`` and ``confidence`` per flagged row;
    ``n_checked`` (labels that got an out-of-fold prediction), ``n_flagged``, ``n_folds`` (folds used),
    ``unchecked_classes``, ``note`` (why nothing was checked, else None), ``oof_accuracy``, ``n_fit`` (labels
    the classifiers were fitted on: all, or about ``max_fit``), and per row of ``sel.labeled_idx``:
    ``pred_probs`` (the out-of-fold class probabilities) and ``checked`` (whether the row got them).
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    idx = sel.labeled_idx
    x, y = base[idx], sel.y[idx]
    n_classes = len(sel.classes)
    counts = np.bincount(y, minlength=n_classes)
    checkable = counts >= MIN_LABELS_TO_CHECK
    unchecked = [sel.classes[c] for c in range(n_classes) if 0 < counts[c] < MIN_LABELS_TO_CHECK]
    weak = np.array([sel.source[i] == "weak" for i in idx], dtype=bool)
    note = None
    if not weak.any():
        note = "no weak labels to check (manual labels are never flagged)"
    elif checkable.sum() < 2:
        note = f"fewer than 2 classes have {MIN_LABELS_TO_CHECK} or more labels"
    if note is not None:
        return _result(sel, idx, np.zeros(len(idx), dtype=bool), np.zeros((len(idx), n_classes)), n_folds=0,
                       unchecked=[sel.classes[c] for c in range(n_classes) if counts[c] > 0], note=note, n_fit=0)

    # rows of classes too small to check are held out of the folds: they train every fold's classifier
    in_cv = np.flatnonzero(checkable[y])
    always_fit = np.flatnonzero(~checkable[y])
    rest = in_cv[:0]  # checked labels outside a capped fit: predicted by every fold's classifier
    if len(in_cv) + len(always_fit) > max_fit:
        keep = fit_sample(len(in_cv), labels=y[in_cv], cap=max(max_fit - len(always_fit), 1), seed=seed)
        rest = np.setdiff1d(in_cv, in_cv[keep])
        in_cv = in_cv[keep]
        log.info("label check: fitted on a seeded sample of %d of %d labels (max_fit %d); the other %d are "
                 "predicted out of sample", len(in_cv) + len(always_fit), len(idx), max_fit, len(rest))
    folds_used = int(min(n_folds, np.bincount(y[in_cv], minlength=n_classes)[checkable].min()))
    proba = np.zeros((len(idx), n_classes))
    folds = StratifiedKFold(n_splits=folds_used, shuffle=True, random_state=seed)
    for fit, held in folds.split(x[in_cv], y[in_cv]):
        fit_rows = np.concatenate([in_cv[fit], always_fit])
        held_rows = in_cv[held]
        clf = LogisticRegression(max_iter=2000, C=1.0, random_state=seed).fit(x[fit_rows], y[fit_rows])
        proba[np.ix_(held_rows, clf.classes_)] = clf.predict_proba(x[held_rows])
        for start in range(0, len(rest), _PREDICT_BLOCK):
            rows = rest[start : start + _PREDICT_BLOCK]
            proba[np.ix_(rows, clf.classes_)] += clf.predict_proba(x[rows]) / folds_used
    checked = np.zeros(len(idx), dtype=bool)
    checked[np.concatenate([in_cv, rest])] = True
    return _result(sel, idx, checked, proba, n_folds=folds_used, unchecked=unchecked, note=None,
                   n_fit=int(len(in_cv) + len(always_fit)))


def _result(sel: Selection, idx: np.ndarray, checked: np.ndarray, proba: np.ndarray, *,
            n_folds: int, unchecked: list[str], note: str | None, n_fit: int) -> dict[str, Any]:
    """Flag checked weak labels whose own class is less likely than its threshold and not the most likely."""
    y = sel.y[idx]
    n_classes = len(sel.classes)
    given = proba[np.arange(len(idx)), y]
    thresholds = np.array([given[checked & (y == c)].mean() if np.any(checked & (y == c)) else 1.0
                           for c in range(n_classes)])
    weak = np.array([sel.source[i] == "weak" for i in idx], dtype=bool)
    suspicious = checked & weak & (given < thresholds[y]) & (proba.argmax(1) != y)
    rows = idx[suspicious]
    suggested = proba[suspicious].argmax(1)
    return {
        "indices": rows,
        "ids": [sel.ids[i] for i in rows],
        "given": [sel.classes[sel.y[i]] for i in rows],
        "suggested": [sel.classes[c] for c in suggested],
        "probability_given": given[suspicious].round(4).tolist(),
        "texts": [sel.texts[i] for i in rows],
        "sources": [sel.source[i] for i in rows],
        "confidence": [None if np.isnan(sel.confidence[i]) else round(float(sel.confidence[i]), 4) for i in rows],
        "n_checked": int(checked.sum()),
        "n_flagged": int(len(rows)),
        "n_folds": n_folds,
        "unchecked_classes": unchecked,
        "note": note,
        "pred_probs": proba,
        "checked": checked,
        "oof_accuracy": float(100.0 * (proba[checked].argmax(1) == y[checked]).mean()) if checked.any() else None,
        "n_fit": n_fit,
    }


def without_label_issues(sel: Selection, found: dict[str, Any]) -> Selection:
    """A copy of ``sel`` whose training and validation rows (so ``labeled_idx``, which the linear probe fits on)
    leave out the rows :func:`find_label_issues` flagged."""
    keep = np.ones(len(sel.ids), dtype=bool)
    keep[found["indices"]] = False
    return replace(sel, train_idx=sel.train_idx[keep[sel.train_idx]], val_idx=sel.val_idx[keep[sel.val_idx]])


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _csv_cell(value: Any) -> Any:
    """A text cell a spreadsheet would run as a formula (starting with ``= + - @``, tab or CR) gets a leading
    ``'``, as OWASP's CSV-injection advice says; numbers stay as they are."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


LABEL_ISSUE_COLUMNS = ("record_id", "given_label", "suggested_label", "probability_given", "source", "confidence",
                       "text")
"""``label_issues.csv``'s header: ``source`` is where the label came from (``weak``: weak supervision; manual
labels are never flagged), ``confidence`` the weak label's confidence, ``text`` the record's text as embedded."""


def write_label_issues(path: Path, issues: dict[str, Any]) -> None:
    """CSV for labelers to review, one row per flagged label (:data:`LABEL_ISSUE_COLUMNS`), formula-like text
    cells neutralised; a result without ``texts``, ``sources`` or ``confidence`` leaves those cells empty."""
    n = len(issues["ids"])
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(LABEL_ISSUE_COLUMNS)
        for row in zip(issues["ids"], issues["given"], issues["suggested"], issues["probability_given"],
                       issues.get("sources") or [""] * n, issues.get("confidence") or [""] * n,
                       issues.get("texts") or [""] * n):
            w.writerow([_csv_cell("" if v is None else v) for v in row])
    tmp.replace(path)
