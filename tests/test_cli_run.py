"""End to end: ``kern-finetune run`` on a 1,000-record subset of the bundled sample."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from kern_finetune.cli import main


@pytest.fixture(scope="module")
def subset_file(subset_records, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("export") / "subset.json"
    path.write_text(json.dumps(subset_records))
    return path


@pytest.fixture(scope="module")
def run_dir(subset_file, shared_cache, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run")
    code = main([
        "run", "--export", str(subset_file), "--task", "Topic", "--gold-attribute", "Class Index",
        "--out", str(out), "--cache-dir", str(shared_cache), "--epochs", "5",
    ])
    assert code == 0
    return out


def test_outputs_are_complete(run_dir: Path, subset_records):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("n_train", "n_val", "n_test", "chance", "top_k", "top_1k_250", "classification", "seconds"):
        assert key in metrics
    assert metrics["n_train"] + metrics["n_val"] + metrics["n_test"] <= 1000
    assert set(metrics["top_k"]["raw"]) == {"5", "10", "25", "50", "75", "100", "250", "1000"}
    assert set(metrics["classification"]["finetuned"]) >= {"accuracy", "macro_f1"}
    assert set(metrics["seconds"]) == {"encode", "train", "evaluate", "total"}
    assert 0 < metrics["chance"] < 100
    html = (run_dir / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3 and "<script src" not in html
    from kern_finetune.save import load_vectors

    ids, vec = load_vectors(run_dir / "vectors.npz")
    assert ids == [r["running_id"] for r in subset_records]
    assert np.allclose(np.linalg.norm(vec, axis=1), 1, atol=1e-5)


def test_saved_model_reproduces_the_evaluated_vectors(run_dir: Path, subset_records):
    from sentence_transformers import SentenceTransformer

    from kern_finetune.save import load_vectors

    ids, vec = load_vectors(run_dir / "vectors.npz")
    model = SentenceTransformer(str(run_dir / "model"), device="cpu")
    texts = [f"{r['Title']}. {r['Description']}" for r in subset_records[:8]]
    assert np.allclose(model.encode(texts), vec[:8], atol=1e-4)


def test_second_run_encodes_nothing(subset_file, shared_cache, tmp_path, run_dir):
    code = main([
        "run", "--export", str(subset_file), "--task", "Topic", "--gold-attribute", "Class Index",
        "--out", str(tmp_path), "--cache-dir", str(shared_cache), "--epochs", "2",
    ])
    assert code == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["encoded"] == 0 and metrics["from_cache"] == 1000


@pytest.mark.parametrize(
    "args, message",
    [
        (["--task", "Nope"], "tasks found: Topic"),
        (["--threshold", "1.5"], "threshold"),
        (["--mode", "full", "--encoder-lr", "0"], "encoder_lr must be positive"),
        (["--text-attributes", "Headline"], "not in the export"),
    ],
)
def test_bad_input_is_one_line_and_nonzero(subset_file, tmp_path, args, message):
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
    for word in ("--export", "--task", "--gold-attribute", "--threshold", "--loss", "examples:"):
        assert word in proc.stdout


def test_quaterion_engine_through_the_pipeline(subset_records, shared_cache, tmp_path):
    """--engine quaterion writes the same outputs, and its exported model gives the evaluated vectors."""
    from sentence_transformers import SentenceTransformer

    from kern_finetune.config import RunConfig
    from kern_finetune.pipeline import run_pipeline
    from kern_finetune.save import load_vectors

    config = RunConfig(task="Topic", gold_attribute="Class Index", engine="quaterion", loss="triplet",
                       batch_size=128, epochs=3, noise_filter="off", cache_dir=shared_cache)
    result = run_pipeline(subset_records, config, out_dir=tmp_path)
    assert result.metrics["training"]["engine"] == "quaterion"
    assert (tmp_path / "metrics.json").exists() and (tmp_path / "report.html").exists()
    ids, vec = load_vectors(tmp_path / "vectors.npz")
    texts = [f"{r['Title']}. {r['Description']}" for r in subset_records[:8]]
    got = SentenceTransformer(str(tmp_path / "model"), device="cpu").encode(texts)
    assert np.allclose(got, vec[:8], atol=1e-4)
