"""Variants of the search spread on the AG News sample, after the default head and smoothing (issue 15).

Exploration, not a choice: the test records' gold judges every row, so nothing here may become a default
by its figures alone (the defaults are chosen on validation records or without labels). It records which
roads around the spread's cost were tried, so that nobody walks them again.

The default head (`--spread 0` row) is trained once per seed through the pipeline's steps
(``_common.fit_row``: label check, :func:`kern_finetune.training.train.fit_head`, smoothing ``auto``); every row
then re-shapes those same vectors. A row's strength is chosen as ``--spread auto`` chooses it
(:func:`kern_finetune.vectors.spread.choose_strength`'s rule: the smallest candidate whose short lists on 1,000
seeded searches among all records are within :data:`~kern_finetune.vectors.spread.MARGIN_10` /
:data:`~kern_finetune.vectors.spread.MARGIN_100` points of the raw vectors'), reading no label. Rows:

- ``off``: no spread; ``default``: the pipeline's spread (:func:`kern_finetune.vectors.spread.spread_vectors`);
- ``grid 0.1``: the same with strengths 0, 0.1, ..., 1.5;
- ``radius m=50`` / ``m=200``: the local radius at the 50th / 200th neighbour instead of the 100th;
- ``radius unsmoothed`` / ``radius over 30``: log radii averaged over 0 / 30 neighbours instead of 10;
- ``clamp dense 25%`` / ``clamp sparse 90%``: radii clipped at that quantile before scaling (the densest
  quarter not dilated further / the sparsest tenth not shrunk further);
- ``class poles``: the lifted part points to the record's soft class (softmax over cosines to the training
  labels' centroids, t = 0.05) and the common pole, ``[rho v, h * normalise([p, 1])]``, so sparse records of
  different classes do not meet at one pole (training labels only, no gold);
- ``local-mean poles``: the same with ``normalise([0.3 * mean of the 100 nearest, 1])`` for the lifted part;
- ``smoothing K=20`` / ``K=30``: the head smoothed over 20 / 30 base-space neighbours (weight chosen on the
  validation records as ``--smooth auto`` chooses it), then the default spread.

    python benchmarks/spread_variants.py --seeds 42,43,44

Writes ``benchmarks/results/spread_variants.{json,md}``.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable

import numpy as np
import torch

from _common import fit_row, label_checked, load_project, machine, score_row, write_results

from kern_finetune.config import RunConfig
from kern_finetune.refinery.search import sample_queries
from kern_finetune.vectors.smooth import base_neighbours, choose_weight, nearest_among_anchors, smooth
from kern_finetune.vectors.spread import MAX_QUERIES, STRENGTHS, _short_lists, spread_vectors, within_margins

KEYS = ("top_10", "top_100", "top_1000", "lt_10", "lt_100", "same_class", "first_screen_same")
RADIUS_NEIGHBOURS = 300


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def lifted(v: np.ndarray, log_r: np.ndarray, s: float, *, pole: np.ndarray | None = None,
           lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """The spread's lift with options: ``pole`` (rows) replaces the common extra dimension; ``lo`` / ``hi``
    clip the centred log radii at those quantiles."""
    if s == 0:
        return v
    z = log_r - np.median(log_r)
    if lo is not None:
        z = np.maximum(z, np.quantile(z, lo))
    if hi is not None:
        z = np.minimum(z, np.quantile(z, hi))
    rho = np.exp(-s * z)
    r_max = rho.max()
    height = np.sqrt(np.clip(r_max**2 - rho**2, 0.0, None))
    extra = height[:, None] if pole is None else pole.astype(np.float64) * height[:, None]
    return _unit(np.hstack([v.astype(np.float64) * rho[:, None], extra]) / r_max)


def chosen(v: np.ndarray, base: np.ndarray, make: Callable[[float], np.ndarray], grid: tuple[float, ...],
           seed: int) -> tuple[float, np.ndarray]:
    """The strength ``--spread auto``'s rule picks among ``grid`` for the lift ``make``, and its vectors."""
    queries = sample_queries(len(v), MAX_QUERIES, seed)
    raw = _short_lists(base, queries, seed)
    for s in grid:
        out = make(s)
        r = _short_lists(out, queries, seed)
        if within_margins(r, raw):
            return s, out
    return grid[-1], out


def log_radius(order_idx: np.ndarray, order_sims: np.ndarray, m: int, average: int) -> np.ndarray:
    r = np.log(np.sqrt(np.clip(2.0 - 2.0 * order_sims[:, m - 1].astype(np.float64), 1e-12, None)))
    return r if average == 0 else (r + r[order_idx[:, :average]].sum(1)) / (1 + average)


def sorted_neighbours(x: np.ndarray, k: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    idx, sims, _ = nearest_among_anchors(x, k, seed=seed)
    order = np.argsort(-sims, axis=1)
    return np.take_along_axis(idx, order, 1), np.take_along_axis(sims, order, 1)


def one_seed(seed: int) -> list[dict[str, Any]]:
    sel, base, classes = load_project("ag_news", seed)
    checked = label_checked(sel, base, seed)
    stages: dict[str, np.ndarray] = {}
    _, info = fit_row(RunConfig(spread="0", seed=seed), sel, base, checked=checked, stages=stages)
    head, v = stages["head"], stages["smoothed"]
    idx, sims = sorted_neighbours(v, RADIUS_NEIGHBOURS, seed)
    lr = log_radius(idx, sims, 100, 10)
    radii = {(m, avg): log_radius(idx, sims, m, avg) for m, avg in ((50, 10), (200, 10), (100, 0), (100, 30))}
    fine = tuple(round(0.1 * i, 1) for i in range(16))
    train = sel.train_idx
    centroids = _unit(np.stack([v[train][sel.y[train] == k].mean(0) for k in range(len(sel.classes))]))
    z = (v @ centroids.T) / 0.05
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    class_pole = _unit(np.hstack([p, np.ones((len(p), 1))]))
    local_mean = _unit(v[idx[:, :100]].mean(1) + v)
    mean_pole = _unit(np.hstack([0.3 * local_mean, np.ones((len(v), 1), np.float32)]))
    wide = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0)
    rows: list[tuple[str, float, np.ndarray]] = [("off", 0.0, v)]
    default, spread = spread_vectors(v, base, strength=None, seed=seed)
    rows.append(("default", spread.strength, default))
    variants: list[tuple[str, Callable[[float], np.ndarray], tuple[float, ...]]] = [
        ("grid 0.1", lambda s: lifted(v, lr, s), fine),
        ("radius m=50", lambda s: lifted(v, radii[50, 10], s), STRENGTHS),
        ("radius m=200", lambda s: lifted(v, radii[200, 10], s), STRENGTHS),
        ("radius unsmoothed", lambda s: lifted(v, radii[100, 0], s), STRENGTHS),
        ("radius over 30", lambda s: lifted(v, radii[100, 30], s), STRENGTHS),
        ("clamp dense 25%", lambda s: lifted(v, lr, s, lo=0.25), STRENGTHS),
        ("clamp sparse 90%", lambda s: lifted(v, lr, s, hi=0.9), STRENGTHS),
        ("class poles", lambda s: lifted(v, lr, s, pole=class_pole), wide),
        ("local-mean poles", lambda s: lifted(v, lr, s, pole=mean_pole), wide),
    ]
    for name, make, grid in variants:
        s, out = chosen(v, base, make, grid, seed)
        rows.append((name, s, out))
    wide_nb, _ = base_neighbours(base, k=30, seed=seed)
    order = np.argsort(-np.einsum("nd,nkd->nk", base, base[wide_nb]), axis=1)
    wide_nb = np.take_along_axis(wide_nb, order, 1)
    for k in (20, 30):
        weight, _, _ = choose_weight(head, wide_nb[:, :k], sel, seed=seed)
        smoothed = smooth(head, wide_nb[:, :k], weight)
        out, sp = spread_vectors(smoothed, base, strength=None, seed=seed)
        rows.append((f"smoothing K={k} (weight {weight})", sp.strength, out))
    results = []
    for name, s, vec in rows:
        row = {"seed": seed, "row": name, "strength": s, "dims": int(vec.shape[1]),
               "smooth_weight": info.get("smooth_weight"), **score_row(vec, sel, classes, seed)}
        print({k: round(x, 2) if isinstance(x, float) else x for k, x in row.items()}, flush=True)
        results.append(row)
    return results


def markdown(runs: list[dict[str, Any]], command: str, info: dict[str, Any]) -> str:
    names = list(dict.fromkeys(r["row"].split(" (weight")[0] for r in runs))
    lines = [f"Command: `{command}`", "", f"Machine: {info}", "",
             "Exploration: the test records' gold judges these rows (module docstring); none is a default by "
             "these figures. Mean over the seeds (each row's strengths listed).", "",
             "| row | seeds | strengths | top_10 | top_100 | top_1k | search: < 10 results | < 100 results | same class "
             "| first screen: same class of 9 |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name in names:
        rs = [r for r in runs if r["row"].split(" (weight")[0] == name]
        mean = {k: float(np.mean([r[k] for r in rs])) for k in KEYS}
        lines.append(f"| {name} | {len(rs)} | {', '.join(format(r['strength'], 'g') for r in rs)} | "
                     f"{mean['top_10']:.2f} | {mean['top_100']:.2f} | {mean['top_1000']:.2f} | {mean['lt_10']:.1f} % | "
                     f"{mean['lt_100']:.1f} % | {mean['same_class']:.1f} % | {mean['first_screen_same']:.2f} |")
    lines += ["", "top_k, search and first screen as in `multi_project.md` (same selection, same 300 seeded test "
              "queries among all records). Raw vectors on these queries: `multi_project_spread.md`."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="42,43,44")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    command = ("python benchmarks/spread_variants.py " + " ".join(sys.argv[1:])).strip()
    runs: list[dict[str, Any]] = []
    for seed in (int(s) for s in args.seeds.split(",")):
        runs += one_seed(seed)
        info = machine()
        write_results("spread_variants", {"command": command, "machine": info, "runs": runs}, markdown(runs, command, info))
    print(markdown(runs, command, machine()))


if __name__ == "__main__":
    main()
