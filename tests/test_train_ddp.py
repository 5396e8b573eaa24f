"""Data-parallel full mode (kern_finetune.train_ddp): 2 CPU processes, gloo, a tiny subset, 2 steps.

Shows that it runs, that DDP kept the two replicas identical, and that it returns a usable model. Its speed
on GPUs is not measured here (no GPU in CI).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from kern_finetune.config import RunConfig
from kern_finetune.encode import Encoder
from kern_finetune.refinery.export import resolve_task
from kern_finetune.select import select_labels

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_two_gloo_processes_train_one_model(subset_records: list[dict], shared_cache) -> None:
    from kern_finetune.train_ddp import fit_full_ddp

    records = subset_records[:120]
    sel = select_labels(records, resolve_task(records, "Topic"), text_attributes=["Title", "Description"],
                        gold_attribute="Class Index")
    encoder = Encoder(cache_dir=shared_cache)
    config = RunConfig(mode="full", seed=42, wise_alpha=1.0)
    model, head, info = fit_full_ddp(encoder, sel, config, workers=2, batch_size=4, max_steps=2,
                                     weights=np.ones(len(sel.ids), dtype=np.float32))
    assert head is None
    assert info["workers"] == 2 and info["backend"] == "gloo" and info["global_batch_size"] == 8
    assert info["steps"] == 2 and info["epochs_run"] == 1
    assert info["replicas_identical"], "DDP should keep both processes' weights equal"
    assert all(math.isfinite(h["val_loss"]) for h in info["history"])
    tuned = model.encode(sel.texts, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False)
    base = encoder.model().encode(sel.texts, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False)
    assert tuned.shape == base.shape and np.isfinite(tuned).all()
    if info["best_step"] > 0:  # the trained state came back: it moved away from the base model
        assert np.abs(tuned - base).max() > 1e-4
    else:  # training never beat the base model on validation: the base weights came back
        assert np.allclose(tuned, base, atol=1e-5)


def test_one_worker_is_refused(subset_records: list[dict], shared_cache) -> None:
    from kern_finetune.train_ddp import fit_full_ddp

    records = subset_records[:40]
    sel = select_labels(records, resolve_task(records, "Topic"), text_attributes=["Title", "Description"])
    with pytest.raises(ValueError, match="at least 2"):
        fit_full_ddp(Encoder(cache_dir=shared_cache), sel, RunConfig(mode="full"), workers=1)
