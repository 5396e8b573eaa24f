"""End to end: ``kern-finetune run`` on a 1,000-record subset of the bundled sample."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from kern_finetune.cli import main


@pytest.fixture(scope="module")
def subset_file(default_head_run) -> Path:
    return default_head_run.export


THRESHOLD = 0.7  # RunConfig's default weak-label threshold, written out: the counts below depend on it


@pytest.fixture(scope="module")
def run_dir(default_head_run) -> Path:
    """``run`` with the shipped defaults but ``--mode head`` and ``--device cpu`` (conftest's DEFAULT_HEAD_RUN_ARGS,
    with ``--threshold`` THRESHOLD): the outcome tests judge what users get from the head. One run per session,
    shared with tests/test_model_folder.py."""
    from conftest import DEFAULT_HEAD_RUN_ARGS

    assert DEFAULT_HEAD_RUN_ARGS[DEFAULT_HEAD_RUN_ARGS.index("--threshold") + 1] == str(THRESHOLD)
    return default_head_run.out


def _expected_split(records: list[dict]) -> tuple[int, int, list[str]]:
    """Counted straight from the export, independently of kern_finetune.labels.select: (labeled, test, test gold)."""
    labeled, test_gold = 0, []
    for r in records:
        weak_ok = r["__Topic__WEAK_SUPERVISION"] is not None and float(r["__Topic__WEAK_SUPERVISION__confidence"]) > THRESHOLD
        if r["__Topic__MANUAL"] is not None or weak_ok:
            labeled += 1
        elif r["Class Index"] is not None:
            test_gold.append(r["Class Index"])
    return labeled, len(test_gold), test_gold


def test_outputs_are_complete(run_dir: Path, subset_records):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("n_train", "n_val", "n_test", "chance", "top_k", "classification", "seconds"):
        assert key in metrics
    # The seeded split is exact: every labeled record trains or validates unless the label check dropped it,
    # every other record with a gold value is a test record (the subset has no empty text).
    n_labeled, n_test, test_gold = _expected_split(subset_records)
    assert (n_labeled, n_test) == (538, 462)  # the subset itself (conftest's seed 7) is what we think it is
    dropped = metrics["label_check"]["n_flagged"] if metrics.get("label_check", {}).get("action") == "drop" else 0
    assert metrics["n_train"] + metrics["n_val"] + dropped == n_labeled
    assert metrics["n_test"] == n_test
    assert sum(metrics["train_class_counts"].values()) == metrics["n_train"]
    assert sum(metrics["val_class_counts"].values()) == metrics["n_val"]
    shares = np.array(list(Counter(test_gold).values())) / n_test
    assert metrics["chance"] == pytest.approx(100 * (shares**2).sum())
    assert set(metrics["top_k"]["raw"]) == {"5", "10", "25", "50", "75", "100", "250", "1000"}
    assert set(metrics["classification"]["finetuned"]) >= {"accuracy", "macro_f1"}
    seconds = metrics["seconds"]
    assert "smoothing" in metrics  # the default --smooth auto ran (it may choose weight 0)
    assert "spread" in metrics  # the default --spread auto ran (it may choose strength 0)
    assert set(seconds) == {"encode", "train", "smooth", "spread", "model_door", "evaluate", "verdict", "total"}
    parts = seconds["encode"] + seconds["train"] + seconds["smooth"] + seconds["spread"] + seconds["evaluate"]
    wall = float((run_dir / "wall_seconds.txt").read_text())
    assert min(seconds.values()) > 0 and parts <= seconds["total"] + 0.03 <= wall + 0.03  # rounded to 0.01 each
    html = (run_dir / "report.html").read_text()
    # two PNG plots (violin, top_k by k), the 2D views as inline SVG, no external resource
    assert html.count("data:image/png;base64,") == 2 and "<svg" in html and "<script src" not in html
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)  # texts may mention URLs; nothing loads one
    from kern_finetune.output.save import load_vectors

    ids, vec = load_vectors(run_dir / "vectors.npz")
    assert ids == [r["running_id"] for r in subset_records]
    assert np.allclose(np.linalg.norm(vec, axis=1), 1, atol=1e-5)


def test_fine_tuning_beats_raw_on_the_test_records(run_dir: Path):
    """The outcome: the fine-tuned vectors put more same-class records among a test record's neighbours.

    On this subset's 462 test records, with the defaults at 976ed1e (head, supcon t=0.5, lr 1e-3, 30 epochs,
    label check drop) the gain was top_10 +2.1, top_25 +3.0, top_50 +3.4, top_100 +3.0 points (raw 63.9 /
    58.1 / 52.3 / 45.3). A head on shuffled labels lost 1.5 points at top_100 and raw vectors gain exactly
    0, so 1.5 points is a bound a broken pipeline cannot meet. top_1000 cannot tell them apart here:
    neighbour_purity clips k to n - 1 = 461, where every embedding scores the same.
    """
    metrics = json.loads((run_dir / "metrics.json").read_text())
    raw, tuned = metrics["top_k"]["raw"], metrics["top_k"]["finetuned"]
    # Raw purity is a property of the base model and the test records alone: a known answer.
    assert (raw["10"], raw["100"]) == (pytest.approx(63.87, abs=0.5), pytest.approx(45.29, abs=0.5))
    gains = {k: round(tuned[k] - raw[k], 2) for k in ("25", "50", "100")}
    assert min(gains.values()) >= 1.5, gains
    assert tuned["10"] > raw["10"], (raw["10"], tuned["10"])
    assert raw["1000"] == pytest.approx(tuned["1000"], abs=1e-9)  # k clipped to 461: every embedding ties


def test_verdict_without_gold_agrees_with_gold(run_dir: Path):
    """The default run's verdict (held-out labels as judges, no gold) points the way gold points on the test
    records; the report states it before anything else and the model card carries its figures."""
    verdict = json.loads((run_dir / "metrics.json").read_text())["verdict"]
    assert {"n_heldout", "new", "raw", "conclusion", "interval", "by_judge"} <= set(verdict)
    assert "current" not in verdict  # a record export carries no embedding
    for name in ("new", "raw"):
        assert set(verdict[name]) == {"first_screen_same", "same_class", "lt_10"}
    assert verdict["n_heldout"] > 50 and set(verdict["by_judge"]) == {"manual", "weak"}
    gold = verdict["gold"]
    assert verdict["verdict"] in ("better", "worse"), verdict["conclusion"]
    assert verdict["verdict"] == gold["direction"] and gold["agrees"] is True
    html = (run_dir / "report.html").read_text()
    assert html.index('class="verdict') < html.index("<h2>")
    card = (run_dir / "model" / "README.md").read_text()
    assert "all-MiniLM-L6-v2" in card and "model door" in card and "does **not** reproduce" in card
    assert f"{verdict['new']['same_class']:.1f}%" in card


def test_saved_model_reproduces_the_evaluated_vectors(run_dir: Path, subset_records, shared_cache):
    """The model folder's head (the first rows of its Dense layer) gives the vectors that, smoothed and spread
    as metrics.json says, are vectors.npz; the whole folder gives the head beside the base share."""
    import torch
    from sentence_transformers import SentenceTransformer

    from kern_finetune.vectors.encode import Encoder
    from kern_finetune.output.save import load_vectors
    from kern_finetune.vectors.smooth import base_neighbours, smooth
    from kern_finetune.vectors.spread import lift, local_radius

    ids, vec = load_vectors(run_dir / "vectors.npz")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    texts = [f"{r['Title']}. {r['Description']}" for r in subset_records]
    assert ids == [str(r["running_id"]) for r in subset_records]
    base = Encoder(cache_dir=shared_cache).encode(texts, progress=False)
    state = torch.load(run_dir / "model" / "3_Dense" / "pytorch_model.bin")
    weight, bias = state["linear.weight"].double().numpy(), state["linear.bias"].double().numpy()
    full = base @ weight.T + bias
    model = SentenceTransformer(str(run_dir / "model"), device="cpu")
    rows = slice(None, None, 8)  # the folder encodes row by row: every 8th record shows it (1,000 took ~20 s)
    assert np.allclose(model.encode(texts[rows], normalize_embeddings=True),
                       (full / np.linalg.norm(full, axis=1, keepdims=True))[rows], atol=1e-4)
    dim = base.shape[1]
    share = metrics["model_door"]["share"]
    assert "refinery's embedder embeds one attribute ('Title')" in metrics["model_door"]["note"]  # Title + Description
    if share:  # the rows after the head: the share times the base vector
        assert np.allclose(weight[dim:], share * np.eye(dim)) and np.allclose(bias[dim:], 0)
    got = full[:, :dim] / np.linalg.norm(full[:, :dim], axis=1, keepdims=True)
    weight = metrics["smoothing"]["weight"]  # the written vectors: the head's, smoothed over the base neighbours
    if weight:
        got = smooth(got.astype(np.float32), base_neighbours(base)[0], weight)
    strength = metrics["spread"]["strength"]  # then lifted by the local radius of the smoothed vectors
    if strength:
        got = lift(got, local_radius(got)[0], strength)
    assert np.allclose(got, vec, atol=1e-4)


def test_second_run_encodes_nothing(subset_file, shared_cache, tmp_path, run_dir):
    # what follows the encoding is cut short (1 epoch, no label check, smoothing or spread): the cache is checked
    code = main([
        "run", "--export", str(subset_file), "--task", "Topic", "--gold-attribute", "Class Index",
        "--out", str(tmp_path), "--cache-dir", str(shared_cache), "--epochs", "1", "--mode", "head",
        "--noise-filter", "off", "--smooth", "0", "--spread", "0",
    ])
    assert code == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["encoded"] == 0 and metrics["from_cache"] == 1000


@pytest.mark.parametrize(
    "args, message",
    [
        (["--task", "Nope"], "tasks found: Topic"),
        (["--threshold", "1.5"], "threshold"),
        (["--mode", "full", "--wise-alpha", "0"], "wise_alpha must be in (0, 1]"),
        (["--text-attributes", "Headline"], "not in the export"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(subset_file, tmp_path, args, message, capsys):
    """In process (``cli.main``); the first case also as ``python -m kern_finetune``, whose stderr shows what
    importing the package prints besides the one line."""
    assert main(["run", "--export", str(subset_file), "--out", str(tmp_path), *args]) != 0
    err = capsys.readouterr().err
    assert message in err
    assert err.strip().count("\n") == 0 and "Traceback" not in err
    if args[0] != "--task":
        return
    proc = subprocess.run(
        [sys.executable, "-m", "kern_finetune", "run", "--export", str(subset_file), "--out", str(tmp_path), *args],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode != 0
    assert message in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr


def test_missing_export_file(tmp_path):
    assert main(["run", "--export", str(tmp_path / "none.json"), "--out", str(tmp_path)]) != 0


def test_help_explains_itself():
    proc = subprocess.run([sys.executable, "-m", "kern_finetune", "run", "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    for word in ("--export", "--task", "--gold-attribute", "--threshold", "--help-all", "examples:"):
        assert word in proc.stdout
    assert "--loss" not in proc.stdout  # an advanced option: tests/test_help.py


def test_quaterion_engine_through_the_pipeline(subset_records, shared_cache, tmp_path):
    """--engine quaterion writes the same outputs, and its exported model gives the evaluated vectors."""
    from sentence_transformers import SentenceTransformer

    from kern_finetune.config import RunConfig
    from kern_finetune.pipeline import run_pipeline

    config = RunConfig(task="Topic", gold_attribute="Class Index", engine="quaterion", loss="triplet",
                       epochs=3, noise_filter="off", cache_dir=shared_cache, smooth="0", spread="0")
    result = run_pipeline(subset_records, config, out_dir=tmp_path)
    assert result.metrics["training"]["engine"] == "quaterion"
    assert (tmp_path / "metrics.json").exists() and (tmp_path / "report.html").exists()
    texts = [f"{r['Title']}. {r['Description']}" for r in subset_records[:8]]
    got = SentenceTransformer(str(tmp_path / "model"), device="cpu").encode(texts)
    assert np.allclose(got, result.model_vectors[:8], atol=1e-4)
