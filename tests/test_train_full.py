"""Full mode: fine-tune the whole encoder (kern_finetune.training.train_full.FullTrainer), alone and through the pipeline.

Kept small for CPU: ~120 records, batch 8, 64 tokens, 2 optimizer steps. The pipeline takes no
step limit of its own, so the test hands it a ``FullTrainer`` with the same small settings (monkeypatch).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kern_finetune.config import RunConfig
from kern_finetune.vectors.encode import Encoder
from kern_finetune.refinery.export import resolve_task
from kern_finetune.labels.select import Selection, select_labels
from kern_finetune.training.train_full import ENCODER_LR


N_RECORDS = 120
SMALL = {"max_steps": 2, "batch_size": 8, "max_seq_length": 64, "device": "cpu", "progress": False}
INFO_KEYS = {"engine", "mode", "epochs_run", "steps", "best_step", "best_val_loss", "seconds", "device", "stopped_early"}


def fit_full(encoder: Encoder, sel: Selection, config: RunConfig, **settings):
    """``FullTrainer.from_config`` fitted on ``sel``'s split: ``(model, metrics-style info)``."""
    from kern_finetune.training.train_full import FullTrainer

    trainer = FullTrainer.from_config(config, model_path=encoder.path, **settings)
    tr, va = sel.train_idx, sel.val_idx
    trainer.fit([sel.texts[i] for i in tr], sel.y[tr], [sel.texts[i] for i in va], sel.y[va])
    return trainer.model_, trainer.result_.to_dict()


@pytest.fixture(scope="module")
def records(subset_records: list[dict]) -> list[dict]:
    return subset_records[:N_RECORDS]


@pytest.fixture(scope="module")
def sel(records: list[dict]) -> Selection:
    return select_labels(
        records, resolve_task(records, "Topic"), text_attributes=["Title", "Description"], gold_attribute="Class Index"
    )


@pytest.fixture(scope="module")
def encoder(shared_cache) -> Encoder:
    return Encoder(cache_dir=shared_cache)


@pytest.fixture(scope="module")
def fitted(encoder: Encoder, sel: Selection):
    """One small fit and the vectors it gives."""
    config = RunConfig(mode="full", seed=42)
    model, info = fit_full(encoder, sel, config, **SMALL)
    vectors = model.encode(sel.texts, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False)
    return model, info, vectors.astype(np.float32)


def test_fit_full_trains_the_encoder(fitted, encoder: Encoder, sel: Selection) -> None:
    model, info, tuned = fitted
    assert INFO_KEYS <= set(info)
    assert info["engine"] == "native" and info["mode"] == "full" and info["device"] == "cpu"
    assert info["steps"] == 2 and info["epochs_run"] == 1
    assert info["encoder_lr"] == ENCODER_LR  # not given: full mode's own
    assert math.isfinite(info["best_val_loss"])
    assert all(math.isfinite(h["val_loss"]) for h in info["history"])
    assert info["best_val_loss"] == min(h["val_loss"] for h in info["history"])
    assert info["best_step"] == 2, f"2 steps did not lower the validation loss: {info['history']}"
    assert model is not encoder.model()  # a separate copy: the encoder's base model is untouched
    base = encoder.model().encode(sel.texts, convert_to_numpy=True, normalize_embeddings=True, show_progress_bar=False)
    assert tuned.shape == base.shape
    assert np.abs(tuned - base).max() > 1e-3
    assert np.allclose(np.linalg.norm(tuned, axis=1), 1.0, atol=1e-5)


def test_pipeline_full_mode_is_deterministic_and_saved_model_reproduces(
    fitted, records: list[dict], shared_cache, tmp_path, monkeypatch
) -> None:
    """The pipeline's run repeats the fixture's fit (same seed); its saved model gives the model door's vectors."""
    from sentence_transformers import SentenceTransformer

    from kern_finetune.training import train_full
    from kern_finetune.pipeline import run_pipeline
    from kern_finetune.output.save import load_vectors

    class Small(train_full.FullTrainer):
        @classmethod
        def from_config(cls, config, **kw):  # type: ignore[no-untyped-def]
            return super().from_config(config, **{**kw, **SMALL})

    monkeypatch.setattr(train_full, "FullTrainer", Small)
    config = RunConfig(
        mode="full", task="Topic", text_attributes=["Title", "Description"], gold_attribute="Class Index",
        cache_dir=shared_cache, seed=42, noise_filter="off",  # the fixture's fit saw every selected label
        smooth="0", spread="0",  # the model's own vectors (tests/test_smooth.py, tests/test_spread.py)
    )
    result = run_pipeline(records, config, out_dir=tmp_path / "out")
    assert result.metrics["training"]["mode"] == "full" and result.training is not None
    assert result.training.details["steps"] == 2
    assert "smoothing" not in result.metrics and "spread" not in result.metrics  # --smooth 0 --spread 0: none ran

    _, _, first = fitted
    assert np.abs(result.vectors - first).max() < 1e-5, "same seed on CPU must give the same vectors"

    ids, saved = load_vectors(tmp_path / "out" / "vectors.npz")
    assert ids == result.ids
    reloaded = SentenceTransformer(str(result.model_dir), device="cpu", local_files_only=True)
    again = reloaded.encode(
        result.selection.texts, convert_to_numpy=True, normalize_embeddings=True,
        show_progress_bar=False,
    )
    assert np.abs(again - result.model_vectors).max() < 1e-4  # the folder gives the model door's vectors
    door = result.metrics["model_door"]  # full mode: the encoder pulled back towards the base model, by the replay
    assert door["table"][-1]["pull"] == door["pull"] and door["n_records"] == len(result.ids)
    if door["pull"] == 1.0:  # not pulled: the folder is the trained model, whose vectors were written
        assert np.abs(again - saved).max() < 1e-4


@pytest.mark.slow
def test_best_val_loss_is_the_returned_models(encoder: Encoder, sel: Selection) -> None:
    """With an evaluation every step, the best loss is the minimum recorded and the returned model has it."""
    from kern_finetune.training.losses import make_loss
    from kern_finetune.training.samplers import class_aware_batches
    from kern_finetune.training.train_full import _val_loss

    config = RunConfig(mode="full", seed=3, wise_alpha=1.0)  # the best state itself, not interpolated
    small = {**SMALL, "max_steps": 6, "eval_every": 1, "patience": 2}
    model, info = fit_full(encoder, sel, config, encoder_lr=3e-4, **small)
    vals = [h["val_loss"] for h in info["history"]]
    assert len(vals) == info["steps"] + 1  # step 0 and every step
    assert info["best_val_loss"] == min(vals)
    assert info["best_step"] == info["history"][int(np.argmin(vals))]["step"]

    y_v = sel.y[sel.val_idx]
    batches = class_aware_batches(y_v, small["batch_size"], np.random.default_rng(config.seed + 1))
    again = _val_loss(
        model, make_loss("supcon"), [sel.texts[i] for i in sel.val_idx],
        torch.from_numpy(y_v), batches, device="cpu", max_length=small["max_seq_length"], batch_size=64,
    )
    assert again == pytest.approx(info["best_val_loss"], abs=1e-4)


def _scripted_val(monkeypatch, losses: list[float]) -> None:
    """Make every validation return the next of ``losses`` (so the early-stopping path is known)."""
    from kern_finetune.training import train_full

    it = iter(losses)
    monkeypatch.setattr(train_full, "_val_loss", lambda *a, **k: next(it))


def test_early_stop_restores_the_best_step(encoder: Encoder, sel: Selection, monkeypatch) -> None:
    """Best at step 1, worse at 2 and 3 (patience 2): stops at 3 and returns the step-1 weights.

    The first step runs at the full ``encoder_lr`` whatever ``max_steps`` is (warmup of 1 step), so a
    1-step run gives the reference step-1 weights.
    """
    config = RunConfig(mode="full", seed=5)
    small = {**SMALL, "patience": 2}
    _scripted_val(monkeypatch, [1.0, 0.5, 0.7])  # the last: the WiSE-blended model's validation
    one, info1 = fit_full(encoder, sel, config, **{**small, "max_steps": 1})
    assert info1["best_step"] == 1 and info1["val_loss_interpolated"] == 0.7
    _scripted_val(monkeypatch, [1.0, 0.5, 0.9, 0.95, 0.6, 0.4])
    model, info = fit_full(encoder, sel, config, **{**small, "max_steps": 5, "eval_every": 1})
    assert info["stopped_early"] and info["steps"] == 3 and info["best_epoch"] == 1
    assert info["best_step"] == 1 and info["best_val_loss"] == 0.5 and info["val_loss_interpolated"] == 0.6
    texts = sel.texts[:16]
    kw = {"convert_to_numpy": True, "show_progress_bar": False}
    assert np.abs(model.encode(texts, **kw) - one.encode(texts, **kw)).max() < 1e-6


@pytest.mark.slow
def test_no_improvement_returns_the_base_weights(encoder: Encoder, sel: Selection, monkeypatch) -> None:
    _scripted_val(monkeypatch, [0.5, 0.9, 0.9])
    model, info = fit_full(encoder, sel, RunConfig(mode="full"), **{**SMALL, "patience": 5})
    assert info["best_step"] == 0 and info["steps"] == 2 and info["best_epoch"] == 0
    texts = sel.texts[:16]
    kw = {"convert_to_numpy": True, "show_progress_bar": False}
    assert np.abs(model.encode(texts, **kw) - encoder.model().encode(texts, **kw)).max() < 1e-6


def test_wise_alpha_interpolates_base_and_fine_tuned_weights(encoder: Encoder, sel: Selection) -> None:
    """alpha 0.5 gives exactly the midpoint of the base weights and the alpha-1 run's (same seed)."""
    config = RunConfig(mode="full", seed=7)
    tuned, info1 = fit_full(encoder, sel, config, wise_alpha=1.0, **SMALL)
    half, info = fit_full(encoder, sel, config, wise_alpha=0.5, **SMALL)
    assert info1["val_loss_interpolated"] is None
    assert info["wise_alpha"] == 0.5 and math.isfinite(info["val_loss_interpolated"])
    base = encoder.model().state_dict()
    t, h = tuned.state_dict(), half.state_dict()
    moved = [k for k in t if t[k].is_floating_point() and not torch.equal(t[k].cpu(), base[k].cpu())]
    assert moved, "two steps changed no weight"
    for k in moved:
        assert torch.allclose(h[k].cpu(), (base[k].cpu() + t[k].cpu()) / 2, atol=1e-6), k


def test_the_triplet_loss_trains_too(encoder: Encoder, sel: Selection) -> None:
    _, info = fit_full(encoder, sel, RunConfig(mode="full", loss="triplet"), **{**SMALL, "max_steps": 1})
    assert info["steps"] == 1 and math.isfinite(info["best_val_loss"])


@pytest.mark.parametrize("field, value", [("wise_alpha", 0.0), ("wise_alpha", 1.5)])
def test_config_rejects_bad_full_mode_settings(field: str, value: float) -> None:
    from kern_finetune.errors import ConfigError

    with pytest.raises(ConfigError, match=field):
        RunConfig(mode="full", **{field: value}).validate()


def test_length_grouped_keeps_every_row_and_batch_size_and_shrinks_padding() -> None:
    from kern_finetune.training.samplers import class_aware_batches, length_grouped

    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 1000)
    lengths = rng.integers(5, 200, 1000)
    batches = class_aware_batches(y, 32, np.random.default_rng(1))
    grouped = length_grouped(batches, lengths, np.random.default_rng(2), window=8)

    assert sorted(len(b) for b in grouped) == sorted(len(b) for b in batches)
    assert np.array_equal(np.sort(np.concatenate(grouped)), np.sort(np.concatenate(batches)))
    padded = lambda bs: sum(len(b) * lengths[b].max() for b in bs)  # noqa: E731
    assert padded(grouped) < 0.8 * padded(batches)
    # Pools of 8 batches keep their classes: the same rows, regrouped, in a shuffled order.
    assert not all(np.array_equal(g, b) for g, b in zip(grouped, batches, strict=True))
    assert length_grouped(batches, lengths, np.random.default_rng(2), window=8)[0].tolist() == grouped[0].tolist()
