from __future__ import annotations

import numpy as np
import pytest

from kern_finetune.evaluate import chance_level, neighbour_purity, sample_queries, separation_2d, top_k_purity


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
    from kern_finetune.evaluate import separation_2d

    rng = np.random.default_rng(0)
    points = np.vstack([rng.normal(0, 0.1, size=(3, 2)), rng.normal(5, 0.1, size=(3, 2))])
    got = separation_2d(points, np.array([0, 0, 0, 1, 1, 1]))
    assert got["knn_accuracy"] == 100.0 and got["silhouette"] > 0.9  # 3 folds, 3 neighbours
    assert separation_2d(points[:3], np.array([0, 1, 1])) == {}  # a class with one record: not measurable
    assert separation_2d(points, np.zeros(6, dtype=int)) == {}  # one class
