"""Native engine: train a head over cached base vectors with plain PyTorch."""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..config import RunConfig
from .heads import SkipConnectionHead
from .losses import make_loss
from .samplers import class_aware_batches
from ..labels.select import Selection
from .trainer import HEAD_BATCH_SIZE, HEAD_LR, PATIENCE, EarlyStopping, HeadOutput, TrainResult

if TYPE_CHECKING:
    from .train_quaterion import QuaterionTrainer

__all__ = ["HeadTrainer", "fit_head", "head_trainer"]

log = logging.getLogger(__name__)


@dataclass(kw_only=True, eq=False)
class HeadTrainer(HeadOutput):
    """Fit a :class:`~kern_finetune.training.heads.SkipConnectionHead` with a similarity loss: class-aware
    batches, Adam, early stopping on the validation loss (the best epoch's weights are kept), fixed seed.
    :meth:`fit` sets ``head_``, ``loss_`` and ``result_`` (the interface of :mod:`kern_finetune.training.trainer`).
    """

    loss: str = RunConfig.loss
    epochs: int = RunConfig.epochs
    batch_size: int = HEAD_BATCH_SIZE
    lr: float = HEAD_LR
    patience: int = PATIENCE
    seed: int = RunConfig.seed
    progress: bool = True

    def fit(self, x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray) -> HeadTrainer:
        """Fit on ``x_train``/``y_train``; stop early on ``x_val``/``y_val``."""
        start = time.perf_counter()
        torch.manual_seed(self.seed)
        rng = np.random.default_rng(self.seed)
        self.head_ = SkipConnectionHead(x_train.shape[1])
        self.loss_ = make_loss(self.loss)
        history: list[dict[str, float]] = []
        stopper = self._train(torch.from_numpy(np.ascontiguousarray(x_train, dtype=np.float32)),
                              torch.from_numpy(y_train.astype(np.int64)),
                              torch.from_numpy(np.ascontiguousarray(x_val, dtype=np.float32)), y_val, rng, history)
        if stopper.best_state is not None:
            self.head_.load_state_dict(stopper.best_state)
        self.head_.eval()
        self.result_ = TrainResult(engine="native", mode="head", history=history, epochs_run=len(history),
                                   best_epoch=stopper.best_at, best_val_loss=stopper.best_loss,
                                   stopped_early=stopper.stopped, seconds=time.perf_counter() - start)
        return self

    def _train(self, xt: torch.Tensor, yt: torch.Tensor, xv: torch.Tensor, y_val: np.ndarray, rng: np.random.Generator,
               history: list[dict[str, float]]) -> EarlyStopping[Any]:
        """The training loop: one pass of class-aware batches per epoch, validation, early stopping."""
        head, loss_fn = self.head_, self.loss_
        opt = torch.optim.Adam(head.parameters(), lr=self.lr)
        yv = torch.from_numpy(y_val.astype(np.int64))
        val_batches = class_aware_batches(y_val, self.batch_size, np.random.default_rng(self.seed + 1))
        stopper: EarlyStopping[Any] = EarlyStopping(self.patience)
        bar = tqdm(range(self.epochs), desc=f"train ({self.loss})", unit="epoch", disable=not self.progress)
        for epoch in bar:
            head.train()
            total = 0.0
            batches = class_aware_batches(yt.numpy(), self.batch_size, rng)
            for idx in batches:
                b = torch.from_numpy(idx)
                loss = loss_fn(head(xt[b]), yt[b])
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += loss.item()
            val = self._val_loss(head, loss_fn, xv, yv, val_batches)
            history.append({"epoch": epoch + 1, "train_loss": total / len(batches), "val_loss": val})
            bar.set_postfix(val_loss=f"{val:.4f}")
            if stopper.update(val, epoch + 1, lambda: copy.deepcopy(head.state_dict())):
                log.info("early stop after epoch %d (best %d)", epoch + 1, stopper.best_at)
                break
        bar.close()
        return stopper

    @staticmethod
    @torch.no_grad()
    def _val_loss(head: nn.Module, loss_fn: nn.Module, xv: torch.Tensor, yv: torch.Tensor, batches: list[np.ndarray]) -> float:
        head.eval()
        losses = [float(loss_fn(head(xv[torch.from_numpy(i)]), yv[torch.from_numpy(i)])) for i in batches]
        return float(np.mean(losses))


def head_trainer(config: RunConfig, *, progress: bool = True) -> HeadTrainer | QuaterionTrainer:
    """The head engine ``config.engine`` names, with the run's settings (not fitted)."""
    engine: type[HeadTrainer | QuaterionTrainer] = HeadTrainer
    if config.engine == "quaterion":
        from .train_quaterion import QuaterionTrainer  # imported lazily: loading Quaterion takes seconds

        engine = QuaterionTrainer
    return engine(loss=config.loss, lr=HEAD_LR, batch_size=HEAD_BATCH_SIZE, epochs=config.epochs, patience=PATIENCE,
                  seed=config.seed, progress=progress)


def fit_head(base: np.ndarray, sel: Selection, config: RunConfig, *, progress: bool = True) -> HeadTrainer | QuaterionTrainer:
    """The fitted head of head mode (:func:`head_trainer`): trained on ``sel``'s training rows of ``base`` (rows =
    ``sel.ids``), stopped early on its validation rows."""
    xt, yt = base[sel.train_idx], sel.y[sel.train_idx]
    trainer = head_trainer(config, progress=progress)
    trainer.fit(xt, yt, base[sel.val_idx], sel.y[sel.val_idx])
    return trainer
