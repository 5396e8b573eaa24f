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


@pytest.fixture(scope="module")
def one_torch_thread():
    """Torch on one thread for a module's tests (steadier timings and no oversubscription on 2 cores)."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
