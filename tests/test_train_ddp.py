"""Data-parallel full mode (kern_finetune.train_ddp): 2 CPU processes, gloo, a tiny subset, 2 steps.

Shows that it runs, that DDP kept the two replicas identical, that it returns a usable model, and that
``--full-workers 2`` takes it through the pipeline. Its speed on GPUs is not measured here (no GPU in CI).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from kern_finetune.config import RunConfig
from kern_finetune.encode import Encoder
from kern_finetune.refinery.export import resolve_task
from kern_finetune.select import Selection, select_labels

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL = {"batch_size": 4, "max_steps": 2}


def _selection(records: list[dict]) -> Selection:
    return select_labels(records, resolve_task(records, "Topic"), text_attributes=["Title", "Description"],
                         gold_attribute="Class Index")


def test_two_gloo_processes_train_one_model(subset_records: list[dict], shared_cache: Path) -> None:
    from kern_finetune.train_ddp import DataParallelFullTrainer

    sel = _selection(subset_records[:120])
    encoder = Encoder(cache_dir=shared_cache)
    config = RunConfig(mode="full", seed=42, wise_alpha=1.0, full_workers=2)
    trainer = DataParallelFullTrainer.from_config(config, model_path=encoder.path, device="cpu", progress=False, **SMALL)
    tr, va = sel.train_idx, sel.val_idx
    fitted = trainer.fit([sel.texts[i] for i in tr], sel.y[tr], [sel.texts[i] for i in va], sel.y[va],
                         sample_weight=np.ones(len(tr), dtype=np.float32))
    assert fitted is trainer
    info = trainer.result_.details
    assert info["workers"] == 2 and info["backend"] == "gloo" and info["global_batch_size"] == 8
    assert info["steps"] == 2 and trainer.result_.epochs_run == 1 and trainer.result_.mode == "full"
    assert info["replicas_identical"], "DDP should keep both processes' weights equal"
    assert all(math.isfinite(h["val_loss"]) for h in trainer.result_.history)
    tuned = trainer.transform(sel.texts)
    base = encoder.model().encode(sel.texts, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False)
    assert tuned.shape == base.shape and tuned.dtype == np.float32 and np.isfinite(tuned).all()
    assert np.allclose(np.linalg.norm(tuned, axis=1), 1.0, atol=1e-5)
    if info["best_step"] > 0:  # the trained state came back: it moved away from the base model
        assert np.abs(tuned - base).max() > 1e-4
    else:  # training never beat the base model on validation: the base weights came back
        assert np.allclose(tuned, base, atol=1e-5)


def test_one_worker_is_refused(shared_cache: Path) -> None:
    from kern_finetune.train_ddp import DataParallelFullTrainer

    trainer = DataParallelFullTrainer(model_path=Encoder(cache_dir=shared_cache).path, workers=1, device="cpu")
    with pytest.raises(ValueError, match="at least 2"):
        trainer.fit(["a", "b"], np.array([0, 1]), [], np.array([], dtype=np.int64))


def test_full_workers_option_trains_the_pipeline_data_parallel(
    subset_records: list[dict], shared_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``full_workers=2`` in full mode: the pipeline's fit stage uses the data-parallel trainer, and the pushed
    vectors are the fine-tuned model's (the saved model re-encodes them)."""
    from sentence_transformers import SentenceTransformer

    from kern_finetune import train_ddp
    from kern_finetune.pipeline import run_pipeline
    from kern_finetune.save import load_vectors

    class Small(train_ddp.DataParallelFullTrainer):
        @classmethod
        def from_config(cls, config, **kw):  # type: ignore[no-untyped-def]
            return super().from_config(config, **{**kw, **SMALL})

    monkeypatch.setattr(train_ddp, "DataParallelFullTrainer", Small)
    records = subset_records[:120]
    config = RunConfig(mode="full", full_workers=2, task="Topic", text_attributes=["Title", "Description"],
                       gold_attribute="Class Index", cache_dir=shared_cache, seed=42, noise_filter="off", device="cpu",
                       smooth="0", spread="0")
    result = run_pipeline(records, config, out_dir=tmp_path / "out")
    training = result.metrics["training"]
    assert training["mode"] == "full" and training["workers"] == 2 and training["replicas_identical"]
    assert training["steps"] == 2
    assert result.metrics["config"]["full_workers"] == 2
    ids, saved = load_vectors(tmp_path / "out" / "vectors.npz")
    assert ids == result.ids
    reloaded = SentenceTransformer(str(result.model_dir), device="cpu", local_files_only=True)
    again = reloaded.encode(result.selection.texts, convert_to_numpy=True, normalize_embeddings=True,
                            show_progress_bar=False)
    assert np.abs(again - saved).max() < 1e-4
