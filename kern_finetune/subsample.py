"""Seeded, capped samples for the stages that fit a model on the records: the label check, the pseudo-labels
and the 2D views fit on at most :data:`MAX_FIT_RECORDS` records, then predict (or project) every record, so the
fit's cost stays constant and the prediction linear. Each stage says when it sampled.
"""

from __future__ import annotations

import numpy as np

__all__ = ["MAX_FIT_RECORDS", "MIN_PER_CLASS", "fit_sample"]

MAX_FIT_RECORDS = 20_000
"""At most this many records fit a stage's model."""
MIN_PER_CLASS = 50
"""A sampled class keeps at least this many of its records (all of them when it has fewer), so a rare
class stays learnable when the sample is drawn in proportion to the class sizes."""


def fit_sample(n: int, *, labels: np.ndarray | None = None, cap: int = MAX_FIT_RECORDS, seed: int = 42) -> np.ndarray:
    """Sorted positions ``0..n-1`` to fit on: all of them when ``n <= cap``, else a seeded sample of about ``cap``.

    With ``labels`` (one class per position) the sample is stratified: each class keeps its share of
    ``cap``, and at least :data:`MIN_PER_CLASS` (or all) of its records, so the total may exceed ``cap``
    by at most ``MIN_PER_CLASS`` per class.
    """
    if cap < 1:
        raise ValueError(f"cap must be at least 1, got {cap}")
    if n <= cap:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    if labels is None:
        return np.sort(rng.choice(n, size=cap, replace=False))
    labels = np.asarray(labels)
    if len(labels) != n:
        raise ValueError(f"labels has {len(labels)} entries for {n} positions")
    keep = []
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        take = max(min(len(rows), MIN_PER_CLASS), int(cap * len(rows) // n))
        keep.append(rng.permutation(rows)[:take])
    return np.sort(np.concatenate(keep))
