"""A new project's size: the default head vs the search-floor head on 1,000 records of the sample.

The same seeded 1,000-record slice the tests use (``tests/conftest.py`` ``subset_records``: the sample shuffled
with ``random.Random(7)``), through :func:`kern_finetune.pipeline.run_pipeline` with each head's settings.
It showed why ``--search-floor 5 --raw-weight auto`` stayed opt-in: on a project this small it hardly trains.
The search-floor head left the package in the prune of issue 31 (``docs/decisions.md``): this script runs
only at commit 3cc078b or earlier, and ``results/small_project.md`` is kept as a record.

    python benchmarks/small_project.py
"""

from __future__ import annotations

import random
import tempfile
from pathlib import Path

from _common import machine, write_results

from kern_finetune.config import RunConfig, default_cache_dir
from kern_finetune.refinery.export import load_export
from kern_finetune.pipeline import run_pipeline

ROOT = Path(__file__).resolve().parents[1]
ROWS = (
    ("default: supcon t=0.5 + label check, head alone", {}),
    ("search-floor head (--search-floor 5 --raw-weight auto)", {"search_floor": 5.0, "raw_weight": "auto"}),
)
KS = ("10", "25", "100")


def main() -> None:
    records = load_export(ROOT / "samples" / "ag_news" / "export.json.gz")
    random.Random(7).shuffle(records)
    records = records[:1000]
    rows = []
    for name, options in ROWS:
        config = RunConfig(task="Topic", gold_attribute="Class Index", cache_dir=default_cache_dir(),
                           **{"mode": "head", **options})  # named: auto would pick full mode on 1,000 records
        with tempfile.TemporaryDirectory() as out:
            m = run_pipeline(records, config, out_dir=Path(out) / "run").metrics
        rows.append({"row": name, "raw": {k: round(m["top_k"]["raw"][k], 2) for k in KS},
                     "finetuned": {k: round(m["top_k"]["finetuned"][k], 2) for k in KS},
                     "raw_weight": m["training"].get("raw_weight"),
                     "best_val_loss": round(m["training"]["best_val_loss"], 4), "epochs_run": m["training"]["epochs_run"],
                     "n_test": m["n_test"]})
    lines = ["Command: `python benchmarks/small_project.py`", "", f"Machine: {machine()}", "",
             f"1,000 seeded records of the sample, {rows[0]['n_test']} test records (top_k among them, k capped "
             "at n-1, so top_1k is meaningless here).", "",
             "| row | top_10 raw / fine-tuned | top_25 raw / fine-tuned | top_100 raw / fine-tuned | blend | best validation loss (epochs) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        cells = " | ".join(f"{r['raw'][k]:.2f} / {r['finetuned'][k]:.2f}" for k in KS)
        lines.append(f"| {r['row']} | {cells} | {r['raw_weight']} | {r['best_val_loss']} ({r['epochs_run']}) |")
    write_results("small_project", {"rows": rows, "machine": machine()}, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
