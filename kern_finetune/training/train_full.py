"""Full mode: fine-tune the whole encoder with a similarity loss, plain PyTorch.

:class:`FullTrainer` has the interface of :mod:`kern_finetune.training.trainer` (``x`` are texts): class-aware
batches regrouped by length (:func:`~kern_finetune.training.samplers.length_grouped`, so a step pads to its own
longest text), the configured loss, AdamW at :data:`ENCODER_LR` (far below the head's rate, which would wreck
pre-trained weights) with linear warmup then decay, gradient clipping, validation every ``eval_every`` steps
(step 0, the base model, included) with early stopping, and the best state returned as a WiSE-FT blend with
the base weights (Wortsman et al. 2022, https://arxiv.org/abs/2109.01903), which keeps what the base model
knows about texts unlike the training ones. Texts are cut to :data:`MAX_SEQ_LENGTH` tokens while training
only: the returned model keeps the base model's own limit, so it encodes as its saved folder does.
The figures behind each setting: ``docs/decisions.md``, "full mode".
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..config import RunConfig
from ..vectors.encode import load_sentence_transformer, resolve_device
from .losses import make_loss
from .samplers import class_aware_batches, length_grouped
from .trainer import PATIENCE, EarlyStopping, TrainResult

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

__all__ = ["FullTrainer", "interpolate_weights", "full_mode_schedule", "ENCODER_LR", "MAX_SEQ_LENGTH", "MAX_VAL_ROWS",
           "WARMUP_FRACTION"]

log = logging.getLogger(__name__)

ENCODER_LR = 3e-5
"""AdamW's learning rate for the encoder's weights (``docs/decisions.md``, "full mode")."""
MAX_SEQ_LENGTH = 128
"""Tokens per text while training (AG-News titles + descriptions rarely exceed it)."""
MAX_VAL_ROWS = 512
"""Validation texts encoded at each evaluation, at most (a fixed seeded subset beyond that)."""
WARMUP_FRACTION = 0.1
"""Share of the steps over which the learning rate rises linearly from 0; it then decays linearly to 0."""
WEIGHT_DECAY = 0.01
MAX_GRAD_NORM = 1.0


def _embed(model: SentenceTransformer, texts: list[str], device: str, max_length: int) -> torch.Tensor:
    """Sentence embeddings of ``texts`` (cut to ``max_length`` tokens) through the model as a module."""
    from sentence_transformers.util import batch_to_device

    features = batch_to_device(model.preprocess(texts, max_length=max_length), torch.device(device))
    return model(features)["sentence_embedding"]


@torch.no_grad()
def _val_loss(model: SentenceTransformer, loss_fn: nn.Module, texts: list[str], y: torch.Tensor,
              batches: list[np.ndarray], *, device: str, max_length: int, batch_size: int) -> float:
    """Mean loss over fixed class-aware batches of the validation texts, eval mode."""
    was_training = model.training
    model.eval()
    try:
        z = torch.cat([_embed(model, texts[s : s + batch_size], device, max_length)
                       for s in range(0, len(texts), batch_size)])
        losses = []
        for b in batches:
            rows = torch.from_numpy(b).to(z.device)
            losses.append(float(loss_fn(z[rows], y[rows])))
    finally:
        model.train(was_training)
    return float(np.mean(losses))


def full_mode_schedule(config: RunConfig, device: str) -> tuple[int, int]:
    """``(epochs, batch_size)`` of full mode on ``device``: at most 1 epoch of 32 on CPU, 3 of 128 on a GPU (a
    row costs a transformer pass, and the encoder over-fits the partly weak labels within a few epochs).
    :meth:`FullTrainer.from_config` and :mod:`kern_finetune.training.estimate` both use it."""
    on_gpu = device.startswith("cuda")
    return min(config.epochs, 3 if on_gpu else 1), 128 if on_gpu else 32


def _param_groups(model: nn.Module, encoder_lr: float) -> list[dict[str, Any]]:
    """AdamW groups: decay on weight matrices, none on biases/LayerNorm."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "LayerNorm" in name or name.endswith(".bias") else decay).append(p)
    return [{"params": decay, "lr": encoder_lr, "weight_decay": WEIGHT_DECAY},
            {"params": no_decay, "lr": encoder_lr, "weight_decay": 0.0}]


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def interpolate_weights(base: dict[str, torch.Tensor], tuned: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """WiSE-FT: ``(1 - alpha) * base + alpha * tuned`` for every floating-point tensor; others from ``tuned``."""
    return {k: torch.lerp(base[k], v, alpha) if v.is_floating_point() else v for k, v in tuned.items()}


def _linear_schedule(total_steps: int, warmup: int) -> Callable[[int], float]:
    """Linear warmup over ``warmup`` steps, then linear decay to 0 at ``total_steps``."""

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return schedule


@dataclass(kw_only=True, eq=False)
class FullTrainer:
    """Fine-tune a fresh copy of a sentence-transformers model (``x`` are texts); :meth:`from_config` gives the
    pipeline's settings.

    ``model_path`` is the base model's folder (loaded afresh: an :class:`~kern_finetune.vectors.encode.Encoder`
    holding it is not touched); ``max_steps`` caps the optimizer steps (the schedule is planned for them);
    ``eval_every``: steps between validations (None: ``max(10, total_steps // 10)``; step 0 and the last step
    are always validated); ``max_val_rows``: validation texts, a seeded subset beyond; ``wise_alpha``: the
    returned weights are ``(1 - wise_alpha) * base + wise_alpha * best``; ``device`` None: CUDA when present.

    :meth:`fit` sets ``model_`` (the blended best state, eval mode, on ``device_``) and ``result_``
    (``details``: steps, best step, device, the settings used, ``val_loss_interpolated``).
    """

    model_path: Path | str
    loss: str = RunConfig.loss
    encoder_lr: float = ENCODER_LR
    epochs: int = 1
    batch_size: int = 32
    patience: int = PATIENCE
    seed: int = RunConfig.seed
    max_steps: int | None = None
    eval_every: int | None = None
    max_seq_length: int = MAX_SEQ_LENGTH
    max_val_rows: int = MAX_VAL_ROWS
    group_by_length: bool = True
    wise_alpha: float = RunConfig.wise_alpha
    device: str | None = None
    encode_batch_size: int = RunConfig.encode_batch_size
    progress: bool = True

    @classmethod
    def from_config(cls, config: RunConfig, *, model_path: Path | str, device: str | None = None,
                    progress: bool = True, **settings: Any) -> FullTrainer:
        """The pipeline's full mode: ``config``'s settings, with the device's epochs and batch size
        (:func:`full_mode_schedule`); ``settings`` override any of them."""
        device = resolve_device(device)
        epochs, batch_size = full_mode_schedule(config, device)
        base = dict(loss=config.loss, epochs=epochs, batch_size=batch_size, seed=config.seed,
                    wise_alpha=config.wise_alpha, encode_batch_size=config.encode_batch_size)
        return cls(model_path=model_path, device=device, progress=progress, **{**base, **settings})

    def _check(self) -> None:
        if self.epochs < 1 or self.batch_size < 2:
            raise ValueError(f"need epochs >= 1 and batch_size >= 2, got {self.epochs} and {self.batch_size}")
        if not 0.0 < self.wise_alpha <= 1.0:
            raise ValueError(f"wise_alpha must be in (0, 1], got {self.wise_alpha}")

    def fit(self, x_train: list[str], y_train: np.ndarray, x_val: list[str], y_val: np.ndarray) -> FullTrainer:
        """Fine-tune on the training texts and labels; validate on (a seeded subset of at most ``max_val_rows``)
        validation texts. Returns ``self``."""
        start = time.perf_counter()
        self._check()
        self.device_ = device = resolve_device(self.device)
        torch.manual_seed(self.seed)
        rng = np.random.default_rng(self.seed)
        self.model_ = model = load_sentence_transformer(self.model_path, device=device)
        keep = np.arange(len(x_val))
        if len(keep) > self.max_val_rows:
            keep = np.sort(np.random.default_rng(self.seed + 2).choice(keep, self.max_val_rows, replace=False))
        self._texts_v, y_v_np = [x_val[i] for i in keep], np.asarray(y_val)[keep].astype(np.int64)
        self._y_v = torch.from_numpy(y_v_np).to(device)
        self._val_batches = class_aware_batches(y_v_np, self.batch_size, np.random.default_rng(self.seed + 1)) if len(keep) else []
        self.loss_ = make_loss(self.loss).to(device)
        lengths = None
        if self.group_by_length:  # tokens per training text, for length_grouped
            lengths = np.array([len(ids) for ids in model.tokenizer(list(x_train), truncation=True, max_length=self.max_seq_length)["input_ids"]])
        steps_per_epoch = max(1, math.ceil(len(x_train) / self.batch_size))
        total_steps = self.epochs * steps_per_epoch
        if self.max_steps is not None:
            total_steps = min(total_steps, max(1, self.max_steps))
        eval_every = self.eval_every if self.eval_every is not None else max(10, total_steps // 10)
        warmup = max(1, math.ceil(WARMUP_FRACTION * total_steps))
        stopper: EarlyStopping[dict[str, torch.Tensor]] = EarlyStopping(self.patience)
        stopper.start(self._validate(), 0, _snapshot(model))
        base_state = stopper.best_state
        history: list[dict[str, float]] = [{"step": 0, "train_loss": float("nan"), "val_loss": stopper.best_loss}]
        step, epochs_run = self._train(list(x_train), np.asarray(y_train).astype(np.int64), lengths, rng,
                                       total_steps, eval_every, warmup, stopper, history)
        val_loss_interpolated = self._restore(stopper, step, base_state)
        self.result_ = TrainResult(
            engine="native", mode="full", history=history, epochs_run=epochs_run,
            best_epoch=math.ceil(stopper.best_at / steps_per_epoch), best_val_loss=stopper.best_loss,
            stopped_early=stopper.stopped, seconds=round(time.perf_counter() - start, 2),
            details={
                "steps": step, "best_step": stopper.best_at, "device": device, "encoder_lr": self.encoder_lr,
                "batch_size": self.batch_size, "max_seq_length": self.max_seq_length,
                "group_by_length": self.group_by_length, "wise_alpha": self.wise_alpha, "val_loss_interpolated": val_loss_interpolated,
                "warmup_steps": warmup, "eval_every": eval_every, "n_val_rows": int(len(keep)),
            },
        )
        return self

    def _validate(self) -> float:
        if not self._val_batches:
            return float("nan")
        return _val_loss(self.model_, self.loss_, self._texts_v, self._y_v, self._val_batches, device=self.device_,
                         max_length=self.max_seq_length, batch_size=max(self.batch_size, 64))

    def _train(self, texts_t: list[str], y_t_np: np.ndarray, lengths: np.ndarray | None,
               rng: np.random.Generator, total_steps: int, eval_every: int, warmup: int,
               stopper: EarlyStopping[dict[str, torch.Tensor]], history: list[dict[str, float]]) -> tuple[int, int]:
        model, device = self.model_, self.device_
        opt = torch.optim.AdamW(_param_groups(model, self.encoder_lr))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, _linear_schedule(total_steps, warmup))
        y_t = torch.from_numpy(y_t_np).to(device)
        step, epochs_run, running = 0, 0, []
        model.train()
        bar = tqdm(total=total_steps, desc=f"fine-tune encoder ({self.loss})", unit="step", disable=not self.progress)
        try:
            while step < total_steps and not stopper.stopped:
                epochs_run += 1
                batches = class_aware_batches(y_t_np, self.batch_size, rng)
                if lengths is not None:
                    batches = length_grouped(batches, lengths, rng)
                for idx in batches:
                    b = torch.from_numpy(idx).to(device)
                    z = _embed(model, [texts_t[i] for i in idx], device, self.max_seq_length)
                    loss = self.loss_(z, y_t[b])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
                    opt.step()
                    sched.step()
                    step += 1
                    running.append(float(loss.detach()))
                    bar.update(1)
                    if step % eval_every == 0 or step == total_steps:
                        val, train_loss, running = self._validate(), float(np.mean(running)), []
                        history.append({"step": step, "train_loss": train_loss, "val_loss": val})
                        bar.set_postfix(train_loss=f"{train_loss:.4f}", val_loss=f"{val:.4f}")
                        if stopper.update(val, step, lambda: _snapshot(model)):
                            log.info("early stop at step %d (best step %d)", step, stopper.best_at)
                    if step >= total_steps or stopper.stopped:
                        break
        finally:
            bar.close()
        return step, epochs_run

    def _restore(self, stopper: EarlyStopping[dict[str, torch.Tensor]], step: int,
                 base_state: dict[str, torch.Tensor] | None) -> float | None:
        """Load the best state, blended with the base weights (WiSE-FT); the blend's validation loss."""
        if not self._val_batches:  # nothing to select on: keep the last state
            stopper.best_at, stopper.best_state = step, _snapshot(self.model_)
        best = stopper.best_state
        assert best is not None and base_state is not None
        val_loss_interpolated = None
        if self.wise_alpha < 1.0 and stopper.best_at > 0:
            self.model_.load_state_dict(interpolate_weights(base_state, best, self.wise_alpha))
            val_loss_interpolated = self._validate()
        else:
            self.model_.load_state_dict(best)
        self.model_.eval()
        return val_loss_interpolated

    def transform(self, x: list[str]) -> np.ndarray:
        """The fine-tuned model's L2-normalised float32 vectors of the texts ``x``."""
        return self.model_.encode(list(x), batch_size=self.encode_batch_size, convert_to_numpy=True,
                                  normalize_embeddings=True, show_progress_bar=self.progress).astype(np.float32)
