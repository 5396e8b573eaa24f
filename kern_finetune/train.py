"""Native engine: train a head over cached base vectors with plain PyTorch.

Class-aware batches (every class present with several rows, so in-batch losses always find positives
and negatives), Adam, early stopping on validation loss (the best epoch's weights are kept), fixed seed.
"""

from __future__ import annotations

import copy
import logging
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .heads import SkipConnectionHead
from .losses import make_loss

__all__ = ["HeadTrainer", "class_aware_batches"]

log = logging.getLogger(__name__)


def class_aware_batches(y: np.ndarray, batch_size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """One epoch of batches, each holding (about) ``batch_size / n_classes`` rows of every class.

    Small classes are cycled (re-shuffled when used up); the epoch has ``ceil(len(y) / batch_size)``
    batches, so every row is seen about once per epoch.
    """
    classes = np.unique(y)
    per_class = max(2, batch_size // len(classes))
    pools = {c: rng.permutation(np.flatnonzero(y == c)) for c in classes}
    cursor = {c: 0 for c in classes}
    n_batches = max(1, int(np.ceil(len(y) / batch_size)))
    batches = []
    for _ in range(n_batches):
        parts = []
        for c in classes:
            pool = pools[c]
            take = min(per_class, len(pool))
            if cursor[c] + take > len(pool):
                pools[c] = pool = rng.permutation(pool)
                cursor[c] = 0
            parts.append(pool[cursor[c] : cursor[c] + take])
            cursor[c] += take
        batches.append(rng.permutation(np.concatenate(parts)))
    return batches


class HeadTrainer:
    """Fit a :class:`~kern_finetune.heads.SkipConnectionHead` with a similarity loss.

    Like a scikit-learn estimator, the constructor only stores settings; :meth:`fit` sets ``head_``,
    ``loss_`` (the loss module, with its fitted proxies if any), ``history_``, ``best_epoch_`` and
    ``seconds_``.
    """

    def __init__(
        self,
        *,
        loss: str = "supcon",
        n_layers: int = 1,
        epochs: int = 30,
        batch_size: int = 256,
        lr: float = 1e-3,
        patience: int = 3,
        temperature: float = 0.1,
        margin: float = 0.5,
        dropout: float = 0.0,
        seed: int = 42,
        progress: bool = True,
    ) -> None:
        self.loss = loss
        self.n_layers = n_layers
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.patience = patience
        self.temperature = temperature
        self.margin = margin
        self.dropout = dropout
        self.seed = seed
        self.progress = progress

    def fit(
        self,
        x_train: np.ndarray,
        y_train: np.ndarray,
        x_val: np.ndarray,
        y_val: np.ndarray,
        *,
        sample_weight: np.ndarray | None = None,
    ) -> HeadTrainer:
        start = time.perf_counter()
        torch.manual_seed(self.seed)
        rng = np.random.default_rng(self.seed)
        n_classes = int(max(y_train.max(), y_val.max())) + 1
        dim = x_train.shape[1]
        head = SkipConnectionHead(dim, n_layers=self.n_layers, skip_dropout=self.dropout)
        loss_fn = make_loss(self.loss, n_classes=n_classes, dim=dim, temperature=self.temperature, margin=self.margin)
        opt = torch.optim.Adam([*head.parameters(), *loss_fn.parameters()], lr=self.lr)
        xt = torch.from_numpy(np.ascontiguousarray(x_train, dtype=np.float32))
        yt = torch.from_numpy(y_train.astype(np.int64))
        wt = None if sample_weight is None else torch.from_numpy(sample_weight.astype(np.float32))
        xv = torch.from_numpy(np.ascontiguousarray(x_val, dtype=np.float32))
        yv = torch.from_numpy(y_val.astype(np.int64))
        val_batches = class_aware_batches(y_val, self.batch_size, np.random.default_rng(self.seed + 1))

        best = (float("inf"), -1, copy.deepcopy(head.state_dict()), copy.deepcopy(loss_fn.state_dict()))
        history: list[dict[str, float]] = []
        bar = tqdm(range(self.epochs), desc=f"train ({self.loss})", unit="epoch", disable=not self.progress)
        for epoch in bar:
            head.train()
            total = 0.0
            batches = class_aware_batches(y_train, self.batch_size, rng)
            for idx in batches:
                b = torch.from_numpy(idx)
                loss = loss_fn(head(xt[b]), yt[b], None if wt is None else wt[b])
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += loss.item()
            val = self._val_loss(head, loss_fn, xv, yv, val_batches)
            history.append({"epoch": epoch + 1, "train_loss": total / len(batches), "val_loss": val})
            bar.set_postfix(val_loss=f"{val:.4f}")
            if val < best[0] - 1e-5:
                best = (val, epoch, copy.deepcopy(head.state_dict()), copy.deepcopy(loss_fn.state_dict()))
            elif epoch - best[1] >= self.patience:
                log.info("early stop after epoch %d (best %d)", epoch + 1, best[1] + 1)
                break
        bar.close()
        head.load_state_dict(best[2])
        loss_fn.load_state_dict(best[3])
        head.eval()
        self.head_ = head
        self.loss_ = loss_fn
        self.history_ = history
        self.best_epoch_ = best[1] + 1
        self.best_val_loss_ = best[0]
        self.seconds_ = time.perf_counter() - start
        return self

    @staticmethod
    @torch.no_grad()
    def _val_loss(head: nn.Module, loss_fn: nn.Module, xv: torch.Tensor, yv: torch.Tensor, batches: list[np.ndarray]) -> float:
        head.eval()
        losses = [float(loss_fn(head(xv[torch.from_numpy(i)]), yv[torch.from_numpy(i)])) for i in batches]
        return float(np.mean(losses))

    @torch.no_grad()
    def transform(self, x: np.ndarray, *, batch_size: int = 4096) -> np.ndarray:
        """Head outputs, L2-normalised, float32."""
        self.head_.eval()
        out = []
        for start in range(0, len(x), batch_size):
            xb = torch.from_numpy(np.ascontiguousarray(x[start : start + batch_size], dtype=np.float32))
            out.append(F.normalize(self.head_(xb), dim=1).numpy())
        return np.concatenate(out).astype(np.float32)

    def info(self) -> dict[str, Any]:
        return {
            "engine": "native",
            "epochs_run": len(self.history_),
            "best_epoch": self.best_epoch_,
            "best_val_loss": self.best_val_loss_,
            "seconds": self.seconds_,
        }
