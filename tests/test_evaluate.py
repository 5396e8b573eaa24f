from __future__ import annotations

import numpy as np
import pytest

from kern_finetune.evaluation.evaluate import chance_level, neighbour_purity, separation_2d, top_k_purity

from kern_finetune.refinery.search import sample_queries


def test_purity_hand_computed_on_a_line():
    # Points on a half circle; cosine neighbours are the angular neighbours.
    angles = np.array([0.0, 0.1, 0.2, 0.3, 1.4, 1.5])
    x = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    classes = np.array([0, 0, 1, 1, 1, 0])
    per = neighbour_purity(x, classes, ks=(1, 2, 3))
    # query 0: neighbours 1 (0), 2 (1), 3 (1) -> k1 1/1, k2 1/2, k3 1/3
    assert per[1][0] == 1.0 and per[2][0] == 0.5 and per[3][0] == pytest.approx(1 / 3)
    # query 4: neighbours 5 (0), 3 (1), 2 (1) -> k1 0, k2 1/2, k3 2/3
    assert per[1][4] == 0.0 and per[2][4] == 0.5 and per[3][4] == pytest.approx(2 / 3)
    # query 2: neighbours 1 and 3 tie at 0.1 -> both seen by k=2: 1 (0), 3 (1) -> 1/2
    assert per[2][2] == 0.5


def test_query_is_excluded_and_k_is_clipped():
    x = np.eye(3)
    classes = np.array([0, 0, 1])
    per = neighbour_purity(x, classes, ks=(10,))
    # only 2 other rows exist: query 0 sees {1 (0), 2 (1)} -> 1/2; query 2 sees two of class 0 -> 0
    assert per[10].tolist() == [0.5, 0.5, 0.0]


def test_top_k_is_percent_and_uses_given_queries():
    x = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    classes = np.array([0, 0, 1, 1])
    assert top_k_purity(x, classes, ks=(1,)) == {"1": 100.0}
    assert top_k_purity(x, classes, ks=(3,), queries=np.array([0])) == {"3": pytest.approx(100 / 3)}


def test_chunking_does_not_change_results():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 8))
    classes = rng.integers(0, 3, 300)
    a = neighbour_purity(x, classes, ks=(5, 50))
    b = neighbour_purity(x, classes, ks=(5, 50), chunk=7)
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_chance_level_is_sum_of_squared_shares():
    assert chance_level(np.array([0, 0, 0, 1])) == pytest.approx(100 * (0.75**2 + 0.25**2))
    # the experiment's test mix: about 27.9%
    mix = np.repeat([0, 1, 2, 3], [2190, 1057, 2803, 3096])
    assert chance_level(mix) == pytest.approx(27.9, abs=0.05)


def test_queries_are_seeded():
    assert np.array_equal(sample_queries(9146, 250, 42), sample_queries(9146, 250, 42))
    assert not np.array_equal(sample_queries(9146, 250, 42), sample_queries(9146, 250, 43))
    assert len(set(sample_queries(9146, 250, 1).tolist())) == 250


def test_separation_2d_orders_clean_above_mixed():
    rng = np.random.default_rng(0)
    classes = np.repeat([0, 1], 200)
    clean = rng.normal(size=(400, 2)) + classes[:, None] * 6
    mixed = rng.normal(size=(400, 2))
    a, b = separation_2d(clean, classes), separation_2d(mixed, classes)
    assert a["knn_accuracy"] > 95 > 70 > b["knn_accuracy"]
    assert a["silhouette"] > b["silhouette"]


def test_separation_2d_with_few_test_records_uses_fewer_folds_or_says_nothing():
    """A new project has a handful of test records: the 2D figure shrinks its folds, or is left out."""
    from kern_finetune.evaluation.evaluate import separation_2d

    rng = np.random.default_rng(0)
    points = np.vstack([rng.normal(0, 0.1, size=(3, 2)), rng.normal(5, 0.1, size=(3, 2))])
    got = separation_2d(points, np.array([0, 0, 0, 1, 1, 1]))
    assert got["knn_accuracy"] == 100.0 and got["silhouette"] > 0.9  # 3 folds, 3 neighbours
    assert separation_2d(points[:3], np.array([0, 1, 1])) == {}  # a class with one record: not measurable
    assert separation_2d(points, np.zeros(6, dtype=int)) == {}  # one class


# ---------------------------------------------------------------- bounded memory, capped queries (issue 19)


def _brute_force_purity(vectors: np.ndarray, classes: np.ndarray, ks: tuple[int, ...], queries: np.ndarray) -> dict[int, np.ndarray]:
    """The reference: every query against the whole (queries x n) similarity matrix at once, fully sorted."""
    x = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    sims = x[queries] @ x.T
    sims[np.arange(len(queries)), queries] = -np.inf
    order = np.argsort(-sims, axis=1, kind="stable")[:, : len(x) - 1]
    hits = np.cumsum(classes[order] == classes[queries][:, None], axis=1)
    return {k: hits[:, min(k, len(x) - 1) - 1] / min(k, len(x) - 1) for k in ks}


def test_blocks_give_the_brute_force_result():
    """Scanning the rows in blocks (keeping a running top k) equals the full matrix, for any block size."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(700, 16))
    classes = rng.integers(0, 4, 700)
    queries = np.sort(rng.choice(700, 90, replace=False))
    ref = _brute_force_purity(x, classes, (1, 5, 50, 250, 1000), queries)
    for block, chunk in ((700, 256), (64, 7), (1, 3), (250, 90)):
        got = neighbour_purity(x, classes, (1, 5, 50, 250, 1000), queries=queries, chunk=chunk, block=block)
        assert all(np.array_equal(got[k], ref[k]) for k in ref), (block, chunk)


def test_nearest_rows_are_ordered_and_exclude_the_query():
    from kern_finetune.evaluation.evaluate import nearest_rows

    rng = np.random.default_rng(2)
    x = rng.normal(size=(300, 8)).astype(np.float32)
    top = nearest_rows(x, np.array([0, 5, 299]), 20, block=33)
    sims = x[[0, 5, 299]] @ x.T
    for row, q in enumerate((0, 5, 299)):
        assert q not in top[row]
        s = sims[row, top[row]]
        assert (np.diff(s) <= 0).all()
        others = np.delete(sims[row], np.r_[top[row], q])
        assert s[-1] >= others.max()
    assert nearest_rows(x, np.array([], dtype=int), 5).shape == (0, 5)


def test_purity_summary_caps_the_queries_but_searches_all_rows():
    from kern_finetune.evaluation.evaluate import purity_queries, purity_summary

    rng = np.random.default_rng(3)
    x = rng.normal(size=(400, 8))
    classes = rng.integers(0, 3, 400)
    full = purity_summary(x, classes, seed=42)  # 400 <= MAX_EVAL_QUERIES: every record is a query
    assert full["n_queries"] == 400 and purity_queries(400, 42) is None
    assert full["top_k"] == top_k_purity(x, classes)
    capped = purity_summary(x, classes, seed=42, max_queries=120)
    q = purity_queries(400, 42, max_queries=120)
    assert capped["n_queries"] == 120 and len(q) == 120 and np.array_equal(q, sample_queries(400, 120, 42))
    assert capped["top_k"] == top_k_purity(x, classes, queries=q)  # neighbours among all 400 rows
    assert capped["per_query"].shape == (120,)


def test_threshold_search_in_blocks_equals_one_block():
    from kern_finetune.refinery.search import threshold_search

    rng = np.random.default_rng(4)
    x = rng.normal(size=(600, 8)).astype(np.float32)
    classes = rng.integers(-1, 3, 600)
    queries = np.sort(rng.choice(600, 40, replace=False))
    one = threshold_search(x, queries, classes, limit=100, block=600)
    for block in (1, 17, 128):
        assert threshold_search(x, queries, classes, limit=100, block=block, chunk=9) == one
    assert one["n_queries"] == 40 and 0 < one["median_results"] <= 100


def test_fit_sample_is_seeded_capped_and_keeps_rare_classes():
    from kern_finetune.subsample import MIN_PER_CLASS, fit_sample

    assert np.array_equal(fit_sample(10, cap=20), np.arange(10))
    labels = np.r_[np.zeros(5000, dtype=int), np.ones(4000, dtype=int), np.full(10, 2)]
    a = fit_sample(len(labels), labels=labels, cap=900, seed=1)
    assert np.array_equal(a, fit_sample(len(labels), labels=labels, cap=900, seed=1))
    assert not np.array_equal(a, fit_sample(len(labels), labels=labels, cap=900, seed=2))
    assert np.all(np.diff(a) > 0) and 900 <= len(a) <= 900 + 3 * MIN_PER_CLASS
    counts = np.bincount(labels[a])
    assert counts[2] == 10 and abs(counts[0] / counts[1] - 5 / 4) < 0.05  # all of the rare class, shares kept
    assert len(fit_sample(5000, cap=300, seed=0)) == 300


def test_projection_fits_on_a_capped_sample():
    from kern_finetune.evaluation.evaluate import projection_2d

    rng = np.random.default_rng(5)
    y = rng.integers(0, 3, 3000)
    x = rng.normal(size=(3000, 6)) + y[:, None] * 3.0
    full = projection_2d(x, y, x[:50], method="simplex", max_fit=5000)
    capped = projection_2d(x, y, x[:50], method="simplex", max_fit=500)
    assert capped.shape == (50, 2) and not np.array_equal(full, capped)
    assert np.abs(full - capped).max() < 0.2  # a 500-record fit places records nearly where the full fit does
    assert np.array_equal(projection_2d(x, None, x[:5], max_fit=3000), projection_2d(x, None, x[:5]))
