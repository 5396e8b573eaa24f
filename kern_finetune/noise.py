"""Find weak labels that are likely wrong, so training can drop or down-weight them.

Confident learning in its simplest form (Northcutt et al., 2021; cleanlab's ``find_label_issues``):
out-of-fold predicted probabilities from a logistic regression on the base vectors; a weak label is
suspicious when the probability of its own class is below that class's threshold (the mean
probability the model gives the class on records labeled with it) **and** another class is more likely.
Manual labels are never flagged: labelers set them on purpose. The gold attribute is never used here.
"""

from __future__ import annotations

import csv
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from .select import Selection

__all__ = ["find_label_issues", "without_label_issues", "write_label_issues"]


def find_label_issues(base: np.ndarray, sel: Selection, *, seed: int = 42, n_folds: int = 5) -> dict[str, Any]:
    """Out-of-fold check of the selected labels.

    Returns ``indices`` (record rows with likely wrong weak labels), ``weights`` (per record: 1, or the
    out-of-fold probability of the given label for flagged rows), ``ids``, ``suggested`` (most likely
    class per flagged row) and counts.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    idx = sel.labeled_idx
    x, y = base[idx], sel.y[idx]
    n_classes = len(sel.classes)
    proba = np.zeros((len(idx), n_classes))
    folds = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for fit, held in folds.split(x, y):
        clf = LogisticRegression(max_iter=2000, C=1.0, random_state=seed).fit(x[fit], y[fit])
        proba[np.ix_(held, clf.classes_)] = clf.predict_proba(x[held])
    given = proba[np.arange(len(idx)), y]
    thresholds = np.array([given[y == c].mean() if np.any(y == c) else 1.0 for c in range(n_classes)])
    weak = np.array([sel.source[i] == "weak" for i in idx])
    suspicious = weak & (given < thresholds[y]) & (proba.argmax(1) != y)
    rows = idx[suspicious]
    weights = np.ones(len(sel.ids), dtype=np.float32)
    weights[rows] = given[suspicious].astype(np.float32)
    suggested = proba[suspicious].argmax(1)
    return {
        "indices": rows,
        "weights": weights,
        "ids": [sel.ids[i] for i in rows],
        "given": [sel.classes[sel.y[i]] for i in rows],
        "suggested": [sel.classes[c] for c in suggested],
        "probability_given": given[suspicious].round(4).tolist(),
        "n_checked": int(len(idx)),
        "n_flagged": int(len(rows)),
        "oof_accuracy": float(100.0 * (proba.argmax(1) == y).mean()),
    }


def without_label_issues(sel: Selection, found: dict[str, Any]) -> Selection:
    """A copy of ``sel`` whose training and validation rows leave out ``found``'s flagged rows.

    ``found`` is :func:`find_label_issues`'s result. The dropped rows also leave ``labeled_idx``, so the
    linear probe is fitted on the remaining labels too; ``sel`` itself is not changed.
    """
    keep = np.ones(len(sel.ids), dtype=bool)
    keep[found["indices"]] = False
    return replace(sel, train_idx=sel.train_idx[keep[sel.train_idx]], val_idx=sel.val_idx[keep[sel.val_idx]])


def write_label_issues(path: Path, issues: dict[str, Any]) -> None:
    """CSV for labelers to review: id, given label, suggested label, probability of the given label."""
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["record_id", "given_label", "suggested_label", "probability_given"])
        w.writerows(zip(issues["ids"], issues["given"], issues["suggested"], issues["probability_given"]))
    tmp.replace(path)
