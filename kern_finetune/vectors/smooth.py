"""Neighbour smoothing: each record's fine-tuned vector averaged with those of its nearest records in the
base model's space.

    out_i = normalise((1 - W) * v_i + W * mean(v_j for j in the K nearest records of i by base cosine))

The trained model pulls each class's labeled records together, but may place an unlabeled record (those a
labeler searches from) on the wrong side of a class boundary, turning its whole first screen to the other
class. Its base-space neighbours are mostly of its class and placed independently of it, so the average moves
a misplaced record towards where they went and changes little for the others: one step of feature
propagation over the base model's k-nearest-neighbour graph (as SGC, Wu et al. 2019, or APPNP, Klicpera et
al. 2019), with no labels and no training. ``W`` (``--smooth``) is fixed, or chosen on held-out labels
(:func:`choose_weight`; ``docs/decisions.md``, "smoothing"). A model alone cannot reproduce the smoothed
vectors (they depend on the project's other records), so the model folder gives the unsmoothed ones and a
sync through the model door runs with smoothing off.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from ..subsample import MAX_FIT_RECORDS, fit_sample

if TYPE_CHECKING:
    from ..labels.select import Selection

__all__ = ["Smoothing", "NEIGHBOURS", "MAX_ANCHORS", "WEIGHTS", "nearest_among_anchors", "base_neighbours", "smooth",
           "held_out_queries", "choose_weight", "smooth_vectors"]

NEIGHBOURS = 20
"""K: base-space neighbours averaged per record (``docs/decisions.md``, "smoothing")."""
MAX_ANCHORS = MAX_FIT_RECORDS
"""Neighbours are searched among at most this many records (a seeded sample above it)."""
WEIGHTS = (0.0, 0.5, 0.8)
"""Weights ``--smooth auto`` chooses among."""
MAX_QUERIES = 1000
"""Validation records (seeded sample) that judge the candidate weights, at most."""
MIN_QUERIES = 50
QUERY_QUANTILE = 0.25
"""The least confident quarter of the weak-labeled validation records judges (:func:`held_out_queries`)."""
TOLERANCE = 0.25
"""Points (mean of val_top_10 and val_top_100) a weight may trail the best one by and still be chosen."""


@dataclass
class Smoothing:
    """What the smoothing did: ``metrics.json``'s ``smoothing`` block."""

    weight: float
    chosen: bool
    """True: ``weight`` was chosen on held-out labels (``--smooth auto``); False: fixed by the option."""
    neighbours: int = NEIGHBOURS
    anchors: int = 0
    """Records the neighbours were searched among."""
    table: list[dict[str, float]] = field(default_factory=list)
    """With ``chosen``: every candidate weight's held-out figures (:func:`choose_weight`)."""
    n_queries: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


def nearest_among_anchors(x: np.ndarray, k: int, *, max_anchors: int = MAX_ANCHORS, seed: int = 42,
                          block: int = 2048) -> tuple[np.ndarray, np.ndarray, int]:
    """``(neighbours, similarities, anchors)``: row ``i`` of ``neighbours`` holds the indices (into ``x``) of
    record ``i``'s ``k`` most similar records by dot product, itself excluded, in no particular order; searched
    among ``anchors`` records (all, or a seeded sample of ``max_anchors``), ``block`` rows at a time."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = len(x)
    anchors = fit_sample(n, cap=max_anchors, seed=seed)
    k = min(k, len(anchors) - 1)
    if k < 1:
        return np.zeros((n, 0), dtype=np.int64), np.zeros((n, 0), dtype=np.float32), len(anchors)
    pool = x[anchors]
    out = np.empty((n, k), dtype=np.int64)
    out_sims = np.empty((n, k), dtype=np.float32)
    for start in range(0, n, block):
        rows = np.arange(start, min(start + block, n))
        sims = x[rows] @ pool.T
        pos = np.searchsorted(anchors, rows)  # a row that is itself an anchor is not its own neighbour
        own = (pos < len(anchors)) & (anchors[np.minimum(pos, len(anchors) - 1)] == rows)
        sims[np.flatnonzero(own), pos[own]] = -np.inf
        part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        out[rows] = anchors[part]
        out_sims[rows] = np.take_along_axis(sims, part, axis=1)
    return out, out_sims, len(anchors)


def base_neighbours(base: np.ndarray, *, k: int = NEIGHBOURS, max_anchors: int = MAX_ANCHORS, seed: int = 42,
                    block: int = 2048) -> tuple[np.ndarray, int]:
    """``(neighbours, anchors)`` of :func:`nearest_among_anchors` over the L2-normalised ``base`` vectors."""
    neighbours, _, anchors = nearest_among_anchors(base, k, max_anchors=max_anchors, seed=seed, block=block)
    return neighbours, anchors


def smooth(vectors: np.ndarray, neighbours: np.ndarray, weight: float) -> np.ndarray:
    """``normalise((1 - weight) * vectors + weight * mean(vectors[neighbours]))``, float32; ``weight`` 0 (or
    no neighbours) gives ``vectors`` unchanged."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight must be in [0, 1], got {weight}")
    v = np.asarray(vectors, dtype=np.float32)
    if weight == 0.0 or neighbours.shape[1] == 0:
        return v
    mean = np.zeros_like(v)
    for j in range(neighbours.shape[1]):  # one column at a time: memory of one copy, not k
        mean += v[neighbours[:, j]]
    return _normalise((1.0 - weight) * v + (weight / neighbours.shape[1]) * mean)


def held_out_queries(sel: Selection, *, seed: int = 42) -> np.ndarray:
    """The validation records that judge the weights: the least confident quarter of the weak-labeled ones
    (at most :data:`MAX_QUERIES`, seeded), or every validation record when that leaves fewer than
    :data:`MIN_QUERIES`. ``sel`` is the selection before the label check, which drops the hard records' labels.

    Not every validation record: most are confidently labeled and placed well, where smoothing can only blur
    them; a labeler searches from the records weak supervision was unsure about.
    """
    val = np.asarray(sel.val_idx, dtype=np.int64)
    conf = np.asarray(sel.confidence, dtype=np.float64)[val]
    weak = np.isfinite(conf)
    pool = val
    if weak.any():
        low = val[weak][conf[weak] <= np.quantile(conf[weak], QUERY_QUANTILE)]
        if len(low) >= MIN_QUERIES:
            pool = low
    if len(pool) > MAX_QUERIES:
        pool = np.random.default_rng(seed).choice(pool, size=MAX_QUERIES, replace=False)
    return np.sort(pool)


def choose_weight(vectors: np.ndarray, neighbours: np.ndarray, sel: Selection, *,
                  candidates: tuple[float, ...] = WEIGHTS, seed: int = 42) -> tuple[float, list[dict[str, float]], int]:
    """Choose the smoothing weight on held-out labels, never on gold: ``(weight, table, n_queries)``.

    For each candidate, each query's (:func:`held_out_queries`) 10 and 100 nearest records among **all**
    records are judged on the selected labels of those that have one (``val_top_10`` / ``val_top_100``: the
    share with the query's label); chosen is the largest weight whose mean of the two trails the best by at
    most :data:`TOLERANCE` points. Ties go to smoothing because the held-out queries, confident enough to be
    selected, understate what it does for the hard records (``docs/decisions.md``, "smoothing").
    """
    judge = np.full(len(vectors), -1, dtype=np.int64)
    judge[sel.labeled_idx] = sel.y[sel.labeled_idx]
    queries = held_out_queries(sel, seed=seed)
    table: list[dict[str, float]] = []
    for w in sorted(candidates):
        row = {"weight": float(w)}
        if len(queries) and len(vectors) > 1:
            row.update(_judged_top_k(smooth(vectors, neighbours, w), queries, judge, ks=(10, 100)))
        else:
            row.update(val_top_10=float("nan"), val_top_100=float("nan"))
        table.append(row)
    scores = [(row["val_top_10"] + row["val_top_100"]) / 2.0 for row in table]
    finite = [x for x in scores if np.isfinite(x)]
    if not finite:
        return 0.0, table, len(queries)
    top = max(finite)
    chosen = max(row["weight"] for row, x in zip(table, scores) if np.isfinite(x) and x >= top - TOLERANCE)
    return float(chosen), table, len(queries)


def _judged_top_k(v: np.ndarray, queries: np.ndarray, judge: np.ndarray, *, ks: tuple[int, ...],
                  chunk: int = 256) -> dict[str, float]:
    """Per k: percent of the judged records among each query's k nearest (itself excluded) that share its label."""
    hits = {k: 0 for k in ks}
    known = {k: 0 for k in ks}
    kmax = min(max(ks), len(v) - 1)
    for start in range(0, len(queries), chunk):
        q = queries[start : start + chunk]
        sims = v[q] @ v.T
        sims[np.arange(len(q)), q] = -np.inf
        top = np.argpartition(-sims, kmax - 1, axis=1)[:, :kmax]
        order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1)
        top = np.take_along_axis(top, order, axis=1)
        for k in ks:
            lab = judge[top[:, :k]]
            ok = lab >= 0
            hits[k] += int(((lab == judge[q][:, None]) & ok).sum())
            known[k] += int(ok.sum())
    return {f"val_top_{k}": 100.0 * hits[k] / max(1, known[k]) for k in ks}


def smooth_vectors(vectors: np.ndarray, base: np.ndarray, sel: Selection, *, weight: float | None,
                   seed: int = 42) -> tuple[np.ndarray, Smoothing]:
    """The pipeline's step: smooth ``vectors`` (rows = ``sel.ids``) over ``base``'s neighbours with ``weight``,
    or with the weight :func:`choose_weight` picks when ``weight`` is None."""
    t = time.perf_counter()
    if weight == 0.0:
        return np.asarray(vectors, dtype=np.float32), Smoothing(weight=0.0, chosen=False, neighbours=0)
    neighbours, anchors = base_neighbours(base, seed=seed)
    table: list[dict[str, float]] = []
    n_queries = 0
    chosen = weight is None
    if weight is None:
        weight, table, n_queries = choose_weight(vectors, neighbours, sel, seed=seed)
    out = smooth(vectors, neighbours, weight)
    return out, Smoothing(weight=weight, chosen=chosen, neighbours=neighbours.shape[1], anchors=anchors, table=table,
                          n_queries=n_queries, seconds=round(time.perf_counter() - t, 2))
