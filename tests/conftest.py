"""Shared fixtures: a seeded subset of the bundled sample, and an isolated vector cache."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "samples" / "ag_news" / "export.json.gz"
SHARED = ROOT.parent / "shared"
"""The workplace's shared folder beside the repo (CI lays a copy there); never needed at run time."""


def shared_file(relpath: str) -> Path:
    """A file under ``../shared`` for a test that checks against it.

    Under CI (``CI`` set) a missing file fails the test: a check that silently does nothing is a defect.
    Elsewhere (a clone without ``../shared``) the test is skipped with the path it looked for.
    """
    path = SHARED / relpath
    if not path.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{path} is missing: CI lays ../shared beside the repo, so this check must run")
        pytest.skip(f"{path} not present (only CI and the workplace have ../shared)")
    return path


@pytest.fixture(scope="session")
def sample_records() -> list[dict]:
    from kern_finetune.refinery.export import load_export

    return load_export(SAMPLE)


@pytest.fixture(scope="session")
def subset_records(sample_records: list[dict]) -> list[dict]:
    """1,000 records of the bundled sample, seeded (about 540 with a training label)."""
    records = list(sample_records)
    random.Random(7).shuffle(records)
    return records[:1000]


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One vector cache for the whole test session (encoding is the slow part)."""
    return tmp_path_factory.mktemp("vector-cache")


@pytest.fixture(scope="session")
def subset_sel(subset_records: list[dict]):
    """The subset's default label selection (task Topic, gold "Class Index"); tests change only copies."""
    from kern_finetune.refinery.export import resolve_task
    from kern_finetune.labels.select import select_labels

    return select_labels(subset_records, resolve_task(subset_records, "Topic"), text_attributes=["Title", "Description"],
                         gold_attribute="Class Index")


@pytest.fixture(scope="session")
def subset_base(subset_sel, shared_cache: Path):
    """Base-model vectors of ``subset_sel``'s texts, through the shared cache."""
    from kern_finetune.vectors.encode import Encoder

    return Encoder(cache_dir=shared_cache).encode(subset_sel.texts, progress=False)


DEFAULT_HEAD_RUN_ARGS = ("--task", "Topic", "--gold-attribute", "Class Index", "--threshold", "0.7", "--mode", "head",
                         "--device", "cpu")
"""``kern-finetune run``'s shipped defaults but ``--mode head`` (``auto``'s choice depends on the machine's speed and
load; tests/test_estimate.py covers it) and ``--device cpu`` (the known answers are CPU fp32 vectors)."""


@pytest.fixture(scope="session")
def default_head_run(subset_records: list[dict], shared_cache: Path, tmp_path_factory: pytest.TempPathFactory):
    """One ``kern-finetune run`` (in process, through ``cli.main``) on the 1,000-record subset, shared by the tests
    that only read its outputs (tests/test_cli_run.py, tests/test_model_folder.py): ``.out`` (the run folder,
    with ``wall_seconds.txt`` beside the outputs) and ``.result``, the :class:`~kern_finetune.pipeline.RunResult`
    the command's ``run_pipeline`` returned. Nothing may write into it."""
    import json
    import time
    from types import SimpleNamespace

    from kern_finetune import cli, pipeline

    export = tmp_path_factory.mktemp("default-head-export") / "subset.json"
    export.write_text(json.dumps(subset_records))
    out = tmp_path_factory.mktemp("default-head-run")
    results = []
    real = pipeline.run_pipeline

    def recording(*args, **kwargs):
        results.append(real(*args, **kwargs))
        return results[-1]

    start = time.perf_counter()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pipeline, "run_pipeline", recording)  # commands/run.py imports it from the module at call time
        code = cli.main(["run", "--export", str(export), "--out", str(out), "--cache-dir", str(shared_cache),
                         *DEFAULT_HEAD_RUN_ARGS])
    assert code == 0 and len(results) == 1
    (out / "wall_seconds.txt").write_text(str(time.perf_counter() - start))
    return SimpleNamespace(out=out, result=results[0], export=export)
