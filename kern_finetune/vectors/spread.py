"""Search spread: give every record a full result list under refinery's search threshold.

Refinery returns a record's nearest records only within one distance per embedding, the 5th percentile of
pairwise distances among 500 sampled records (:func:`kern_finetune.refinery.search.threshold_search`).
Training packs the labeled records of a class into tight cores and leaves the unlabeled ones sparser around
them, so many searches from unlabeled records come back short. The spread changes distances, not directions:
each record's local radius ``r_i`` (its distance to its ``m``-th nearest record, ``m`` the search's 100 or
fewer, log-averaged over it and its 10 nearest) sets ``rho_i = exp(-S * (log r_i - median log r))``, which
shrinks sparse regions and dilates dense ones (``S`` = 1 equalises them). To keep the written vectors
L2-normalised, the scaled vectors are lifted onto the unit sphere of one more dimension,
``y_i = [rho_i * v_i, sqrt(R^2 - rho_i^2)] / R`` with ``R = max rho``; between records of similar density the
extra term is small, so each record's nearest records keep their order up to the scaling.

``--spread auto`` chooses ``S`` on searches, reading no label (:func:`choose_strength`). A model cannot
reproduce the lifted vectors, so a sync through the model door runs with ``--spread 0``.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..refinery.search import SEARCH_LIMIT, sample_queries, threshold_search
from .smooth import MAX_ANCHORS, nearest_among_anchors
from ..subsample import fit_sample

__all__ = ["Spread", "STRENGTHS", "RADIUS_NEIGHBOURS", "ALLOWED_10", "MARGIN_10", "MARGIN_100", "local_radius",
           "lift", "within_margins", "choose_strength", "spread_vectors"]

STRENGTHS = tuple(round(0.1 * i, 1) for i in range(16))
"""Strengths ``--spread auto`` chooses among, smallest first: fine steps, as every step past the smallest
that keeps lists full costs top_k."""
RADIUS_NEIGHBOURS = 10
"""A record's log radius is averaged with that of its this many nearest records (:func:`local_radius`)."""
ALLOWED_10 = 2.0
"""Points by which a new embedding's share of searches with fewer than 10 results may exceed the raw
embedding's before a labeler is worse off: what the verdict allows (:mod:`kern_finetune.evaluation.verdict`)."""
MARGIN_10 = ALLOWED_10 / 2
"""The same margin for the choosers that pick on a sample of searches (the spread's strength, the model door's
base share): half the allowance, so what they choose stays within it on other searches."""
MARGIN_100 = 5.0
"""The same for fewer than 100 results (the issue allows 10)."""
MAX_QUERIES = 1000
"""Records (a seeded sample of all of them) whose searches judge the strengths."""


@dataclass
class Spread:
    """What the spread did: ``metrics.json``'s ``spread`` block."""

    strength: float
    chosen: bool
    """True: ``strength`` was chosen on the searches (``--spread auto``); False: fixed by the option."""
    radius_rank: int = 0
    """``m``: the neighbour whose distance is a record's local radius."""
    anchors: int = 0
    table: list[dict[str, float]] = field(default_factory=list)
    """With ``chosen``: each candidate's share of short result lists, smallest first, up to the one chosen."""
    raw: dict[str, float] = field(default_factory=dict)
    """With ``chosen``: the same searches on the base vectors, the reference."""
    n_queries: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def local_radius(vectors: np.ndarray, *, max_anchors: int = MAX_ANCHORS, seed: int = 42) -> tuple[np.ndarray, int, int]:
    """``(log_radius, m, anchors)``: per record, the log of its Euclidean distance to its ``m``-th nearest
    record, averaged with its :data:`RADIUS_NEIGHBOURS` nearest records' (so neighbours scale alike). ``m`` is
    the search's 100 scaled to the anchor sample, at most a twentieth of it (a record has a twentieth of the
    project within the 5th-percentile threshold on average). ``vectors`` rows are L2-normalised."""
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    n = len(x)
    if n < 3:
        return np.zeros(n), 0, n
    pool = len(fit_sample(n, cap=max_anchors, seed=seed))
    m = int(max(1, min(round(SEARCH_LIMIT * pool / n), pool // 20)))
    k = max(m, min(RADIUS_NEIGHBOURS, pool - 1))
    idx, sims, anchors = nearest_among_anchors(x, k, max_anchors=max_anchors, seed=seed)
    order = np.argsort(-sims, axis=1)
    sims = np.take_along_axis(sims, order, axis=1)
    idx = np.take_along_axis(idx, order, axis=1)
    m = min(m, sims.shape[1])
    radius = np.sqrt(np.clip(2.0 - 2.0 * sims[:, m - 1].astype(np.float64), 1e-12, None))
    log_r = np.log(radius)
    near = idx[:, :RADIUS_NEIGHBOURS]
    smoothed = (log_r + log_r[near].sum(axis=1)) / (1 + near.shape[1])
    return smoothed, m, anchors


def lift(vectors: np.ndarray, log_radius: np.ndarray, strength: float) -> np.ndarray:
    """Scale each row by ``exp(-strength * (log_radius - median))`` and lift it onto the unit sphere of one
    more dimension (float32, L2-normalised); ``strength`` 0 gives ``vectors`` unchanged (no extra dimension)."""
    if strength < 0:
        raise ValueError(f"strength must be >= 0, got {strength}")
    v = np.asarray(vectors, dtype=np.float32)
    if strength == 0.0 or len(v) == 0:
        return v
    lr = np.asarray(log_radius, dtype=np.float64)
    rho = np.exp(-strength * (lr - np.median(lr)))
    r_max = float(rho.max())
    height = np.sqrt(np.clip(r_max**2 - rho**2, 0.0, None))
    out = np.hstack([v.astype(np.float64) * rho[:, None], height[:, None]]) / r_max
    return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)


def _short_lists(vectors: np.ndarray, queries: np.ndarray, seed: int) -> dict[str, float]:
    unknown = np.full(len(vectors), -1, dtype=np.int64)
    found = threshold_search(vectors, queries, unknown, seed=seed)
    return {"lt_10": found["lt_10"], "lt_100": found["lt_100"], "median_results": found["median_results"]}


def within_margins(short: dict[str, float], raw: dict[str, float]) -> bool:
    """True when searches' short lists (``lt_10``, ``lt_100``) are within :data:`MARGIN_10` /
    :data:`MARGIN_100` points of the raw vectors' on the same searches: the rule ``--spread auto`` keeps."""
    return short["lt_10"] <= raw["lt_10"] + MARGIN_10 and short["lt_100"] <= raw["lt_100"] + MARGIN_100


def choose_strength(vectors: np.ndarray, base: np.ndarray, log_radius: np.ndarray, *,
                    candidates: tuple[float, ...] = STRENGTHS,
                    seed: int = 42) -> tuple[float, list[dict[str, float]], dict[str, float], int]:
    """Choose the strength without labels: ``(strength, table, raw, n_queries)``; ``raw``: the base vectors'
    short lists on the same searches.

    Each candidate's vectors and the base vectors are searched as refinery searches from a seeded sample of
    up to :data:`MAX_QUERIES` records; the smallest strength :func:`within_margins` of the base vectors wins
    (``table`` holds the candidates searched up to it); when none fits, the one with the fewest searches under
    10 results (then under 100; ties to the smaller). Figures: ``docs/decisions.md``, "spread".
    """
    queries = sample_queries(len(vectors), MAX_QUERIES, seed)
    raw = _short_lists(base, queries, seed)
    rows: list[dict[str, float]] = []
    for s in sorted(candidates):
        row = {"strength": float(s), **_short_lists(lift(vectors, log_radius, s), queries, seed)}
        rows.append(row)
        if within_margins(row, raw):
            return row["strength"], rows, raw, len(queries)  # the smallest that fits: larger ones cannot win
    best = min(rows, key=lambda r: (r["lt_10"], r["lt_100"], r["strength"]))
    return best["strength"], rows, raw, len(queries)


def spread_vectors(vectors: np.ndarray, base: np.ndarray, *, strength: float | None,
                   seed: int = 42) -> tuple[np.ndarray, Spread]:
    """The pipeline's step: lift ``vectors`` (rows as ``base``'s) with ``strength``, or with the strength
    :func:`choose_strength` picks when ``strength`` is None."""
    t = time.perf_counter()
    if strength == 0.0 or len(vectors) < 3:
        return np.asarray(vectors, dtype=np.float32), Spread(strength=0.0, chosen=False)
    log_radius, m, anchors = local_radius(vectors, seed=seed)
    table: list[dict[str, float]] = []
    raw: dict[str, float] = {}
    n_queries = 0
    chosen = strength is None
    if strength is None:
        strength, table, raw, n_queries = choose_strength(vectors, base, log_radius, seed=seed)
    out = lift(vectors, log_radius, strength)
    return out, Spread(strength=strength, chosen=chosen, radius_rank=m, anchors=anchors, table=table, raw=raw,
                       n_queries=n_queries, seconds=round(time.perf_counter() - t, 2))
