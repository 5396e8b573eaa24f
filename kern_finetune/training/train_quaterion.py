"""The Quaterion engine (``--engine quaterion``): the 2022 experiment's training stack (``docs/baseline.md``).

The cached base vectors go through Quaterion's in-memory encoder cache into quaterion-models'
``SkipConnectionHead``, trained by ``Quaterion.fit`` on ``GroupSimilarityDataLoader`` batches with early
stopping on ``validation_loss``. The trained head is copied into
:class:`kern_finetune.training.heads.SkipConnectionHead` (same parameter names, checked numerically), so
everything after training is engine-independent.

Importing this module patches (:mod:`kern_finetune.training.quaterion_compat`) and imports quaterion, which
takes seconds: import it only when the quaterion engine is chosen.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import math
import tempfile
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Union

import numpy as np
import torch
from torch import Tensor

from .quaterion_compat import patch_quaterion, quiet_quaterion
from . import losses as native_losses
from ..config import RunConfig
from ..errors import ConfigError, SelectionError
from .heads import SkipConnectionHead
from .trainer import HEAD_BATCH_SIZE, HEAD_LR, PATIENCE, EarlyStopping, HeadOutput, TrainResult

with warnings.catch_warnings():
    quiet_quaterion()
    patch_quaterion()
    import pytorch_lightning as pl
    from pytorch_lightning.callbacks import Callback
    from quaterion import Quaterion, TrainableModel
    from quaterion.dataset import GroupSimilarityDataLoader, SimilarityGroupSample
    from quaterion.distances import Distance
    from quaterion.loss import GroupLoss, TripletLoss
    from quaterion.train.cache import CacheConfig, CacheType
    from quaterion_models.encoders import Encoder
    from quaterion_models.heads import SkipConnectionHead as QSkipConnectionHead

__all__ = ["QUATERION_LOSSES", "CachedVectorEncoder", "NativeGroupLoss", "VectorTrainableModel", "QuaterionTrainer",
           "copy_head"]

ProgressArg = Union[bool, Callable[[str], None]]

QUATERION_LOSSES = ("triplet", "supcon")
"""Loss names this engine accepts: Quaterion's cosine batch-hard ``TripletLoss`` (the experiment's) and the
native ``SupConLoss`` through :class:`NativeGroupLoss` (Quaterion has none)."""


class CachedVectorEncoder(Encoder):
    """A frozen "encoder" whose inputs are the base vectors themselves (the pipeline has encoded the texts).

    Being non-trainable, Quaterion wraps it in its in-memory cache, fills the cache in one pass and trains the
    head from the cache alone, as it did over the real sentence-transformer in the experiment.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self._dim = int(dim)

    @property
    def trainable(self) -> bool:
        return False

    @property
    def embedding_size(self) -> int:
        return self._dim

    def get_collate_fn(self) -> Callable[[list[Any]], Tensor]:
        return _stack_vectors

    def forward(self, batch: Tensor) -> Tensor:
        return batch


def _stack_vectors(batch: list[Any]) -> Tensor:
    """Collate a list of 1-d vectors (tensors or arrays) into a float32 batch."""
    return torch.stack([torch.as_tensor(v, dtype=torch.float32) for v in batch])


class NativeGroupLoss(GroupLoss):
    """A loss of :mod:`kern_finetune.training.losses` (same maths as the native engine) as a Quaterion
    ``GroupLoss``; Quaterion has no supervised contrastive loss of its own."""

    def __init__(self, loss: torch.nn.Module) -> None:
        super(GroupLoss, self).__init__()
        self.loss = loss

    def forward(self, embeddings: Tensor, groups: Tensor) -> Tensor:
        return self.loss(embeddings, groups)


def _make_loss(name: str) -> GroupLoss:
    """The group loss of a name in :data:`QUATERION_LOSSES` (checked by :meth:`QuaterionTrainer.fit`)."""
    if name == "triplet":
        return TripletLoss(margin=native_losses.TRIPLET_MARGIN, distance_metric_name=Distance.COSINE, mining="hard")
    return NativeGroupLoss(native_losses.SupConLoss())


class VectorTrainableModel(TrainableModel):
    """Quaterion ``TrainableModel``: cached frozen vector encoder -> ``SkipConnectionHead``, trained by Adam."""

    def __init__(self, *, dim: int, loss_factory: Callable[[], GroupLoss], lr: float = HEAD_LR) -> None:
        self._dim = dim
        self._loss_factory = loss_factory  # a factory: modules can't be assigned before Module.__init__
        self._lr = lr
        super().__init__()

    def configure_encoders(self) -> Encoder:
        return CachedVectorEncoder(self._dim)

    def configure_caches(self) -> CacheConfig:  # as in the experiment; big fill batches (the encoder is the identity)
        return CacheConfig(cache_type=CacheType.AUTO, batch_size=1024)

    def configure_head(self, input_embedding_size: int) -> QSkipConnectionHead:
        return QSkipConnectionHead(input_embedding_size, dropout=0.0, skip_dropout=0.0, n_layers=1)

    def configure_loss(self) -> GroupLoss:
        return self._loss_factory()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.model.head.parameters(), lr=self._lr)


class _EarlyStoppingCallback(Callback):
    """Per-epoch losses, patience and the best head, with the engines' shared
    :class:`~kern_finetune.training.trainer.EarlyStopping` (Quaterion's own ``min_delta`` of 0); reports."""

    def __init__(self, report: Callable[[str], None] | None, epochs: int, patience: int) -> None:
        self.report = report
        self.epochs = epochs
        self.stopper: EarlyStopping[dict[str, Tensor]] = EarlyStopping(patience, min_delta=0.0)
        self.history: list[dict[str, float]] = []
        self._batch_losses: list[float] = []

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._batch_losses = []

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, *args: Any) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        if loss is not None:
            self._batch_losses.append(float(loss))

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        val = trainer.callback_metrics.get("validation_loss")
        if val is None:
            return
        val = float(val)
        train = float(np.mean(self._batch_losses)) if self._batch_losses else float("nan")
        epoch = trainer.current_epoch + 1
        self.history.append({"epoch": epoch, "train_loss": train, "val_loss": val})
        self.stopper.update(val, epoch, lambda: copy.deepcopy(pl_module.model.head.state_dict()))
        if self.report is not None:
            self.report(f"epoch {epoch}/{self.epochs}: train loss {train:.4f}, "
                        f"val loss {val:.4f} (best {self.stopper.best_loss:.4f} @ {self.stopper.best_at})")

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # where lightning's EarlyStopping checks when validation runs once per epoch
        trainer.should_stop = trainer.should_stop or self.stopper.stopped


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence lightning/quaterion logging and warnings for the duration (restored afterwards)."""
    names = ("pytorch_lightning", "lightning_fabric", "lightning.pytorch")
    levels = {n: logging.getLogger(n).level for n in names}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for n in names:
            logging.getLogger(n).setLevel(logging.ERROR)
        try:
            yield
        finally:
            for n, level in levels.items():
                logging.getLogger(n).setLevel(level)


def _as_inputs(x: np.ndarray, y: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    x = np.ascontiguousarray(np.asarray(x, dtype=np.float32))
    y = np.asarray(y)
    if x.ndim != 2 or y.ndim != 1 or len(x) != len(y):
        raise ConfigError(f"{name}: expected an (n, dim) matrix and n labels, got {x.shape} and {y.shape}")
    if len(x) == 0:
        raise SelectionError(f"{name}: no records")
    return x, y


def _dataset(x: np.ndarray, groups: np.ndarray) -> list[SimilarityGroupSample]:
    t = torch.from_numpy(x)
    return [SimilarityGroupSample(obj=t[i], group=int(g)) for i, g in enumerate(groups)]


def copy_head(q_head: QSkipConnectionHead, *, check_on: np.ndarray | None = None,
              atol: float = 1e-5) -> SkipConnectionHead:
    """Copy a quaterion-models ``SkipConnectionHead`` into :class:`kern_finetune.training.heads.SkipConnectionHead`
    (strict loading: a head of more than one layer is refused). With ``check_on`` (an ``(n, dim)`` array) both
    heads must agree on it within ``atol``, else ``RuntimeError``. Returns the copy in eval mode.
    """
    head = SkipConnectionHead(q_head.input_embedding_size)
    state = {k: v.detach().clone().cpu() for k, v in q_head.state_dict().items()}
    head.load_state_dict(state, strict=True)
    head.eval()
    if check_on is not None and len(check_on):
        was_training = q_head.training
        q_head.eval()
        with torch.no_grad():
            x = torch.as_tensor(np.asarray(check_on, dtype=np.float32))
            diff = float((q_head(x) - head(x)).abs().max())
        q_head.train(was_training)
        if not diff <= atol:
            raise RuntimeError(f"copied head differs from quaterion's by {diff:.3g} (> {atol})")
    return head


@dataclass(kw_only=True, eq=False)
class QuaterionTrainer(HeadOutput):
    """Train a ``SkipConnectionHead`` over cached base vectors with Quaterion (the interface of
    :mod:`kern_finetune.training.trainer`); the best epoch's head is returned.

    ``loss``: one of :data:`QUATERION_LOSSES`; ``seed`` goes to ``pl.seed_everything`` (same seed and data, same
    head); ``progress``: True = lightning's bar, a callable gets one line per epoch, False = silent.
    :meth:`fit` raises :class:`ConfigError` for bad shapes, an unknown loss or non-positive settings, and
    :class:`SelectionError` for an empty split or fewer than two training classes. ``result_.details``:
    ``loss``, ``final_val_loss``, ``n_train``, ``n_val``, ``groups``.
    """

    loss: str = RunConfig.loss
    lr: float = HEAD_LR
    batch_size: int = HEAD_BATCH_SIZE
    epochs: int = RunConfig.epochs
    patience: int = PATIENCE
    seed: int = RunConfig.seed
    progress: ProgressArg = True

    def _check(self, train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray) -> None:
        if train_x.shape[1] != val_x.shape[1]:
            raise ConfigError(f"train and validation dims differ: {train_x.shape[1]} vs {val_x.shape[1]}")
        if self.loss not in QUATERION_LOSSES:
            raise ConfigError(f"unknown loss {self.loss!r} for the quaterion engine; "
                              f"choose one of: {', '.join(QUATERION_LOSSES)}")
        for name, value in {"batch_size": self.batch_size, "epochs": self.epochs, "patience": self.patience}.items():
            if value < 1:
                raise ConfigError(f"{name} must be at least 1, got {value}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be positive, got {self.lr}")
        if len(np.unique(train_y)) < 2:
            raise SelectionError("training needs at least two classes")

    def fit(self, train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray) -> QuaterionTrainer:
        """Fit on the training vectors and labels (any ints or strings; mapped to group ids); stop early on
        the validation ones. Returns ``self``."""
        t0 = time.perf_counter()
        train_x, train_y = _as_inputs(train_x, train_y, "train")
        val_x, val_y = _as_inputs(val_x, val_y, "validation")
        self._check(train_x, train_y, val_x, val_y)
        classes = np.unique(np.concatenate([train_y, val_y]))
        report: Callable[[str], None] | None = self.progress if callable(self.progress) else None
        callback = _EarlyStoppingCallback(report, self.epochs, self.patience)
        model = self._run(train_x, np.searchsorted(classes, train_y), val_x, np.searchsorted(classes, val_y), callback)
        q_head: QSkipConnectionHead = model.model.head
        stopper = callback.stopper
        if stopper.best_state is not None and stopper.best_at != len(callback.history):
            q_head.load_state_dict(stopper.best_state)
        self.head_ = copy_head(q_head, check_on=val_x[:1024])
        history = callback.history
        self.result_ = TrainResult(
            engine="quaterion", mode="head", history=history, epochs_run=len(history),
            best_epoch=stopper.best_at, best_val_loss=stopper.best_loss if history else None,
            stopped_early=stopper.stopped or len(history) < self.epochs, seconds=round(time.perf_counter() - t0, 3),
            details={
                "loss": self.loss, "final_val_loss": history[-1]["val_loss"] if history else None,
                "n_train": int(len(train_x)), "n_val": int(len(val_x)),
                "groups": [c.item() if hasattr(c, "item") else c for c in classes],
            },
        )
        return self

    def _run(self, train_x: np.ndarray, train_g: np.ndarray, val_x: np.ndarray, val_g: np.ndarray,
             callback: _EarlyStoppingCallback) -> VectorTrainableModel:
        """``Quaterion.fit`` in a quiet temporary folder; returns the trained model."""
        dim = int(train_x.shape[1])
        with _quiet(), tempfile.TemporaryDirectory(prefix="kern-quaterion-") as tmp:
            pl.seed_everything(self.seed)
            model = VectorTrainableModel(dim=dim, loss_factory=functools.partial(_make_loss, self.loss), lr=self.lr)
            # fresh loaders every fit: Quaterion rewires a loader's collate_fn and label cache during fit
            train_loader = GroupSimilarityDataLoader(_dataset(train_x, train_g), batch_size=self.batch_size, shuffle=True)
            val_loader = GroupSimilarityDataLoader(_dataset(val_x, val_g), batch_size=self.batch_size, shuffle=False)
            trainer = pl.Trainer(
                accelerator="cpu", devices=1, max_epochs=self.epochs, callbacks=[callback], logger=False,
                enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=self.progress is True,
                num_sanity_val_steps=0, log_every_n_steps=max(1, min(50, math.ceil(len(train_x) / self.batch_size))),
                default_root_dir=tmp,
            )
            Quaterion.fit(model, trainer, train_loader, val_loader)
        return model
