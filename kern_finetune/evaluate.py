"""Judge an embedding: neighbour purity (top_k), chance level, a linear probe, 2D separation.

``top_k`` for a query is the share of its k nearest neighbours (cosine; the query itself excluded)
that carry the query's class, in percent; the score is its mean over queries. Neighbours are searched
among the test records only, as in the 2022 experiment.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
from sklearn.decomposition import PCA
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, classification_report, f1_score, silhouette_score
from sklearn.model_selection import cross_val_score
from sklearn.neighbors import KNeighborsClassifier

__all__ = [
    "KS",
    "neighbour_purity",
    "top_k_purity",
    "chance_level",
    "sample_queries",
    "linear_probe",
    "projection_2d",
    "separation_2d",
]

KS = (5, 10, 25, 50, 75, 100, 250, 1000)
_SIMPLEX_SOFTEN = 4.0


def neighbour_purity(
    vectors: np.ndarray, classes: np.ndarray, ks: tuple[int, ...] = KS, *, queries: np.ndarray | None = None, chunk: int = 1024
) -> dict[int, np.ndarray]:
    """Per-query purity (0..1) for every k: ``{k: array over queries}``.

    ``vectors`` are compared by cosine (normalised here); ``queries`` are row indices (all rows when None).
    k larger than ``n - 1`` is clipped to ``n - 1``.
    """
    x = vectors / np.linalg.norm(vectors, axis=1, keepdims=True).clip(1e-12)
    x = x.astype(np.float32)
    n = len(x)
    q = np.arange(n) if queries is None else np.asarray(queries)
    kmax = min(max(ks), n - 1)
    out = {k: np.empty(len(q)) for k in ks}
    for start in range(0, len(q), chunk):
        qi = q[start : start + chunk]
        sims = x[qi] @ x.T
        sims[np.arange(len(qi)), qi] = -np.inf  # the query is not its own neighbour
        top = np.argpartition(-sims, kmax - 1, axis=1)[:, :kmax]
        order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1, kind="stable")
        top = np.take_along_axis(top, order, axis=1)
        hits = np.cumsum(classes[top] == classes[qi][:, None], axis=1)
        for k in ks:
            kk = min(k, kmax)
            out[k][start : start + len(qi)] = hits[:, kk - 1] / kk
    return out


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


def sample_queries(n: int, n_queries: int, seed: int) -> np.ndarray:
    """The experiment's protocol: ``n_queries`` random test records, here with a fixed seed."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=min(n_queries, n), replace=False))


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
    x_fit: np.ndarray, y_fit: np.ndarray | None, x: np.ndarray, *, method: str = "pca", seed: int = 42
) -> np.ndarray:
    """Project ``x`` to 2D with a projection fitted on ``x_fit``.

    - ``pca``: the first two principal components (labels unused);
    - ``lda``: linear discriminant analysis on the labels;
    - ``simplex``: a logistic regression on the labels; each point is the probability-weighted mean
      of the class corners, spread evenly on the unit circle. Sure records sit at their class's corner,
      unsure ones between corners: a scatter plot a labeler can draw shapes in.
    """
    if method == "pca":
        return PCA(n_components=2, random_state=seed).fit(x_fit).transform(x)
    if y_fit is None:
        raise ValueError(f"{method} needs labels")
    if method == "lda":
        return LinearDiscriminantAnalysis(n_components=2).fit(x_fit, y_fit).transform(x)[:, :2]
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
    """How well classes separate in 2D: 5-fold 15-NN accuracy (percent) and silhouette."""
    rng = np.random.default_rng(seed)
    if len(points) > max_points:
        keep = rng.choice(len(points), max_points, replace=False)
        points, classes = points[keep], classes[keep]
    knn = cross_val_score(KNeighborsClassifier(n_neighbors=15), points, classes, cv=5).mean()
    sil = silhouette_score(points, classes, random_state=seed)
    return {"knn_accuracy": float(100.0 * knn), "silhouette": float(sil)}
