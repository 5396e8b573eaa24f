"""Search spread (kern_finetune.vectors.spread): the local radius, the lift, the label-free choice, and its place in the
pipeline (metrics, one more dimension, the option)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from kern_finetune.config import RunConfig
from kern_finetune.errors import ConfigError
from kern_finetune.refinery.search import threshold_search
from kern_finetune.vectors.spread import MARGIN_10, MARGIN_100, STRENGTHS, choose_strength, lift, local_radius, spread_vectors


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _dense_and_sparse(n: int = 600, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two clusters on the sphere: one tight (as training packs labeled records), one loose (unlabeled ones);
    and "base" vectors spread evenly. Refinery's threshold follows the tight cluster's pairs."""
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1], n // 2)
    centres = np.eye(16, dtype=np.float32)[:2] * 3
    noise = np.where(y[:, None] == 0, 0.15, 1.2) * rng.normal(size=(n, 16))
    tuned = _unit(centres[y] + noise.astype(np.float32))
    base = _unit(rng.normal(size=(n, 16)).astype(np.float32))
    return tuned, base, y


def _first_ten_purity(v: np.ndarray, y: np.ndarray) -> float:
    sims = v @ v.T
    np.fill_diagonal(sims, -np.inf)
    top = np.argsort(-sims, axis=1)[:, :10]
    return float((y[top] == y[:, None]).mean())


def test_local_radius_is_the_distance_to_the_mth_neighbour_smoothed_in_log() -> None:
    x = _unit(np.random.default_rng(1).normal(size=(400, 8)))
    log_r, m, anchors = local_radius(x)
    assert anchors == 400 and m == 20  # the search's 100, at most a twentieth of the records
    d = np.sqrt(np.clip(2 - 2 * x @ x.T, 0, None))
    np.fill_diagonal(d, np.inf)
    order = np.sort(d, axis=1)
    raw = np.log(order[:, m - 1])
    nearest = np.argsort(d, axis=1)[:, :10]
    expected = (raw + raw[nearest].sum(axis=1)) / 11
    assert np.allclose(log_r, expected, atol=1e-5)


def test_lift_keeps_unit_vectors_and_adds_one_dimension() -> None:
    tuned, _, _ = _dense_and_sparse()
    log_r, _, _ = local_radius(tuned)
    assert np.array_equal(lift(tuned, log_r, 0.0), tuned)
    out = lift(tuned, log_r, 1.0)
    assert out.shape == (len(tuned), tuned.shape[1] + 1) and out.dtype == np.float32
    assert np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)
    with pytest.raises(ValueError, match=">= 0"):
        lift(tuned, log_r, -1.0)


def test_lift_gives_the_sparse_records_full_result_lists_and_keeps_their_neighbours() -> None:
    tuned, _, y = _dense_and_sparse()
    sparse = np.flatnonzero(y == 1)
    before = threshold_search(tuned, sparse, y, limit=20)
    assert before["lt_10"] > 50.0, before  # the tight cluster's pairs set the threshold
    out = lift(tuned, local_radius(tuned)[0], 1.0)
    after = threshold_search(out, sparse, y, limit=20)
    assert after["median_results"] == 20 and after["lt_10"] < 10.0, after
    assert _first_ten_purity(out, y) == pytest.approx(_first_ten_purity(tuned, y), abs=0.01)


def test_choose_strength_reads_only_the_searches() -> None:
    tuned, base, _ = _dense_and_sparse(2000)
    log_r, _, _ = local_radius(tuned)
    strength, rows, raw, n = choose_strength(tuned, base, log_r)
    assert n == 1000 and [r["strength"] for r in rows] == list(STRENGTHS)
    fits = [r for r in rows if r["lt_10"] <= raw["lt_10"] + MARGIN_10 and r["lt_100"] <= raw["lt_100"] + MARGIN_100]
    assert not fits  # two clusters this far apart in density: no strength gets within the margins ...
    best = min(rows, key=lambda r: (r["lt_10"], r["lt_100"]))
    assert strength == best["strength"] > 0.0  # ... so the fewest short lists wins
    assert best["lt_10"] < rows[0]["lt_10"] / 5
    # vectors as even as the base ones already fit at strength 0: the smallest that fits wins
    even, rows, raw, _ = choose_strength(base, base, local_radius(base)[0])
    assert even == 0.0 and rows[0]["lt_10"] == raw["lt_10"]
    assert len(rows) == 1  # the search stops at the first strength that fits


def test_spread_vectors_fixed_auto_and_off() -> None:
    tuned, base, _ = _dense_and_sparse()
    same, info = spread_vectors(tuned, base, strength=0.0)
    assert np.array_equal(same, tuned) and info.strength == 0.0 and not info.chosen
    fixed, info = spread_vectors(tuned, base, strength=0.5)
    assert not info.chosen and info.table == [] and np.allclose(fixed, lift(tuned, local_radius(tuned)[0], 0.5))
    chosen, info = spread_vectors(tuned, base, strength=None)
    assert info.chosen and info.n_queries == len(tuned) and info.to_dict()["strength"] == info.strength > 0
    json.dumps(info.to_dict(), allow_nan=False)  # metrics.json and the service's answers are strict JSON


@pytest.mark.parametrize("value", ["-0.1", "2.5", "x", ""])
def test_spread_option_is_checked(value: str) -> None:
    with pytest.raises(ConfigError, match=r"spread must be auto or a number in \[0, 2\]"):
        RunConfig(spread=value).validate()
    assert RunConfig(spread="1.5").spread_strength == 1.5 and RunConfig().spread_strength is None


def test_pipeline_records_the_spread_and_writes_one_more_dimension(
    subset_records: list[dict], shared_cache: Path, tmp_path: Path
) -> None:
    from kern_finetune.pipeline import run_pipeline
    from kern_finetune.output.save import load_vectors

    config = RunConfig(mode="head", task="Topic", text_attributes=["Title", "Description"], gold_attribute="Class Index",
                       cache_dir=shared_cache, seed=42, epochs=3, smooth="0", spread="1", device="cpu")
    result = run_pipeline(subset_records[:400], config, out_dir=tmp_path / "out")
    block = result.metrics["spread"]
    assert block["strength"] == 1.0 and not block["chosen"] and block["anchors"] == 400 and block["radius_rank"] == 20
    assert "spread" in result.metrics["seconds"]
    ids, saved = load_vectors(tmp_path / "out" / "vectors.npz")
    assert ids == result.ids and saved.shape == (400, 385)
    assert np.allclose(np.linalg.norm(saved, axis=1), 1.0, atol=1e-5)
    assert "finetuned" in result.metrics["threshold_search"]
