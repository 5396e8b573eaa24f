"""The experiment's table on the full bundled sample (frozen encoder).

Every row trains a head on the cached base vectors of the 10,854 selected records (threshold 0.7,
75/25 split) and reports top_1k over **all** 9,146 test records (gold ``Class Index``), plus the 2022
protocol (250 seeded queries), the linear probe, 2D separation (table rows with a probe) and the
training time, for each seed.

    python benchmarks/compare.py                 # the table: raw, triplet parity (both engines), default
    python benchmarks/compare.py --name compare_after_prune   # the same table under another name
    python benchmarks/compare.py --seeds 42 --rows raw,default  # two rows only

Writes ``benchmarks/results/compare.{json,md}`` (``--name``: ``NAME.{json,md}``).

``results/sweep.md`` (losses and heads over 3 seeds) came from ``compare.py --sweep`` at commit 1e629b2; its
losing variants (semi-hard triplet, CosFace, supcon at t=0.1, batches of 128 and 512, heads of 2 and 4
layers) and the search-floor head left the package in the prune of issue 31 (``docs/decisions.md``), so the
sweep runs only at commit 3cc078b or earlier and the file is kept as a record. So are the search-floor rows
of ``compare_before_refactor.md``, ``compare_after_refactor.md`` and ``compare_final_main.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from _common import fit_row, load_sample, machine, score_row, write_results

from kern_finetune.training import train
from kern_finetune.config import RunConfig
from kern_finetune.evaluation.evaluate import linear_probe, neighbour_purity, projection_2d, separation_2d
from kern_finetune.refinery.search import sample_queries
from kern_finetune.labels.select import gold_to_class

PARITY = RunConfig(loss="triplet", noise_filter="off")  # with batches of 128 (PARITY_BATCH): the 2022 settings
PARITY_BATCH = 128
DEFAULT = RunConfig()


@contextlib.contextmanager
def _head_batch(size: int | None) -> Iterator[None]:
    """The head engines' batch size for the rows inside (the 2022 experiment's 128 for the parity rows)."""
    saved = train.HEAD_BATCH_SIZE
    train.HEAD_BATCH_SIZE = saved if size is None else size
    try:
        yield
    finally:
        train.HEAD_BATCH_SIZE = saved


def _fit(config: RunConfig, sel: Any, base: np.ndarray, batch: int | None) -> tuple[np.ndarray, float, int]:
    """The pipeline's head-mode training (label check, :func:`kern_finetune.training.train.fit_head`, smoothing, spread)."""
    with _head_batch(batch):
        out, info = fit_row(config, sel, base)
    return out, info["seconds"], info.get("epochs_run", 0)


def _score(vectors: np.ndarray, sel: Any, gold: np.ndarray, seed: int, probe: bool) -> dict[str, float]:
    test = sel.test_idx
    classes = np.full(len(sel.ids), -1)
    classes[test] = gold
    known = [i for i in sel.labeled_idx if sel.gold[i] is not None]  # the training records whose gold is known
    classes[known] = [int(sel.gold[i]) for i in known]  # type: ignore[arg-type]
    first = score_row(vectors, sel, classes, seed)  # top_5..1000 and refinery's threshold search
    per = neighbour_purity(vectors[test], gold, ks=(1000,))
    row = {
        "top_1k": first.pop("top_1000"),
        **first,
        "top_1k_250": float(100 * per[1000][sample_queries(len(test), 250, seed)].mean()),
    }
    if probe:
        lab = sel.labeled_idx
        to_class = gold_to_class(sel)  # the pipeline's gold -> class mapping
        assert to_class is not None
        y_test = np.array([to_class[sel.gold[i]] for i in test])  # type: ignore[index]
        row["probe_accuracy"] = linear_probe(vectors[lab], sel.y[lab], vectors[test], y_test, labels=sel.classes,
                                             seed=seed)["accuracy"]
        # 2D views as in the report: fitted on the training records, 15-NN accuracy of the test records in 2D
        fit = sel.train_idx
        for method in ("pca", "simplex"):
            points = projection_2d(vectors[fit], sel.y[fit], vectors[test], method=method, seed=seed)
            sep = separation_2d(points, gold, seed=seed)
            row[f"knn_2d_{method}"], row[f"silhouette_2d_{method}"] = sep["knn_accuracy"], sep["silhouette"]
    return row


def run(rows: list[tuple[str, RunConfig | None, int | None]], seeds: list[int], probe: bool) -> list[dict[str, Any]]:
    results = []
    for seed in seeds:
        sel, base, gold = load_sample(seed)
        for name, config, batch in rows:
            if config is None:
                vec, seconds, epochs = base, 0.0, 0
            else:
                vec, seconds, epochs = _fit(replace(config, seed=seed), sel, base, batch)
            row = {"row": name, "seed": seed, "train_seconds": round(seconds, 2), "epochs": epochs,
                   **_score(vec, sel, gold, seed, probe)}
            results.append(row)
            print(" ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()), flush=True)
    return results


def summarise(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for name in dict.fromkeys(r["row"] for r in results):
        rs = [r for r in results if r["row"] == name]
        s: dict[str, Any] = {"row": name, "seeds": len(rs)}
        for key in ("top_1k", "top_1k_250", "top_5", "top_10", "top_25", "top_100", "lt_10", "lt_100", "same_class",
                    "probe_accuracy", "knn_2d_pca", "knn_2d_simplex",
                    "silhouette_2d_pca", "silhouette_2d_simplex", "train_seconds"):
            vals = [r[key] for r in rs if r.get(key) is not None]
            if vals:
                s[key] = float(np.mean(vals))
                s[key + "_std"] = float(np.std(vals))
        out.append(s)
    return out


def markdown(summary: list[dict[str, Any]], command: str, info: dict[str, Any]) -> str:
    lines = [f"Command: `{command}`", "", f"Machine: {info}", "",
             "| row | seeds | top_10 | top_100 | top_1k all queries | top_1k 250 queries | search < 10 results | "
             "< 100 results | same class | probe acc | 2D 15-NN acc, PCA | 2D 15-NN acc, simplex | train s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in summary:
        def f(key: str) -> str:
            return f"{s[key]:.2f} ± {s[key + '_std']:.2f}" if key in s else "-"
        lines.append(f"| {s['row']} | {s['seeds']} | {f('top_10')} | {f('top_100')} | {f('top_1k')} | {f('top_1k_250')} | "
                     f"{f('lt_10')} % | {f('lt_100')} % | {f('same_class')} % | "
                     f"{f('probe_accuracy')} | {f('knn_2d_pca')} | {f('knn_2d_simplex')} | {f('train_seconds')} |")
    lines += ["", "top_5 and top_25 in compare.json. search: refinery's threshold search (kern_finetune.refinery.search.threshold_search): "
              "300 seeded test queries among all 20,000 records, the 100 nearest within the embedding's similarity "
              "threshold; shares of queries with fewer than 10 / 100 results, and the same-class share of what is "
              "returned (judged on records with gold: test records and the 927 training records with known gold). "
              "Train s: head training (label check, smoothing and spread excluded), measured under load."]
    if any("knn_2d_pca" in s for s in summary):
        lines += ["", "2D: projections fitted on the training records, 5-fold 15-NN accuracy (percent) of the test "
                  "records' gold class in 2D (silhouettes in compare.json). \"simplex\" = probability-weighted class "
                  "corners of a logistic regression (kern_finetune.evaluation.evaluate.projection_2d)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="42,43,44")
    ap.add_argument("--name", default="compare", help="results file name")
    ap.add_argument("--rows", default="raw,native,quaterion,default",
                    help="which rows, by a word of their name (raw, native, quaterion, default)")
    args = ap.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))  # 1 when two benchmarks share the 2 cores
    rows: list[tuple[str, RunConfig | None, int | None]] = [
        ("raw all-MiniLM-L6-v2", None, None),
        ("triplet parity, native (2022 settings)", PARITY, PARITY_BATCH),
        ("triplet parity, quaterion (2022 settings)", replace(PARITY, engine="quaterion"), PARITY_BATCH),
        ("default: supcon t=0.5 + label check, head alone", DEFAULT, None),
    ]
    words = args.rows.split(",")
    rows = [row for row in rows if any(w in row[0] for w in words)]
    results = run(rows, seeds, probe=True)
    summary = summarise(results)
    command = "python benchmarks/compare.py " + " ".join(sys.argv[1:])
    info = machine()
    md = markdown(summary, command.strip(), info)
    print(md)
    write_results(args.name, {"command": command.strip(), "machine": info, "summary": summary, "runs": results}, md)


if __name__ == "__main__":
    main()
