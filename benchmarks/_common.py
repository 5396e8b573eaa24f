"""Shared set-up for the benchmarks: the full bundled sample, its selection and cached base vectors."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from kern_finetune.config import default_cache_dir  # noqa: E402
from kern_finetune.encode import Encoder  # noqa: E402
from kern_finetune.evaluate import neighbour_purity  # noqa: E402
from kern_finetune.export import load_export, resolve_task  # noqa: E402
from kern_finetune.select import Selection, select_labels  # noqa: E402

SAMPLE = ROOT / "samples" / "ag_news" / "export.json.gz"
RESULTS = ROOT / "benchmarks" / "results"


def load_sample(seed: int = 42) -> tuple[Selection, np.ndarray, np.ndarray]:
    """Selection at the default threshold, base vectors of every record, gold codes of the test records."""
    records = load_export(SAMPLE)
    sel = select_labels(
        records, resolve_task(records, "Topic"), text_attributes=["Title", "Description"],
        gold_attribute="Class Index", seed=seed,
    )
    base = Encoder(cache_dir=default_cache_dir()).encode(sel.texts)
    gold = np.array([int(sel.gold[i]) for i in sel.test_idx])  # type: ignore[arg-type]
    return sel, base, gold


def top_1k(vectors: np.ndarray, gold: np.ndarray) -> float:
    """top_1k in percent over all test queries."""
    return float(100 * neighbour_purity(vectors, gold, ks=(1000,))[1000].mean())


def machine() -> dict[str, object]:
    try:
        load = os.getloadavg()[0]
    except OSError:  # pragma: no cover
        load = None
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return {"cpus": os.cpu_count(), "load_1min_at_start": load, "python": platform.python_version(), "commit": commit,
            "date": time.strftime("%Y-%m-%d %H:%M")}


def write_results(name: str, payload: dict, markdown: str) -> None:
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2))
    (RESULTS / f"{name}.md").write_text(markdown)
