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
from kern_finetune.vectors.encode import Encoder  # noqa: E402
from kern_finetune.config import RunConfig  # noqa: E402
from kern_finetune.evaluation.evaluate import neighbour_purity  # noqa: E402
from kern_finetune.refinery.search import sample_queries, threshold_search  # noqa: E402
from kern_finetune.labels.label_check import find_label_issues, without_label_issues  # noqa: E402
from kern_finetune.refinery.export import load_export, resolve_task  # noqa: E402
from kern_finetune.labels.select import Selection, select_labels  # noqa: E402

SAMPLE = ROOT / "samples" / "ag_news" / "export.json.gz"
RESULTS = ROOT / "benchmarks" / "results"
FIRST_SCREEN_KS = (5, 10, 25, 100, 1000)
SEARCH_QUERIES = 300
PROJECTS: dict[str, tuple[Path, str, list[str], str]] = {
    # name: (export, task, text attributes, gold attribute); exports built by scripts/build_projects.py
    "ag_news": (SAMPLE, "Topic", ["Title", "Description"], "Class Index"),
    # the model door embeds one attribute: sync --door model trains the sample on its first text attribute alone
    "ag_news_title": (SAMPLE, "Topic", ["Title"], "Class Index"),
    "clinc150_intents": (ROOT / "samples" / "clinc150" / "export.json.gz", "Intent", ["text"], "intent"),
    "clinc150_domains": (ROOT / "samples" / "clinc150" / "export.json.gz", "Domain", ["text"], "domain"),
    "rotten_tomatoes": (ROOT / "samples" / "rotten_tomatoes" / "export.json.gz", "Sentiment", ["text"], "category"),
}


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


def load_project(name: str, seed: int = 42) -> tuple[Selection, np.ndarray, np.ndarray]:
    """Selection at the default threshold, base vectors of every record, gold code of every record (-1: none)."""
    path, task, attrs, gold_attribute = PROJECTS[name]
    records = load_export(path)
    sel = select_labels(records, resolve_task(records, task), text_attributes=attrs, gold_attribute=gold_attribute, seed=seed)
    base = Encoder(cache_dir=default_cache_dir()).encode(sel.texts, progress=False)
    values = sorted({g for g in sel.gold if g is not None})  # type: ignore[type-var]
    code = {g: k for k, g in enumerate(values)}
    classes = np.array([code[g] if g is not None else -1 for g in sel.gold])
    return sel, base, classes


def label_checked(sel: Selection, base: np.ndarray, seed: int) -> Selection:
    """The pipeline's label check (drop), as ``run`` does it before training."""
    return without_label_issues(sel, find_label_issues(base, sel, seed=seed))


def fit_row(config: RunConfig, sel: Selection, base: np.ndarray, *, checked: Selection | None = None,
            stages: dict[str, np.ndarray] | None = None) -> tuple[np.ndarray, dict]:
    """The pipeline's head-mode training (label check, then :func:`kern_finetune.training.train.fit_head`, then the
    neighbour smoothing ``config.smooth`` asks for, :func:`kern_finetune.vectors.smooth.smooth_vectors`, then the
    search spread ``config.spread`` asks for, :func:`kern_finetune.vectors.spread.spread_vectors`): the output of every
    record and the training info (:meth:`kern_finetune.training.trainer.TrainResult.to_dict`; ``seconds``: training
    and blend choice, label check, smoothing and spread excluded). ``checked``: ``sel`` after
    :func:`label_checked` with the same seed, to reuse across rows. ``stages``, when given, receives the
    vectors before smoothing (``"head"``) and before the spread (``"smoothed"``)."""
    from kern_finetune.vectors.smooth import smooth_vectors
    from kern_finetune.vectors.spread import spread_vectors
    from kern_finetune.training.train import fit_head

    selected = sel
    if config.noise_filter == "drop":
        sel = checked if checked is not None else label_checked(sel, base, config.seed)
    t = time.perf_counter()
    trainer = fit_head(base, sel, config, progress=False)
    info = {**trainer.result_.to_dict(), "seconds": time.perf_counter() - t}
    vectors = trainer.transform(base)
    stages = {} if stages is None else stages
    stages["head"] = vectors
    if config.smooth_weight != 0.0:  # as the pipeline's fit stage does after training
        vectors, smoothing = smooth_vectors(vectors, base, selected, weight=config.smooth_weight, seed=config.seed)
        info.update(smooth_weight=smoothing.weight, smooth_table=smoothing.table, smooth_seconds=smoothing.seconds)
    stages["smoothed"] = vectors
    if config.spread_strength != 0.0:
        vectors, spread = spread_vectors(vectors, base, strength=config.spread_strength, seed=config.seed)
        info.update(spread_strength=spread.strength, spread_table=spread.table, spread_seconds=spread.seconds)
    return vectors, info


def score_row(vectors: np.ndarray, sel: Selection, classes: np.ndarray, seed: int) -> dict[str, float]:
    """First-screen figures of one embedding: top_5/10/25/100/1000 over the test records (neighbours among
    the test records) and refinery's threshold search (``SEARCH_QUERIES`` seeded test queries, among all
    records; ``classes``: gold code per record, -1 where none)."""
    test = sel.test_idx
    per = neighbour_purity(vectors[test], classes[test], ks=FIRST_SCREEN_KS)
    row = {f"top_{k}": float(100 * v.mean()) for k, v in per.items()}
    queries = test[sample_queries(len(test), SEARCH_QUERIES, seed)]
    ts = threshold_search(vectors, queries, classes, seed=seed)
    row.update({k: ts[k] for k in ("lt_10", "lt_100", "same_class", "median_results", "first_screen_same")})
    return row


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
    """Write ``<name>.json`` and ``<name>.md``; hand-written notes in ``<name>.notes.md``, when that file
    exists, are appended to the markdown, so a rerun keeps them."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(payload, indent=2))
    notes = RESULTS / f"{name}.notes.md"
    text = markdown + "\n" + notes.read_text(encoding="utf-8") if notes.exists() else markdown
    (RESULTS / f"{name}.md").write_text(text)
