"""The one trainer interface of the three engines, their one result type and their early stopping.

Every engine is shaped like a scikit-learn estimator: the constructor only stores keyword-only settings
(named and defaulted as :class:`~kern_finetune.config.RunConfig` names them, else the constants below);
``fit(x_train, y_train, x_val, y_val)`` trains, stops early on the validation loss, restores the best state
and returns ``self``, with fitted state ending in ``_`` (``result_``: a :class:`TrainResult`);
``transform(x)`` gives the fitted model's L2-normalised float32 output. The engines:
:class:`~kern_finetune.training.train.HeadTrainer`, :class:`~kern_finetune.training.train_quaterion.QuaterionTrainer`
(the same head, trained by Quaterion) and :class:`~kern_finetune.training.train_full.FullTrainer` (``x`` are texts).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Protocol, TypeVar

import numpy as np

__all__ = ["Trainer", "TrainResult", "EarlyStopping", "HeadOutput", "MIN_DELTA", "PATIENCE", "HEAD_BATCH_SIZE", "HEAD_LR"]

MIN_DELTA = 1e-5
"""A validation loss counts as better only when it is lower by more than this (native engines)."""
PATIENCE = 3
"""Validations in a row without a better loss before training stops (every engine)."""
HEAD_BATCH_SIZE = 256
"""Rows per class-aware batch of the head engines (``docs/decisions.md``, "batch size")."""
HEAD_LR = 1e-3
"""Adam's learning rate for the head: the 2022 experiment's."""

State = TypeVar("State")


class Trainer(Protocol):
    """What the pipeline's fit stage needs from an engine (see the module docstring)."""

    result_: TrainResult

    def fit(self, x_train: Any, y_train: np.ndarray, x_val: Any, y_val: np.ndarray) -> Trainer: ...

    def transform(self, x: Any) -> np.ndarray: ...


@dataclass
class TrainResult:
    """How one training went, whatever the engine.

    ``best_epoch`` is 1-based (0: the starting weights stayed best; full mode: the epoch of
    ``details["best_step"]``). ``details`` holds what only one engine has (full mode's steps and settings,
    Quaterion's groups).
    """

    engine: str
    mode: str
    history: list[dict[str, float]]
    epochs_run: int
    best_epoch: int
    best_val_loss: float | None
    stopped_early: bool
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The ``training`` block of ``metrics.json``."""
        return {
            "engine": self.engine, "mode": self.mode, "epochs_run": self.epochs_run, "best_epoch": self.best_epoch,
            "best_val_loss": self.best_val_loss, "stopped_early": self.stopped_early, "seconds": self.seconds,
            **self.details, "history": self.history,
        }


class EarlyStopping(Generic[State]):
    """Patience and the best state so far, shared by the engines.

    :meth:`update` takes each validation's loss and where training stands (epoch or step); it keeps
    ``snapshot()`` when the loss improved by more than ``min_delta`` (any value improves on a non-finite best)
    and returns True once ``patience`` validations in a row did not. :meth:`start` records a starting state.
    """

    def __init__(self, patience: int, *, min_delta: float = MIN_DELTA) -> None:
        self.patience = patience
        self.min_delta = min_delta
        self.best_loss: float = math.inf
        self.best_at = 0
        self.best_state: State | None = None
        self.bad = 0
        self.stopped = False

    def start(self, loss: float, at: int, state: State) -> None:
        self.best_loss, self.best_at, self.best_state = loss, at, state

    def update(self, loss: float, at: int, snapshot: Callable[[], State]) -> bool:
        if not math.isfinite(self.best_loss) or loss < self.best_loss - self.min_delta:
            self.best_loss, self.best_at, self.best_state, self.bad = loss, at, snapshot(), 0
        else:
            self.bad += 1
            self.stopped = self.bad >= self.patience
        return self.stopped


class HeadOutput:
    """``transform`` of the head engines: the fitted head (``head_``) over base vectors."""

    head_: Any

    def transform(self, x: np.ndarray, *, batch_size: int = 4096) -> np.ndarray:
        """Head outputs of the base vectors ``x``, L2-normalised, float32."""
        import torch
        import torch.nn.functional as F

        self.head_.eval()
        out = []
        with torch.no_grad():
            for start in range(0, len(x), batch_size):
                xb = torch.from_numpy(np.ascontiguousarray(x[start : start + batch_size], dtype=np.float32))
                out.append(F.normalize(self.head_(xb), dim=1).numpy())
        return np.concatenate(out).astype(np.float32) if out else np.zeros((0, x.shape[1]), dtype=np.float32)
