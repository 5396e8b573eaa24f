"""The Quaterion engine (``--engine quaterion``): the 2022 experiment's training stack.

Frozen all-MiniLM-L6-v2 vectors (already computed and cached on disk by the pipeline) go through
Quaterion's own in-memory encoder cache (``CacheConfig(CacheType.AUTO)``) into quaterion-models'
``SkipConnectionHead``, trained by ``Quaterion.fit`` with ``GroupSimilarityDataLoader`` batches of
``SimilarityGroupSample`` and, by default, ``TripletLoss(distance_metric_name=Distance.COSINE,
mining="hard")``, Adam lr 1e-3, batch 128, early stopping on ``validation_loss`` -- the settings of
the experiment in ``docs/baseline.md``.

The trained head's state dict is copied into :class:`kern_finetune.training.heads.SkipConnectionHead` (same
parameter names) and the copy is checked numerically against quaterion's head, so everything after
training (saved model, vectors, metrics) is engine-independent.

Importing this module applies :func:`kern_finetune.training.quaterion_compat.patch_quaterion` and imports quaterion
(a few seconds); import it lazily, only when the quaterion engine is chosen.
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
from typing import Any, Callable, Iterator, Union

import numpy as np
import torch
from torch import Tensor

from .quaterion_compat import patch_quaterion, quiet_quaterion
from . import losses as native_losses
from ..config import RunConfig
from ..errors import ConfigError, SelectionError
from .heads import SkipConnectionHead
from .trainer import HEAD_LR, PATIENCE, EarlyStopping, HeadOutput, TrainResult

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

__all__ = [
    "QUATERION_LOSSES",
    "CachedVectorEncoder",
    "NativeGroupLoss",
    "VectorTrainableModel",
    "QuaterionTrainer",
    "copy_head",
]

ProgressArg = Union[bool, Callable[[str], None]]

QUATERION_LOSSES = (
    "triplet",  # Quaterion's TripletLoss, cosine, hard mining (the experiment)
    "supcon",  # the native SupConLoss through NativeGroupLoss (Quaterion has none)
)
"""Loss names this engine accepts (``config.LOSSES``)."""


# --------------------------------------------------------------------------------------------------
# Encoder, extra losses, model


class CachedVectorEncoder(Encoder):
    """A frozen "encoder" whose inputs are the precomputed base vectors themselves.

    It stands for the frozen all-MiniLM-L6-v2: the pipeline has already encoded (and disk-cached) the
    texts, so the encoder's job is the identity. Being non-trainable, Quaterion wraps it in its
    in-memory cache (``CacheType.AUTO``), fills the cache in one pass and then trains the head from the
    cache alone, exactly as it did over the real sentence-transformer in the experiment.
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

    def save(self, output_path: str) -> None:
        import json
        import os

        os.makedirs(output_path, exist_ok=True)
        with open(os.path.join(output_path, "config.json"), "w") as fh:
            json.dump({"dim": self._dim}, fh)

    @classmethod
    def load(cls, input_path: str) -> CachedVectorEncoder:
        import json
        import os

        with open(os.path.join(input_path, "config.json")) as fh:
            return cls(**json.load(fh))


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
    """Build the named group loss (see :data:`QUATERION_LOSSES`)."""
    if name == "triplet":
        return TripletLoss(margin=native_losses.TRIPLET_MARGIN, distance_metric_name=Distance.COSINE, mining="hard")
    if name == "supcon":
        return NativeGroupLoss(native_losses.SupConLoss())
    raise ConfigError(f"unknown loss {name!r} for the quaterion engine; choose one of: {', '.join(QUATERION_LOSSES)}")


class VectorTrainableModel(TrainableModel):
    """Quaterion ``TrainableModel``: cached frozen vector encoder -> ``SkipConnectionHead``.

    The head's parameters go to Adam via :meth:`configure_optimizers`.
    """

    def __init__(
        self,
        *,
        dim: int,
        loss_factory: Callable[[], GroupLoss],
        lr: float = HEAD_LR,
    ) -> None:
        self._dim = dim
        self._loss_factory = loss_factory  # a factory: modules can't be assigned before Module.__init__
        self._lr = lr
        super().__init__()

    def configure_encoders(self) -> Encoder:
        return CachedVectorEncoder(self._dim)

    def configure_caches(self) -> CacheConfig:
        # Quaterion's encoder cache, as in the experiment; big fill batches (the encoder is the identity).
        return CacheConfig(cache_type=CacheType.AUTO, batch_size=1024)

    def configure_head(self, input_embedding_size: int) -> QSkipConnectionHead:
        return QSkipConnectionHead(input_embedding_size, dropout=0.0, skip_dropout=0.0, n_layers=1)

    def configure_loss(self) -> GroupLoss:
        return self._loss_factory()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.model.head.parameters(), lr=self._lr)


# --------------------------------------------------------------------------------------------------
# Training helpers


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
            self.report(
                f"epoch {epoch}/{self.epochs}: train loss {train:.4f}, "
                f"val loss {val:.4f} (best {self.stopper.best_loss:.4f} @ {self.stopper.best_at})"
            )

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # where lightning's EarlyStopping checks when validation runs once per epoch
        trainer.should_stop = trainer.should_stop or self.stopper.stopped


@contextlib.contextmanager
def _quiet(enabled: bool = True) -> Iterator[None]:
    """Silence lightning/quaterion logging and warnings for the duration (restored afterwards)."""
    if not enabled:
        yield
        return
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


def copy_head(
    q_head: QSkipConnectionHead, *, check_on: np.ndarray | None = None, atol: float = 1e-5
) -> SkipConnectionHead:
    """Copy a quaterion-models ``SkipConnectionHead`` into :class:`kern_finetune.training.heads.SkipConnectionHead`.

    The state dicts share their names (``gates_0``, ``fc_0.weight``, ``fc_0.bias``); loading is strict, so a
    head of more than one layer is refused.
    With ``check_on`` (an ``(n, dim)`` array) both heads are run in eval mode and must agree within
    ``atol``, else ``RuntimeError``. Returns the copy in eval mode.
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


# --------------------------------------------------------------------------------------------------
# The trainer


class QuaterionTrainer(HeadOutput):
    """Train a ``SkipConnectionHead`` over cached base vectors with Quaterion (the interface of
    :mod:`kern_finetune.training.trainer`: settings in the constructor, ``fit`` -> ``head_`` and ``result_``,
    ``transform``).

    Settings: ``loss`` one of :data:`QUATERION_LOSSES` (``"triplet"`` = the experiment's
    ``TripletLoss(distance_metric_name=Distance.COSINE, mining="hard")``, margin
    :data:`~kern_finetune.training.losses.TRIPLET_MARGIN`); ``lr`` and ``batch_size`` of Adam and both loaders; ``epochs`` the cap; ``patience`` of
    the early stopping on ``validation_loss`` (the best epoch's head is returned); ``seed`` for
    ``pl.seed_everything`` (same seed + data = same head); ``progress``
    True = lightning's bar, a callable gets one line per epoch, False = silent.

    :meth:`fit` raises :class:`ConfigError` for bad shapes, an unknown loss or non-positive settings, and
    :class:`SelectionError` for an empty split or fewer than two training classes. ``result_.details``:
    ``loss``, ``final_val_loss``, ``n_train``, ``n_val``, ``groups``; ``result_.seconds`` is the fit's wall
    time incl. the cache fill, rounded to 0.001.
    """

    def __init__(
        self,
        *,
        loss: str = "triplet",
        lr: float = HEAD_LR,
        batch_size: int = 128,
        epochs: int = RunConfig.epochs,
        patience: int = PATIENCE,
        seed: int = RunConfig.seed,
        progress: ProgressArg = True,
    ) -> None:
        self.loss = loss
        self.lr = lr
        self.batch_size = batch_size
        self.epochs = epochs
        self.patience = patience
        self.seed = seed
        self.progress = progress

    def _check(self, train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray) -> None:
        if train_x.shape[1] != val_x.shape[1]:
            raise ConfigError(f"train and validation dims differ: {train_x.shape[1]} vs {val_x.shape[1]}")
        if self.loss not in QUATERION_LOSSES:
            raise ConfigError(
                f"unknown loss {self.loss!r} for the quaterion engine; choose one of: {', '.join(QUATERION_LOSSES)}"
            )
        settings = {"batch_size": self.batch_size, "epochs": self.epochs,
                    "patience": self.patience}
        for name, value in settings.items():
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
            # Fresh loaders every fit: Quaterion rewires a loader's collate_fn / label cache during fit.
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
