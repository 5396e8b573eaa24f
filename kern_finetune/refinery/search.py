"""Refinery's similarity search, replayed once for every caller: the threshold, the 100 results, the queries.

Read in refinery's public sources (refinery-gateway v1.17.0, refinery-neural-search):

- ``controller/record/manager.py`` ``get_records_by_similarity_search`` asks the neural search for the
  :data:`SEARCH_LIMIT` (100) records most similar to the query record;
- refinery-neural-search ``neural_search/util.py`` ``most_similar_by_embedding`` searches the embedding's
  Qdrant collection by **Euclidean** distance with ``score_threshold`` = the embedding's similarity threshold,
  so only records within that distance come back, the query record itself among them (distance 0);
- ``neural_search/similarity_threshold.py`` ``calculate_threshold``: the :data:`THRESHOLD_PERCENTILE` (5th)
  percentile of the pairwise Euclidean distances among a random sample of up to :data:`THRESHOLD_SAMPLE`
  (500) of the embedding's records.

Refinery samples with Python's unseeded ``random``; here the sample is seeded so a figure is reproducible.
The evaluation, the verdict, the spread, the base share, the report and the local host all search through
this module. numpy only.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

__all__ = ["SEARCH_LIMIT", "THRESHOLD_PERCENTILE", "THRESHOLD_SAMPLE", "FIRST_SCREEN", "sample_queries",
           "similarity_threshold", "threshold_search", "keep_best"]

SEARCH_LIMIT = 100
"""Records the data browser's similarity search asks for (``get_records_by_similarity_search``)."""
THRESHOLD_PERCENTILE = 5.0
"""``calculate_threshold(percentile=5)``."""
THRESHOLD_SAMPLE = 500
"""``calculate_threshold(limit=500)``: at most this many records are sampled for the pairwise distances."""
FIRST_SCREEN = 10
"""Records on a labeling session's first screen, the query included."""


def sample_queries(n: int, n_queries: int, seed: int) -> np.ndarray:
    """``n_queries`` of ``n`` rows as query records, seeded, in row order."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=min(n_queries, n), replace=False))



def similarity_threshold(vectors: np.ndarray, *, seed: int | str = 42, limit: int = THRESHOLD_SAMPLE,
                         percentile: float = THRESHOLD_PERCENTILE) -> float:
    """Refinery's search threshold for ``vectors`` (at least 2 rows): a Euclidean distance.

    ``calculate_threshold``, ``get_scores``: a random sample of up to ``limit`` records, their pairwise
    Euclidean distances (upper triangle), the ``percentile`` of them. ``seed`` (an int, or a string such
    as an embedding version id) fixes the sample.
    """
    x = np.asarray(vectors, dtype=np.float64)
    if isinstance(seed, str):
        seed = int.from_bytes(hashlib.sha256(seed.encode("utf-8")).digest()[:8], "little")
    rng = np.random.default_rng(seed)
    sample = x if len(x) <= limit else x[rng.choice(len(x), size=limit, replace=False)]
    sq = (sample**2).sum(1)
    d2 = sq[:, None] + sq[None, :] - 2.0 * sample @ sample.T
    iu = np.triu_indices(len(sample), 1)
    distances = np.sqrt(np.clip(d2[iu], 0.0, None))
    return float(np.percentile(distances, percentile))


def threshold_search(
    vectors: np.ndarray,
    queries: np.ndarray,
    classes: np.ndarray,
    *,
    threshold: float | None = None,
    limit: int = SEARCH_LIMIT,
    seed: int = 42,
    chunk: int = 256,
    block: int = 16384,
    per_query: bool = False,
) -> dict[str, Any]:
    """Search every query as refinery's data browser does, and judge what comes back.

    ``vectors`` are **all** records of the project (refinery searches the whole embedding, labeled and
    unlabeled); ``queries`` are row indices into them; ``classes`` (one int per row, ``-1`` = unknown)
    judge the results. Per query, the result is the ``limit`` (100) nearest rows by Euclidean distance
    whose distance is within ``threshold`` (default: :func:`similarity_threshold` of ``vectors``), the
    query itself included (distance 0), as refinery-neural-search ``neural_search/util.py``
    (``most_similar_by_embedding``: Qdrant search with ``limit`` and ``score_threshold``) and
    refinery-gateway ``controller/record/manager.py`` (``get_records_by_similarity_search``, limit 100).

    Returns, in percent unless named otherwise: ``lt_10`` / ``lt_100`` (share of queries with fewer than
    10 / 100 results, the query counted), ``same_class`` (over all queries' returned rows other than the
    query whose class is known, the share with the query's class; queries of unknown class are skipped),
    ``median_results``, ``first_screen_same`` (a count, not a percent: how many of the records shown after
    the query on a first screen of :data:`FIRST_SCREEN` are of its class, on average over queries of known
    class; the share among those of known class times the number shown, so a search that returns 3 records
    shows at most 2), ``threshold`` (the distance) and ``n_queries``; with ``per_query`` also ``per_query``:
    per query ``results`` (the query counted), ``same`` / ``judged`` (returned rows of its class / of known
    class) and ``screen`` (nan where not counted), for resampling (:mod:`kern_finetune.evaluation.verdict`).

    Rows are scanned ``block`` at a time for ``chunk`` queries at a time (running ``limit`` nearest), so
    memory stays bounded and time is queries x records.
    """
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    q = np.asarray(queries, dtype=np.int64)
    classes = np.asarray(classes)
    thr = similarity_threshold(x, seed=seed) if threshold is None else float(threshold)
    sq = (x.astype(np.float64) ** 2).sum(1)
    counts = np.empty(len(q), dtype=np.int64)
    same_q, judged_q, screen_q = np.zeros(len(q), dtype=np.int64), np.zeros(len(q), dtype=np.int64), np.full(len(q), np.nan)
    k = min(limit, x.shape[0])
    for start in range(0, len(q), chunk):
        qi = q[start : start + chunk]
        nearest, d2 = _nearest_euclidean(x, sq, qi, k, block=block)
        dist = np.sqrt(np.clip(d2, 0.0, None))
        dist[nearest == qi[:, None]] = 0.0  # the query is its own nearest result (distance 0)
        for row, (query, idx) in enumerate(zip(qi, nearest)):
            inside = dist[row] <= thr
            hit = idx[inside][np.argsort(dist[row][inside], kind="stable")]
            counts[start + row] = len(hit)
            others = hit[hit != query]
            if classes[query] < 0:
                continue
            known = classes[others]
            known = known[known >= 0]
            judged_q[start + row] = len(known)
            same_q[start + row] = int((known == classes[query]).sum())
            first = classes[others[: FIRST_SCREEN - 1]]  # the first screen: the query and the 9 after it
            first = first[first >= 0]
            if len(first):
                screen_q[start + row] = min(len(others), FIRST_SCREEN - 1) * float((first == classes[query]).mean())
            elif len(others) == 0:
                screen_q[start + row] = 0.0
    judged, screened = int(judged_q.sum()), screen_q[~np.isnan(screen_q)]
    out: dict[str, Any] = {
        "lt_10": float(100.0 * (counts < 10).mean()),
        "lt_100": float(100.0 * (counts < 100).mean()),
        "same_class": float(100.0 * same_q.sum() / judged) if judged else float("nan"),
        "median_results": float(np.median(counts)),
        "first_screen_same": float(np.mean(screened)) if len(screened) else float("nan"),
        "threshold": thr,
        "n_queries": int(len(q)),
    }
    if per_query:
        out["per_query"] = {"results": counts, "same": same_q, "judged": judged_q, "screen": screen_q}
    return out


def _nearest_euclidean(
    x: np.ndarray, sq: np.ndarray, qi: np.ndarray, k: int, *, block: int
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` rows nearest each query by squared Euclidean distance (``sq``: squared norms of ``x``'s
    rows), the query itself first (its distance set to -1); unordered otherwise. Returns (rows, squared
    distances), each (len(qi), k)."""
    best_d = np.empty((len(qi), 0), dtype=np.float64)
    best_i = np.empty((len(qi), 0), dtype=np.int64)
    xq = x[qi]
    for b0 in range(0, len(x), block):
        d2 = sq[qi][:, None] + sq[None, b0 : b0 + block] - 2.0 * (xq @ x[b0 : b0 + block].T).astype(np.float64)
        own = np.flatnonzero((qi >= b0) & (qi < b0 + d2.shape[1]))
        d2[own, qi[own] - b0] = -1.0
        best_d, best_i = keep_best(best_d, best_i, d2, b0, k, largest=False)
    return best_i, best_d


def keep_best(
    best_v: np.ndarray, best_i: np.ndarray, block_v: np.ndarray, b0: int, k: int, *, largest: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Merge one block's scores (rows ``b0..``) into the running best ``k`` per query (unordered)."""
    cand = np.concatenate([best_v, block_v], axis=1) if best_v.shape[1] else block_v
    width, held = cand.shape[1], best_v.shape[1]
    if width > k:
        # largest: partition the negated scores, as the one-matrix version did, so ties fall the same way
        part = np.argpartition(-cand if largest else cand, k - 1, axis=1)[:, :k]
    else:
        part = np.broadcast_to(np.arange(width), cand.shape)
    values = np.take_along_axis(cand, part, axis=1)
    if held:
        rows = np.where(part < held, np.take_along_axis(best_i, np.minimum(part, held - 1), axis=1), part - held + b0)
    else:
        rows = part + b0
    return values, rows.astype(np.int64)
