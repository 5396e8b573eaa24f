"""First screen and refinery's threshold search (issue 15)."""

from __future__ import annotations

import numpy as np
import pytest

from kern_finetune.refinery.search import similarity_threshold, threshold_search


def test_similarity_threshold_is_the_5th_percentile_of_pairwise_distances():
    # 4 points on a line at 0, 1, 3, 6: pairwise distances 1, 3, 6, 2, 5, 3 -> sorted 1 2 3 3 5 6
    x = np.array([[0.0], [1.0], [3.0], [6.0]])
    # numpy's linear percentile: position 0.05 * 5 = 0.25 between 1 and 2 -> 1.25
    assert similarity_threshold(x) == pytest.approx(1.25)
    assert similarity_threshold(x, percentile=50) == pytest.approx(3.0)


def test_similarity_threshold_samples_at_most_limit_records_seeded():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(800, 4))
    a = similarity_threshold(x, seed=1)
    assert a == similarity_threshold(x, seed=1)
    assert a != similarity_threshold(x, seed=2)  # a different sample of 500
    assert similarity_threshold(x[:300], seed=1) == similarity_threshold(x[:300], seed=2)  # all 300 used


def test_threshold_search_hand_computed():
    # a line: rows 0..5 at 0, 1, 2, 10, 11, 30; classes 0 0 1 1 -1 1
    x = np.array([[0.0], [1.0], [2.0], [10.0], [11.0], [30.0]])
    classes = np.array([0, 0, 1, 1, -1, 1])
    out = threshold_search(x, np.array([0, 3, 5]), classes, threshold=1.5, limit=100)
    # query 0 -> {0, 1}: 2 results, other = 1 (class 0, same)
    # query 3 -> {3, 4}: 2 results, other = 4 (unknown class: not judged)
    # query 5 -> {5}: the query alone
    assert out["lt_10"] == 100.0 and out["lt_100"] == 100.0
    assert out["median_results"] == 2.0
    assert out["same_class"] == 100.0
    # first screen: query 0 shows 1 same-class record, query 5 shows none (query 3's class-less one is not judged)
    assert out["first_screen_same"] == pytest.approx(0.5)
    # a wider threshold, limit 3
    out = threshold_search(x, np.array([0, 1]), classes, threshold=2.5, limit=3)
    # query 0 -> {0, 1, 2}: others 1 (same), 2 (other); query 1 -> {1, 0, 2}: 0 (same), 2 (other)
    assert out["same_class"] == pytest.approx(50.0)
    assert out["median_results"] == 3.0 and out["n_queries"] == 2
    assert out["first_screen_same"] == pytest.approx(1.0)  # 2 shown each, half of them same class


def test_first_screen_counts_the_nearest_nine_shown_in_order():
    """Of 20 same-distance-ordered results, the first screen is the 9 nearest after the query."""
    x = np.arange(20, dtype=float)[:, None]
    classes = np.array([0] * 10 + [1] * 10)
    out = threshold_search(x, np.array([0]), classes, threshold=100.0)
    assert out["first_screen_same"] == pytest.approx(9.0)  # rows 1..9, all class 0
    out = threshold_search(x, np.array([5]), classes, threshold=100.0)
    assert out["first_screen_same"] == pytest.approx(9.0)  # rows 0-4 and 6-9 are nearest to 5
    out = threshold_search(x, np.array([19]), classes, threshold=100.0)
    assert out["first_screen_same"] == pytest.approx(9.0)  # rows 18..10, all class 1
    out = threshold_search(x + np.where(np.arange(20) > 12, 0.1, 0.0)[:, None], np.array([12]), classes, threshold=100.0)
    assert out["first_screen_same"] == pytest.approx(6.0)  # 11, 13.1, 10, 14.1, 9, 15.1, 8, 16.1, 7: 6 of class 1
    out = threshold_search(x, np.array([0]), classes, threshold=4.5)
    assert out["first_screen_same"] == pytest.approx(4.0)  # only 4 others within the threshold: 4 shown


def test_threshold_search_counts_the_query_and_cuts_at_limit():
    x = np.zeros((150, 3))  # every record at distance 0 from every other
    out = threshold_search(x, np.arange(5), np.zeros(150, dtype=int), threshold=0.0)
    assert out["median_results"] == 100.0 and out["lt_100"] == 0.0 and out["same_class"] == 100.0
    out = threshold_search(x[:50], np.arange(5), np.zeros(50, dtype=int), threshold=0.0)
    assert out["median_results"] == 50.0 and out["lt_100"] == 100.0 and out["lt_10"] == 0.0


def test_threshold_search_default_threshold_is_refinerys():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(600, 8))
    out = threshold_search(x, np.arange(20), np.zeros(600, dtype=int), seed=7)
    assert out["threshold"] == pytest.approx(similarity_threshold(x, seed=7))


def test_default_head_keeps_the_first_screen_on_the_subset(subset_sel, subset_base):
    """The default head (label check, fit_head) on the sample's 1,000-record subset: top_10 of the test records
    at least raw's, top_100 above raw's."""
    from kern_finetune.config import RunConfig
    from kern_finetune.evaluation.evaluate import neighbour_purity
    from kern_finetune.labels.label_check import find_label_issues, without_label_issues
    from kern_finetune.training.train import fit_head

    config = RunConfig(seed=42)
    sel = without_label_issues(subset_sel, find_label_issues(subset_base, subset_sel, seed=42))
    trainer = fit_head(subset_base, sel, config, progress=False)
    tuned = trainer.transform(subset_base)
    test = subset_sel.test_idx
    gold = np.array([int(subset_sel.gold[i]) for i in test])
    raw = {k: v.mean() for k, v in neighbour_purity(subset_base[test], gold, ks=(10, 100)).items()}
    new = {k: v.mean() for k, v in neighbour_purity(tuned[test], gold, ks=(10, 100)).items()}
    assert new[10] >= raw[10], (raw, new)
    assert new[100] > raw[100], (raw, new)
