"""Full-encoder fine-tuning (``--mode full``) on the full bundled sample, through the real pipeline.

    python benchmarks/full_mode.py [--seeds 42,43,44] [--encoder-lr 3e-5] [--pseudo-labels auto|off|P]
        [--encoder-memory 512] [--wise-alpha 0.7] [--no-group-by-length] [--no-head]
        -> benchmarks/results/full_mode.{json,md}
    python benchmarks/full_mode.py --rewrite   # full_mode.md again from full_mode.json, nothing run

One epoch over the training texts on CPU (batch 32 grouped by length, supcon t=0.5, label check; the
encoder's learning rate is ``--encoder-lr``; self-training per ``--pseudo-labels``), then every record is
re-encoded by the fine-tuned model and evaluated like any run. ``--no-group-by-length`` trains on the
class-aware batches as drawn (:class:`kern_finetune.training.train_full.FullTrainer`'s ``group_by_length=False``), the way
full mode trained before length grouping existed. Unless ``--no-head``, each run also fits
the default head on top of the fine-tuned vectors ("full + head") to see whether stacking both helps.
Rows are merged into the results by (encoder lr, pseudo-label threshold, length grouping, memory rows,
WiSE alpha, seed), so
settings can run one after another or side by side (BENCH_THREADS=1 each on 2 cores). 10-25 minutes
per run on 2 cores; a GPU is used when present.

Kept as a record: ``--encoder-lr`` and ``--encoder-memory`` set ``RunConfig`` fields that the prune of issue 31
removed (the encoder's rate is now ``kern_finetune.training.train_full.ENCODER_LR``; the cross-batch memory, neutral
here, left the package; ``docs/decisions.md``). The script runs as written at commit 3cc078b or earlier.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from _common import RESULTS, SAMPLE, machine

from kern_finetune import pipeline
from kern_finetune.training import train_full
from kern_finetune.config import RunConfig
from kern_finetune.evaluation.evaluate import evaluate
from kern_finetune.refinery.export import load_export
from kern_finetune.training.train import fit_head


COMMAND = ("python benchmarks/full_mode.py --seeds SEEDS --encoder-lr LR --pseudo-labels P --encoder-memory ROWS "
           "--wise-alpha A [--no-group-by-length]")


def _key(row: dict) -> tuple:
    """What a row measured: (encoder lr, pseudo-label threshold, grouped by length, memory rows, WiSE alpha, seed).

    Rows from before self-training, length grouping, the cross-batch memory and WiSE-FT existed ran
    without them (alpha 1).
    """
    t = row["training"]
    return (row["encoder_lr"], row.get("pseudo_labels") or 0.0, bool(t.get("group_by_length")),
            int(t.get("encoder_memory", t.get("memory_size")) or 0), float(t.get("wise_alpha") or 1.0), row["seed"])


@contextlib.contextmanager
def _length_grouping(enabled: bool) -> Iterator[None]:
    """Full mode with (the product's only setting) or without length-grouped batches.

    ``RunConfig`` has no switch for it: grouping changes speed, not what is learned, so users get no option.
    The pipeline looks ``FullTrainer`` up in :mod:`kern_finetune.training.train_full` when it trains, so this benchmark
    swaps in a subclass whose ``from_config`` sets ``group_by_length=False`` for the duration of one run.
    """
    if enabled:
        yield
        return
    original = train_full.FullTrainer

    class Ungrouped(original):  # type: ignore[misc, valid-type]
        @classmethod
        def from_config(cls, config: RunConfig, **kw: object) -> train_full.FullTrainer:
            return super().from_config(config, **{**kw, "group_by_length": False})

    train_full.FullTrainer = Ungrouped  # type: ignore[misc]
    try:
        yield
    finally:
        train_full.FullTrainer = original  # type: ignore[misc]


def _run(records: list, seed: int, encoder_lr: float, pseudo_labels: str, stack_head: bool, *,
         encoder_memory: int, wise_alpha: float, group_by_length: bool = True) -> dict:
    config = RunConfig(task="Topic", gold_attribute="Class Index", text_attributes=["Title", "Description"],
                       mode="full", seed=seed, encoder_lr=encoder_lr, pseudo_labels=pseudo_labels,
                       encoder_memory=encoder_memory, wise_alpha=wise_alpha)
    with tempfile.TemporaryDirectory() as out, _length_grouping(group_by_length):
        t = time.perf_counter()
        result = pipeline.run_pipeline(records, config, out_dir=Path(out), progress=print)
        wall = time.perf_counter() - t
    assert bool(result.metrics["training"].get("group_by_length")) == group_by_length
    m = result.metrics
    stacked = None
    if stack_head:  # the default head, fitted on the fine-tuned vectors (same selection, label check and seed)
        sel, base = result.selection, result.raw_vectors
        assert sel is not None and base is not None
        head_config = replace(config, mode="head")
        trainer = fit_head(result.vectors, sel, head_config)
        stacked = evaluate(base, trainer.transform(result.vectors), sel, head_config).metrics
    return {"seed": seed, "encoder_lr": encoder_lr, "machine": machine(),
            "pseudo_labels": config.pseudo_threshold,
            "n_pseudo_labels": m.get("pseudo_labels", {}).get("n_added", 0),
            "top_1k_raw": m["top_k"]["raw"]["1000"], "top_1k": m["top_k"]["finetuned"]["1000"],
            "top_1k_250": m["top_1k_250"]["finetuned"],
            "probe_accuracy_raw": m["classification"]["raw"]["accuracy"],
            "probe_accuracy": m["classification"]["finetuned"]["accuracy"],
            "full_plus_head": None if stacked is None else {
                "top_1k": stacked["top_k"]["finetuned"]["1000"],
                "probe_accuracy": stacked["classification"]["finetuned"]["accuracy"]},
            "separation_2d": m["separation_2d"], "seconds": m["seconds"],
            "training": {k: v for k, v in m["training"].items() if k != "history"},
            "history": m["training"].get("history"), "wall_seconds": wall}


def _markdown(rows: list[dict]) -> str:
    lines = [f"Command: `{COMMAND}` (BENCH_THREADS=1 "
             "when two ran side by side on the 2 cores; each row's machine and commit are in full_mode.json)", "",
             "| encoder lr | pseudo-labels p > (added) | grouped by length | memory rows | WiSE alpha | seed | top_1k raw | "
             "top_1k full-encoder | top_1k full + head | probe acc raw | probe acc full | best step / steps | train s | total s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=_key):
        stacked = f"{r['full_plus_head']['top_1k']:.2f}" if r.get("full_plus_head") else "-"
        pseudo = f"{r['pseudo_labels']:g} ({r['n_pseudo_labels']})" if r.get("pseudo_labels") else "off"
        grouped = "yes" if r["training"].get("group_by_length") else "no"
        _, _, _, memory, alpha, _ = _key(r)
        lines.append(f"| {r['encoder_lr']:g} | {pseudo} | {grouped} | {memory or 'off'} | {alpha:g} | {r['seed']} | {r['top_1k_raw']:.2f} | "
                     f"{r['top_1k']:.2f} | {stacked} | "
                     f"{r['probe_accuracy_raw']:.2f} | {r['probe_accuracy']:.2f} | "
                     f"{r['training']['best_step']} / {r['training']['steps']} | "
                     f"{r['seconds']['train']:.0f} | {r['seconds']['total']:.0f} |")
    lines += ["", "top_1k over all 9,146 test queries; probe = logistic regression on the labeled records, accuracy "
              "on the test records' gold class. `train s` includes re-encoding all 20,000 records with the "
              "fine-tuned model; `-` = not measured (run before the full + head column existed, or with --no-head).",
              "", "Grouped by length `no`: runs from before length grouping existed (commits 57ec1d3 to 4494125, "
              "in full_mode.json). `--no-group-by-length --pseudo-labels off --encoder-memory 0 --wise-alpha 1` runs "
              "that code path today: on a 400-record subset (lr 1.5e-5, seed 42, 5 steps) it gives vectors "
              "bit-identical to commit 4c221b7's. The full runs were not repeated; their `full + head` column used "
              "the head defaults of their commit."]
    groups: dict[tuple, list[tuple[float, ...]]] = {}
    for r in rows:
        sep = r["separation_2d"]
        groups.setdefault(_key(r)[:5], []).append((
            r["top_1k"], r["probe_accuracy"] - r["probe_accuracy_raw"], sep["raw_pca"]["knn_accuracy"],
            sep["finetuned_pca"]["knn_accuracy"], sep["finetuned_simplex"]["knn_accuracy"]))
    lines += ["", "| encoder lr | pseudo-labels p > | grouped by length | memory rows | WiSE alpha | seeds | top_1k mean ± std | "
              "probe gain over raw, mean | 2D 15-NN acc raw PCA, mean | full PCA, mean | full simplex, mean |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for (lr, p, g, mem, alpha), vals in sorted(groups.items()):
        top, gain, raw_pca, pca, simplex = np.array(vals).T
        lines.append(f"| {lr:g} | {f'{p:g}' if p else 'off'} | {'yes' if g else 'no'} | {mem or 'off'} | {alpha:g} | "
                     f"{len(vals)} | {top.mean():.2f} ± {top.std():.2f} | {gain.mean():+.2f} | {raw_pca.mean():.2f} | "
                     f"{pca.mean():.2f} | {simplex.mean():.2f} |")
    lines += ["", "2D 15-NN acc: 5-fold 15-NN accuracy of the test records' gold class in 2D (projections fitted on "
              "the training records; kern_finetune.evaluation.evaluate.separation_2d), per run in full_mode.json."]
    return "\n".join(lines) + "\n"


def _merge(new_rows: list[dict]) -> list[dict]:
    """Add ``new_rows`` to results/full_mode.json (replacing the same encoder lr + seed) under a file lock."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "full_mode.json"
    with open(RESULTS / ".full_mode.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        old = json.loads(path.read_text()) if path.exists() else {}
        rows = old.get("runs", [])
        keys = {_key(r) for r in new_rows}
        rows = [r for r in rows if _key(r) not in keys] + new_rows
        path.write_text(json.dumps({"command": COMMAND, "runs": rows}, indent=2))
        (RESULTS / "full_mode.md").write_text(_markdown(rows))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="42")
    ap.add_argument("--encoder-lr", type=float, default=RunConfig().encoder_lr)
    ap.add_argument("--pseudo-labels", default=RunConfig().pseudo_labels)
    ap.add_argument("--encoder-memory", type=int, default=RunConfig().encoder_memory)
    ap.add_argument("--wise-alpha", type=float, default=RunConfig().wise_alpha)
    ap.add_argument("--no-group-by-length", action="store_true",
                    help="train on class-aware batches as drawn, not regrouped by text length (the 'grouped: no' rows)")
    ap.add_argument("--no-head", action="store_true", help="skip fitting the default head on the fine-tuned vectors")
    ap.add_argument("--rewrite", action="store_true", help="only rewrite full_mode.md from full_mode.json")
    args = ap.parse_args()
    if args.rewrite:
        rows = json.loads((RESULTS / "full_mode.json").read_text())["runs"]
        (RESULTS / "full_mode.md").write_text(_markdown(rows))
        return
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))  # 1 when two benchmarks share the 2 cores
    records = load_export(SAMPLE)
    new_rows = []
    for seed in [int(s) for s in args.seeds.split(",")]:
        row = _run(records, seed, args.encoder_lr, args.pseudo_labels, not args.no_head,
                   encoder_memory=args.encoder_memory, wise_alpha=args.wise_alpha,
                   group_by_length=not args.no_group_by_length)
        new_rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "history"}), flush=True)
    print(_markdown(_merge(new_rows)))


if __name__ == "__main__":
    main()
