"""The block-wise evaluation gives today's figures: compared with the one-matrix version on the sample.

    python benchmarks/blocked_evaluation.py

Loads ``kern_finetune/evaluation/evaluate.py`` as it was before issue 19's change (commit 2db3e05, via ``git show``)
and compares, on the bundled sample's cached base vectors: ``top_k`` (every k) and ``top_1k_250`` of the
first 3,000 test records and of all 9,146, and the refinery threshold search (250 seeded test queries
against all 20,000 records). Writes ``benchmarks/results/blocked_evaluation.md``.

Kept as a record: it ran at commit 2db3e05's successor and runs at commit 3cc078b or earlier; the prune of
issue 31 removed ``top_1k_250`` from the product's metrics and :func:`kern_finetune.evaluation.evaluate.purity_summary`.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from _common import ROOT, load_sample

from kern_finetune.evaluation.evaluate import purity_summary

from kern_finetune.refinery.search import sample_queries, threshold_search

BEFORE = "2db3e05"


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "evaluate_before.py"
        path.write_text(subprocess.run(["git", "show", f"{BEFORE}:kern_finetune/evaluation/evaluate.py"], cwd=ROOT, check=True,
                                       capture_output=True, text=True).stdout)
        spec = importlib.util.spec_from_file_location("evaluate_before", path)
        old = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(old)  # type: ignore[union-attr]
    sel, base, gold = load_sample()
    test = sel.test_idx
    lines = ["# Block-wise evaluation vs the one-matrix version (bundled sample, base vectors)", "",
             f"Command: `python benchmarks/blocked_evaluation.py`; before = `kern_finetune/evaluation/evaluate.py` at {BEFORE}. "
             "Seconds measured under load, one after the other in one process.", "",
             "| test records | top_k equal to 4 decimals | max abs difference | top_1k_250 before / after | s before / after |",
             "|---|---|---|---|---|"]
    for n in (3000, len(test)):
        x, c = base[test[:n]], gold[:n]
        q = sample_queries(n, 250, 42)
        t = time.perf_counter()
        per = old.neighbour_purity(x, c)
        t_old = time.perf_counter() - t
        ref = {str(k): float(100 * v.mean()) for k, v in per.items()}
        ref250 = float(100 * per[1000][q].mean())
        t = time.perf_counter()
        new = purity_summary(x, c, q, seed=42)
        t_new = time.perf_counter() - t
        same = all(round(ref[k], 4) == round(new["top_k"][k], 4) for k in ref) and round(ref250, 4) == round(new["top_1k_250"], 4)
        diff = max(abs(ref[k] - new["top_k"][k]) for k in ref)
        lines.append(f"| {n:,} | {same} | {diff:.1e} | {ref250:.4f} / {new['top_1k_250']:.4f} | {t_old:.1f} / {t_new:.1f} |")
        lines.append(f"| | top_k before: {', '.join(f'{k}: {v:.4f}' for k, v in ref.items())} | | | |")
    codes = {g: k for k, g in enumerate(sorted({g for g in sel.gold if g is not None}))}
    rc = np.array([codes[g] if g is not None else -1 for g in sel.gold])
    q = test[sample_queries(len(test), 250, 42)]
    a, b = old.threshold_search(base, q, rc, seed=42), threshold_search(base, q, rc, seed=42)
    lines += ["", f"Threshold search, 250 queries against all {len(base):,} records: equal = **{a == b}**", "",
              f"- before: {a}", f"- after: {b}"]
    out = ROOT / "benchmarks" / "results" / "blocked_evaluation.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
