"""Self-training: give confident predicted labels to records that have none, for training only.

A logistic regression on the base vectors, fitted on the selected labels (after the label check), predicts a
class for every unlabeled record; those predicted with probability above a threshold join the *training*
rows with that class. The gold is never used, validation rows stay labeled ones, and evaluation still reads
the original :class:`~kern_finetune.labels.select.Selection`. The encoder learns from the unlabeled records'
own texts; a head over frozen vectors gains nothing measurable, so ``--pseudo-labels auto`` turns it on in
full mode only (``docs/decisions.md``, "pseudo-labels"). On a large project the regression is fitted on a
seeded, stratified sample (:func:`kern_finetune.subsample.fit_sample`).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import numpy as np

from .select import Selection
from ..subsample import MAX_FIT_RECORDS, fit_sample

log = logging.getLogger(__name__)
_PREDICT_BLOCK = 65536

__all__ = ["find_pseudo_labels", "with_pseudo_labels"]


def find_pseudo_labels(base: np.ndarray, sel: Selection, *, threshold: float, seed: int = 42,
                       max_fit: int = MAX_FIT_RECORDS) -> dict[str, Any]:
    """Predict a class for each unlabeled record with text (``sel.y < 0``) from ``base`` (one row per record),
    fitted on ``sel``'s labels (a seeded sample of about ``max_fit`` when there are more); keep the predictions
    whose probability is strictly above ``threshold``.

    Returns ``indices`` (record rows), ``labels`` (class index per row), ``probability`` (of that class),
    ``n_candidates`` (unlabeled records with text), ``threshold`` and ``n_fit`` (labels fitted on).
    """
    from sklearn.linear_model import LogisticRegression

    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")
    labeled = sel.labeled_idx
    candidates = np.flatnonzero((sel.y < 0) & np.array([bool(t) for t in sel.texts]))
    empty: dict[str, Any] = {"indices": candidates[:0], "labels": np.zeros(0, dtype=np.int64),
                             "probability": np.zeros(0, dtype=np.float32), "n_candidates": int(len(candidates)),
                             "threshold": threshold, "n_fit": 0}
    if len(candidates) == 0 or len(np.unique(sel.y[labeled])) < 2:
        return empty
    fit = labeled[fit_sample(len(labeled), labels=sel.y[labeled], cap=max_fit, seed=seed)]
    if len(fit) < len(labeled):
        log.info("pseudo-labels: fitted on a seeded sample of %d of %d labels (max_fit %d)", len(fit), len(labeled), max_fit)
    clf = LogisticRegression(max_iter=2000, random_state=seed).fit(base[fit], sel.y[fit])
    best = np.empty(len(candidates))
    pick = np.empty(len(candidates), dtype=np.int64)
    for start in range(0, len(candidates), _PREDICT_BLOCK):
        proba = clf.predict_proba(base[candidates[start : start + _PREDICT_BLOCK]])
        best[start : start + len(proba)] = proba.max(axis=1)
        pick[start : start + len(proba)] = proba.argmax(axis=1)
    keep = best > threshold
    return {
        "indices": candidates[keep],
        "labels": clf.classes_[pick][keep].astype(np.int64),
        "probability": best[keep].astype(np.float32),
        "n_candidates": int(len(candidates)),
        "threshold": threshold,
        "n_fit": int(len(fit)),
    }


def with_pseudo_labels(sel: Selection, found: dict[str, Any]) -> Selection:
    """A copy of ``sel`` for training: ``found``'s rows added to ``train_idx`` with their predicted labels (``sel``
    is not changed: evaluation, the label fingerprint and the linear probe see only the project's own labels)."""
    y = sel.y.copy()
    y[found["indices"]] = found["labels"]
    return replace(sel, y=y, train_idx=np.sort(np.concatenate([sel.train_idx, found["indices"]])))
