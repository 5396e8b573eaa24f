"""Stage 4, judge an embedding on the test records' gold: top_k, refinery's threshold search, chance, a linear
probe, 2D separation.

``top_k`` for a query is the share of its k nearest test records (cosine, the query excluded) that carry its
class, in percent, averaged over queries; :func:`kern_finetune.refinery.search.threshold_search` searches all
records as refinery does.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, classification_report, f1_score, silhouette_score
from sklearn.model_selection import cross_val_score
from sklearn.neighbors import KNeighborsClassifier

from ..refinery.search import keep_best, sample_queries, threshold_search
from ..subsample import MAX_FIT_RECORDS, fit_sample

if TYPE_CHECKING:
    from ..config import RunConfig
    from ..labels.select import Selection

__all__ = [
    "KS",
    "neighbour_purity",
    "nearest_rows",
    "purity_queries",
    "purity_summary",
    "MAX_EVAL_QUERIES",
    "top_k_purity",
    "chance_level",
    "gold_codes",
    "linear_probe",
    "projection_2d",
    "separation_2d",
    "Evaluation",
    "Plots",
    "evaluate",
]

log = logging.getLogger(__name__)

KS = (5, 10, 25, 50, 75, 100, 250, 1000)
_SIMPLEX_SOFTEN = 4.0
SEARCH_QUERIES = 250
"""Seeded test records that query refinery's threshold search in the evaluation."""
MAX_EVAL_QUERIES = 10_000
"""top_k is averaged over at most this many test records as queries (a seeded sample above it), each
searched against all test records: evaluation time grows linearly with the project, not with its square."""


def neighbour_purity(
    vectors: np.ndarray,
    classes: np.ndarray,
    ks: tuple[int, ...] = KS,
    *,
    queries: np.ndarray | None = None,
    chunk: int = 256,
    block: int = 16384,
) -> dict[int, np.ndarray]:
    """Per-query purity (0..1) for every k: ``{k: array over queries}``.

    ``vectors`` are compared by cosine (normalised here); ``queries`` are row indices (all rows when None).
    k larger than ``n - 1`` is clipped to ``n - 1``. Every query is scored against all rows, ``chunk``
    queries at a time and ``block`` rows at a time, keeping only the running ``max(ks)`` nearest: memory is
    about ``chunk x (block + max(ks))`` numbers whatever the number of rows, time is queries x rows.
    """
    x = vectors / np.linalg.norm(vectors, axis=1, keepdims=True).clip(1e-12)
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = len(x)
    q = np.arange(n) if queries is None else np.asarray(queries, dtype=np.int64)
    kmax = min(max(ks), n - 1)
    out = {k: np.empty(len(q)) for k in ks}
    for start in range(0, len(q), chunk):
        qi = q[start : start + chunk]
        top = nearest_rows(x, qi, kmax, block=block)
        hits = np.cumsum(classes[top] == classes[qi][:, None], axis=1)
        for k in ks:
            kk = min(k, kmax)
            out[k][start : start + len(qi)] = hits[:, kk - 1] / kk
    return out


def nearest_rows(x: np.ndarray, queries: np.ndarray, k: int, *, block: int = 16384) -> np.ndarray:
    """The ``k`` rows of ``x`` most similar (dot product) to each query row index, best first, the query excluded.

    Scans ``x`` in blocks of ``block`` rows keeping a running top ``k``; ties are broken arbitrarily.
    """
    qi = np.asarray(queries, dtype=np.int64)
    if len(qi) == 0 or k < 1:
        return np.zeros((len(qi), max(k, 0)), dtype=np.int64)
    xq = x[qi]
    best_s = np.empty((len(qi), 0), dtype=np.float32)
    best_i = np.empty((len(qi), 0), dtype=np.int64)
    for b0 in range(0, len(x), block):
        sims = xq @ x[b0 : b0 + block].T
        own = np.flatnonzero((qi >= b0) & (qi < b0 + sims.shape[1]))
        sims[own, qi[own] - b0] = -np.inf  # the query is not its own neighbour
        best_s, best_i = keep_best(best_s, best_i, sims, b0, k, largest=True)
    order = np.argsort(-best_s, axis=1, kind="stable")
    return np.take_along_axis(best_i, order, axis=1)[:, :k]


def purity_queries(n: int, seed: int, *, max_queries: int = MAX_EVAL_QUERIES) -> np.ndarray | None:
    """Which of ``n`` test records serve as top_k queries: None (every one) when ``n <= max_queries``,
    else a seeded sample of ``max_queries``."""
    return None if n <= max_queries else sample_queries(n, max_queries, seed)


def purity_summary(vectors: np.ndarray, classes: np.ndarray, *, seed: int, max_queries: int = MAX_EVAL_QUERIES) -> dict[str, Any]:
    """The evaluation's neighbour purity of one embedding of the test records, over :func:`purity_queries`.

    ``top_k`` (percent per k), ``per_query`` (purity at the largest k per query), ``per_query_k``
    (``{k: purity per query}``) and ``n_queries``.
    """
    queries = purity_queries(len(vectors), seed, max_queries=max_queries)
    if queries is not None:
        log.info("top_k: averaged over a seeded sample of %d of %d test records as queries (max_queries %d), "
                 "neighbours among all of them", len(queries), len(vectors), max_queries)
    per = neighbour_purity(vectors, classes, queries=queries)
    kmax = max(per)
    return {
        "top_k": {str(k): float(100 * v.mean()) for k, v in per.items()},
        "per_query": per[kmax],
        "per_query_k": per,
        "n_queries": int(len(vectors) if queries is None else len(queries)),
    }


def top_k_purity(
    vectors: np.ndarray, classes: np.ndarray, ks: tuple[int, ...] = KS, *, queries: np.ndarray | None = None
) -> dict[str, float]:
    """Mean purity per k, in percent, keyed by ``str(k)`` (JSON-ready)."""
    per = neighbour_purity(vectors, classes, ks, queries=queries)
    return {str(k): float(100.0 * v.mean()) for k, v in per.items()}


def chance_level(classes: np.ndarray) -> float:
    """Expected purity of a random embedding: the sum of squared class shares, in percent."""
    counts = np.array(list(Counter(classes.tolist()).values()), dtype=float)
    shares = counts / counts.sum()
    return float(100.0 * (shares**2).sum())


def linear_probe(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, y_test: np.ndarray, *, labels: list[str], seed: int = 42
) -> dict[str, Any]:
    """LogisticRegression on the training vectors, judged on the test records."""
    clf = LogisticRegression(max_iter=2000, random_state=seed)
    clf.fit(x_train, y_train)
    pred = clf.predict(x_test)
    present = sorted(set(y_test.tolist()) | set(pred.tolist()))
    return {
        "accuracy": float(100.0 * accuracy_score(y_test, pred)),
        "macro_f1": float(100.0 * f1_score(y_test, pred, average="macro")),
        "report": classification_report(
            y_test, pred, labels=present, target_names=[labels[i] for i in present], digits=3, zero_division=0
        ),
    }


def projection_2d(
    x_fit: np.ndarray,
    y_fit: np.ndarray | None,
    x: np.ndarray,
    *,
    method: str = "pca",
    seed: int = 42,
    max_fit: int = MAX_FIT_RECORDS,
) -> np.ndarray:
    """Project ``x`` to 2D with a projection fitted on ``x_fit`` (on a seeded sample of at most about
    ``max_fit`` of its rows, stratified by ``y_fit``: :func:`kern_finetune.subsample.fit_sample`).

    - ``pca``: the first two principal components (labels unused);
    - ``simplex``: a logistic regression on the labels; each point is the probability-weighted mean
      of the class corners, spread evenly on the unit circle. Sure records sit at their class's corner,
      unsure ones between corners: a scatter plot a labeler can draw shapes in.
    """
    keep = fit_sample(len(x_fit), labels=None if method == "pca" else y_fit, cap=max_fit, seed=seed)
    if len(keep) < len(x_fit):
        log.info("2D view (%s): fitted on a seeded sample of %d of %d training records (max_fit %d)",
                 method, len(keep), len(x_fit), max_fit)
        x_fit = x_fit[keep]
        y_fit = None if y_fit is None else np.asarray(y_fit)[keep]
    if method == "pca":
        return PCA(n_components=2, random_state=seed).fit(x_fit).transform(x)
    if y_fit is None:
        raise ValueError(f"{method} needs labels")
    if method == "simplex":
        clf = LogisticRegression(max_iter=2000, random_state=seed).fit(x_fit, y_fit)
        k = len(clf.classes_)
        angles = 2 * np.pi * np.arange(k) / k + np.pi / 4
        corners = np.stack([np.cos(angles), np.sin(angles)], axis=1)
        if k == 2:
            proba = clf.predict_proba(x)
        else:  # soften the probabilities so the sure records spread out instead of piling up on corners
            logits = clf.decision_function(x) / _SIMPLEX_SOFTEN
            logits -= logits.max(1, keepdims=True)
            proba = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
        return proba @ corners
    raise ValueError(f"unknown projection {method!r}")


def separation_2d(points: np.ndarray, classes: np.ndarray, *, seed: int = 42, max_points: int = 5000) -> dict[str, float]:
    """How well classes separate in 2D: 15-NN accuracy (percent, 5-fold, fewer folds when the smallest class
    has fewer than 5 records) and silhouette. Empty when it cannot be measured (fewer than 2 classes, or a
    class with a single test record): a new project's few test records must not crash a run."""
    rng = np.random.default_rng(seed)
    if len(points) > max_points:
        keep = rng.choice(len(points), max_points, replace=False)
        points, classes = points[keep], classes[keep]
    counts = np.unique(classes, return_counts=True)[1]
    folds = int(min(5, counts.min())) if len(counts) else 0
    if len(counts) < 2 or folds < 2 or len(points) <= len(counts):
        return {}
    # 15, or fewer when a training fold holds fewer records per class (few test records)
    neighbours = max(1, min(15, len(points) * (folds - 1) // folds // len(counts)))
    knn = cross_val_score(KNeighborsClassifier(n_neighbors=neighbours), points, classes, cv=folds).mean()
    sil = silhouette_score(points, classes, random_state=seed)
    return {"knn_accuracy": float(100.0 * knn), "silhouette": float(sil)}


@dataclass
class Plots:
    """Arrays the report draws, never written to ``metrics.json``: per embedding, the per-query purity at the
    largest k (``per_query``) and at every k (``per_query_k``); the 2D projections of the test records."""

    per_query: dict[str, np.ndarray]
    per_query_k: dict[str, Any]
    points_2d: dict[str, np.ndarray]

    def to_dict(self) -> dict[str, Any]:
        """What :func:`kern_finetune.evaluation.report.write_report` takes as ``plots``."""
        return {"per_query": self.per_query, "per_query_k": self.per_query_k, "points_2d": self.points_2d}


@dataclass
class Evaluation:
    """``metrics``: the evaluation's part of ``metrics.json`` (JSON-ready); ``plots``: None without test records."""

    metrics: dict[str, Any]
    plots: Plots | None
    seconds: float


def gold_codes(gold: list[str | None], rows: np.ndarray) -> tuple[list[str], np.ndarray]:
    """The sorted gold values of ``rows`` and each row's index into them."""
    values = sorted({gold[i] for i in rows})  # type: ignore[type-var]
    code = {g: k for k, g in enumerate(values)}
    return values, np.array([code[gold[i]] for i in rows], dtype=np.int64)  # type: ignore[index]


def _neighbour_figures(base: np.ndarray, tuned: np.ndarray, sel: Selection, classes: np.ndarray,
                       config: RunConfig, doors: dict[str, np.ndarray]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """top_k among the test records, refinery's search among all records from :data:`SEARCH_QUERIES` seeded
    test records, and the per-query purities for the report."""
    test = sel.test_idx
    queries = sample_queries(len(test), SEARCH_QUERIES, config.seed)
    top_k, per_query, per_query_k = {}, {}, {}
    for name, x in (("raw", base[test]), ("finetuned", tuned[test])):
        summary = purity_summary(x, classes, seed=config.seed)  # capped queries, blocks: linear in n_test
        top_k[name], per_query[name] = summary["top_k"], summary["per_query"]
        per_query_k[name] = summary["per_query_k"]
    # the seeded test queries against all records, judged on every returned record whose gold is known
    all_gold = sorted({g for g in sel.gold if g is not None})  # type: ignore[type-var]
    all_code = {g: k for k, g in enumerate(all_gold)}
    record_classes = np.array([all_code[g] if g is not None else -1 for g in sel.gold])
    search = {name: threshold_search(full, test[queries], record_classes, seed=config.seed)
              for name, full in (("raw", base), ("finetuned", tuned), *doors.items())}
    figures = {"top_k": top_k, "top_k_queries": summary["n_queries"], "threshold_search": search}
    return figures, {"per_query": per_query, "per_query_k": per_query_k}


def _probe(base: np.ndarray, tuned: np.ndarray, sel: Selection, mapping: dict[str, int] | None,
           config: RunConfig) -> dict[str, Any]:
    """The linear probe: fitted on the selected labels, scored on the test records' gold."""
    if mapping is None:
        return {"classification": {}, "classification_note": "gold values could not be matched to the task's labels"}
    test, labeled = sel.test_idx, sel.labeled_idx
    y_test = np.array([mapping[sel.gold[i]] for i in test])  # type: ignore[index]
    return {"classification": {
        name: linear_probe(full[labeled], sel.y[labeled], full[test], y_test, labels=sel.classes, seed=config.seed)
        for name, full in (("raw", base), ("finetuned", tuned))
    }}


def _views_2d(base: np.ndarray, tuned: np.ndarray, sel: Selection, config: RunConfig) -> dict[str, np.ndarray]:
    """Every :func:`projection_2d` of the test records, fitted on the training records and labels (never gold)."""
    fit_idx = sel.train_idx
    return {f"{name}_{method}": projection_2d(x[fit_idx], sel.y[fit_idx], x[sel.test_idx], method=method, seed=config.seed)
            for name, x in (("raw", base), ("finetuned", tuned)) for method in ("pca", "simplex")}


def evaluation_notes(n_test: int, n_gold_values: int, gold_attribute: str | None) -> list[str]:
    """Warnings about what the figures can mean: a gold attribute with about one value per test record is no
    class attribute; with fewer test records than a k, top_k counts every other test record (the class share)."""
    notes = []
    if n_test >= 10 and n_gold_values > n_test // 2:
        notes.append(f"gold attribute {gold_attribute!r} has {n_gold_values} different values over {n_test} test "
                     "records: it does not look like a class attribute, so top_k measures nothing; name the "
                     "attribute that holds each record's true class (--gold-attribute)")
    over = [k for k in KS if k >= n_test - 1]
    if over:
        notes.append(f"only {n_test} test records: top_{over[0]} and above count every other test record, so they "
                     "are the same for any embedding (about chance); read the smaller k")
    return notes


def evaluate(base: np.ndarray, tuned: np.ndarray, sel: Selection, config: RunConfig, *,
             doors: dict[str, np.ndarray] | None = None) -> Evaluation:
    """Raw (``base``) vs fine-tuned (``tuned``) vectors of every record of ``sel``, judged on the test records'
    gold. ``doors``: more embeddings of every record (name -> vectors, as refinery stores them), searched by
    the threshold search only. Without two test records, the metrics say why and hold no figures."""
    import time

    from ..labels.select import gold_to_class

    t = time.perf_counter()
    test = sel.test_idx
    sizes = {"n_train": int(len(sel.train_idx)), "n_val": int(len(sel.val_idx)), "n_test": int(len(test))}
    if len(test) < 2:
        why = "no --gold-attribute given" if not config.gold_attribute else "fewer than 2 test records with a gold value"
        metrics = {**sizes, "chance": None, "top_k": {"raw": {}, "finetuned": {}}, "classification": {},
                   "evaluation_note": why}
        return Evaluation(metrics=metrics, plots=None, seconds=time.perf_counter() - t)
    gold_values, classes = gold_codes(sel.gold, test)
    metrics: dict[str, Any] = {**sizes, "chance": chance_level(classes)}
    notes = evaluation_notes(len(test), len(gold_values), config.gold_attribute)
    if notes:
        metrics["evaluation_notes"] = notes
    figures, per_query = _neighbour_figures(base, tuned, sel, classes, config, doors or {})
    metrics.update(figures)
    metrics.update(_probe(base, tuned, sel, gold_to_class(sel), config))
    views = _views_2d(base, tuned, sel, config)
    metrics["separation_2d"] = {name: separation_2d(p, classes, seed=config.seed) for name, p in views.items()}
    n_fit = len(sel.train_idx)
    metrics["projection_fit"] = {"n_train": int(n_fit), "max_fit": MAX_FIT_RECORDS, "sampled": n_fit > MAX_FIT_RECORDS}
    plots = Plots(per_query=per_query["per_query"], per_query_k=per_query["per_query_k"],
                  points_2d={name: views[name] for name in ("raw_pca", "finetuned_simplex")})
    return Evaluation(metrics=metrics, plots=plots, seconds=time.perf_counter() - t)
