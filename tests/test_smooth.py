"""Neighbour smoothing (kern_finetune.vectors.smooth): the neighbour search, the average, the held-out choice, and
its place in the pipeline (metrics, the saved model, the model door)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from kern_finetune.config import RunConfig
from kern_finetune.errors import ConfigError
from kern_finetune.labels.select import Selection
from kern_finetune.vectors.smooth import NEIGHBOURS, base_neighbours, choose_weight, smooth, smooth_vectors


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _brute_force(x: np.ndarray, pool: np.ndarray, k: int) -> list[set[int]]:
    out = []
    for i in range(len(x)):
        sims = x[i] @ x[pool].T
        order = [int(pool[j]) for j in np.argsort(-sims) if pool[j] != i]
        out.append(set(order[:k]))
    return out


def test_neighbours_are_the_nearest_other_records() -> None:
    x = _unit(np.random.default_rng(0).normal(size=(300, 16)))
    nb, anchors = base_neighbours(x, k=5, block=64)
    assert anchors == 300 and nb.shape == (300, 5)
    assert [set(map(int, row)) for row in nb] == _brute_force(x, np.arange(300), 5)


def test_neighbours_among_a_capped_sample_of_anchors() -> None:
    """Above the cap, every record's neighbours come from one seeded sample, itself excluded when it is in it."""
    from kern_finetune.subsample import fit_sample

    x = _unit(np.random.default_rng(1).normal(size=(400, 8)))
    nb, anchors = base_neighbours(x, k=4, max_anchors=100, seed=3, block=50)
    pool = fit_sample(400, cap=100, seed=3)
    assert anchors == 100 and set(np.unique(nb)) <= set(pool.tolist())
    assert [set(map(int, row)) for row in nb] == _brute_force(x, pool, 4)


def test_smooth_averages_with_the_neighbours_mean() -> None:
    v = _unit(np.random.default_rng(2).normal(size=(6, 4)))
    nb = np.array([[1, 2], [0, 2], [0, 1], [4, 5], [3, 5], [3, 4]])
    assert np.array_equal(smooth(v, nb, 0.0), v)
    out = smooth(v, nb, 0.5)
    expected = 0.5 * v[0] + 0.5 * (v[1] + v[2]) / 2
    assert np.allclose(out[0], expected / np.linalg.norm(expected), atol=1e-6)
    assert out.dtype == np.float32 and np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        smooth(v, nb, 1.5)


def _two_class_project(n: int = 400, flip: float = 0.3, seed: int = 0) -> tuple[np.ndarray, np.ndarray, Selection, np.ndarray]:
    """Two classes, well separated in the base space; the "fine-tuned" vectors put ``flip`` of the records on
    the other class's side. Smoothing over base neighbours brings them back, and the held-out labels see it."""
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1], n // 2)
    centres = np.eye(8, dtype=np.float32)[:2] * 4
    base = _unit(centres[y] + rng.normal(size=(n, 8)).astype(np.float32))
    wrong = rng.random(n) < flip
    placed = np.where(wrong, 1 - y, y)
    tuned = _unit(np.eye(8, dtype=np.float32)[placed] * 3 + 0.3 * rng.normal(size=(n, 8)).astype(np.float32))
    order = rng.permutation(n)
    train_idx, val_idx, test_idx = np.sort(order[:200]), np.sort(order[200:300]), np.sort(order[300:])
    sel = Selection(
        ids=[str(i) for i in range(n)], texts=[f"t{i}" for i in range(n)], classes=["a", "b"], y=y.copy(),
        source=["weak"] * n, confidence=np.full(n, 0.9), train_idx=train_idx, val_idx=val_idx, test_idx=test_idx,
        gold=[None] * n,
    )
    return base, tuned, sel, y


def test_choose_weight_takes_the_smoothing_held_out_labels_prefer() -> None:
    base, tuned, sel, y = _two_class_project()
    nb, _ = base_neighbours(base, k=10)
    weight, table, n_queries = choose_weight(tuned, nb, sel)
    assert n_queries == len(sel.val_idx) and [r["weight"] for r in table] == [0.0, 0.5, 0.8]
    assert weight > 0.0
    by = {r["weight"]: r for r in table}
    assert by[weight]["val_top_10"] > by[0.0]["val_top_10"]
    smoothed = smooth(tuned, nb, weight)  # and the test records (never looked at) gain too
    test = sel.test_idx

    def purity(v: np.ndarray) -> float:
        sims = v[test] @ v[test].T
        np.fill_diagonal(sims, -np.inf)
        top = np.argsort(-sims, axis=1)[:, :10]
        return float((y[test][top] == y[test][:, None]).mean())

    assert purity(smoothed) > purity(tuned) + 0.1


def test_choose_weight_keeps_vectors_that_smoothing_would_blur() -> None:
    """When the base model's neighbours are mostly of other classes, smoothing only blurs: weight 0."""
    _, tuned, sel, y = _two_class_project(flip=0.0)
    rng = np.random.default_rng(5)
    by_class = [np.flatnonzero(y == c) for c in (0, 1)]
    nb = np.array([[rng.choice(by_class[1 - y[i]] if rng.random() < 0.7 else by_class[y[i]]) for _ in range(10)]
                   for i in range(len(y))])
    weight, table, _ = choose_weight(tuned, nb, sel)
    assert weight == 0.0, table


def test_smooth_vectors_fixed_and_off() -> None:
    base, tuned, sel, _ = _two_class_project()
    same, info = smooth_vectors(tuned, base, sel, weight=0.0)
    assert np.array_equal(same, tuned) and info.weight == 0.0 and not info.chosen
    fixed, info = smooth_vectors(tuned, base, sel, weight=0.5)
    assert info.weight == 0.5 and not info.chosen and info.table == [] and info.anchors == len(base)
    assert np.allclose(fixed, smooth(tuned, base_neighbours(base)[0], 0.5))
    chosen, info = smooth_vectors(tuned, base, sel, weight=None)
    assert info.chosen and len(info.table) == 3 and info.to_dict()["weight"] == info.weight


@pytest.mark.parametrize("value", ["-0.1", "1.5", "x", ""])
def test_smooth_option_is_checked(value: str) -> None:
    with pytest.raises(ConfigError, match="smooth must be auto or a number in"):
        RunConfig(smooth=value).validate()
    assert RunConfig(smooth="0.5").smooth_weight == 0.5 and RunConfig().smooth_weight is None


def test_pipeline_records_the_smoothing_and_the_model_gives_the_vectors_before_it(
    subset_records: list[dict], shared_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The written vectors are the head's output smoothed over the base neighbours; the model folder gives the
    head beside the base share (its first rows are the head), which smoothing does not touch."""
    from sentence_transformers import SentenceTransformer

    from kern_finetune.vectors import base_share
    from kern_finetune.vectors.encode import Encoder
    from kern_finetune.pipeline import run_pipeline
    from kern_finetune.output.save import load_vectors

    # 400 records leave too few validation labels to show the head beating refinery's stock embedding, and the
    # folder would drop it; here the folder keeps the smallest fitting share so that its first rows are the head
    monkeypatch.setattr(base_share, "choose", lambda stock, shares: shares[0][0] if shares else None)

    records = subset_records[:400]
    config = RunConfig(mode="head", task="Topic", text_attributes=["Title", "Description"], gold_attribute="Class Index",
                       cache_dir=shared_cache, seed=42, epochs=3, smooth="0.5", spread="0",
                       device="cpu")  # spread: tests/test_spread.py
    result = run_pipeline(records, config, out_dir=tmp_path / "out")
    block = result.metrics["smoothing"]
    assert block["weight"] == 0.5 and not block["chosen"] and block["neighbours"] == NEIGHBOURS and block["anchors"] == 400
    assert "smooth" in result.metrics["seconds"]
    ids, saved = load_vectors(tmp_path / "out" / "vectors.npz")
    assert ids == result.ids
    model = SentenceTransformer(str(result.model_dir), device="cpu", local_files_only=True)
    encoded = model.encode(result.selection.texts, convert_to_numpy=True, normalize_embeddings=True,
                           show_progress_bar=False)
    assert np.abs(encoded - result.model_vectors).max() < 1e-4
    assert result.metrics["model_door"]["share"] is not None
    base = Encoder(cache_dir=shared_cache).encode(result.selection.texts, progress=False)
    head = encoded[:, : base.shape[1]]  # the Dense layer's first rows: the head (then the base share, if any)
    unsmoothed = head / np.linalg.norm(head, axis=1, keepdims=True)
    assert np.abs(smooth(unsmoothed, base_neighbours(base)[0], 0.5) - saved).max() < 1e-4
    assert np.abs(unsmoothed - saved).max() > 1e-3  # smoothing did move them
    # a run with --smooth 0 records no smoothing: tests/test_train_full.py's pipeline run checks it
