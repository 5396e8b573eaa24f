"""Compatibility shims that let quaterion 0.1.35 run on this project's stack.

quaterion and quaterion-models are installed ``--no-deps``: their pins (torch<2, numpy<2, Python<3.11 enum
behaviour) conflict with the rest of the project. Only what breaks is shimmed, each shim saying what it
fixes; :func:`patch_quaterion` applies them, before anything is imported from ``quaterion``.
"""

from __future__ import annotations

import enum
import types
import warnings
from typing import Any

__all__ = ["patch_quaterion", "quiet_quaterion"]

_PATCHED = False


def _alias_t_co() -> None:
    """torch renamed ``T_co`` to ``_T_co`` in ``torch.utils.data.dataloader`` and ``.dataset``, from which
    quaterion imports ``T_co``: alias the old name back."""
    import torch.utils.data.dataloader as dataloader_mod
    import torch.utils.data.dataset as dataset_mod

    for mod in (dataloader_mod, dataset_mod):
        if not hasattr(mod, "T_co"):
            mod.T_co = mod._T_co  # type: ignore[attr-defined]


def _value_str(self: enum.Enum) -> str:
    return str(self.value)


def _value_format(self: enum.Enum, spec: str) -> str:
    return format(str(self.value), spec)


def _fix_str_enums() -> None:
    """Since Python 3.11, ``f"{TrainStage.VALIDATION}_loss"`` renders as ``"TrainStage.VALIDATION_loss"``, and
    quaterion builds every logged metric name that way, so monitors on ``validation_loss`` never see their
    metric. Restore value formatting on quaterion's str-enums (``TrainStage`` breaks names; the others are
    fixed alike for consistency); equality and hashing are unaffected."""
    from quaterion.distances import Distance
    from quaterion.train.cache.cache_config import CacheType
    from quaterion.train.cache.cache_encoder import CacheMode
    from quaterion.train.xbm.xbm_config import XbmDevice
    from quaterion.utils.enums import TrainStage

    for cls in (TrainStage, Distance, CacheType, CacheMode, XbmDevice):
        cls.__str__ = _value_str  # type: ignore[method-assign,assignment]
        cls.__format__ = _value_format  # type: ignore[method-assign,assignment]


class _NumpyWithInf(types.ModuleType):
    """A stand-in for the ``numpy`` module that also has the pre-2.0 alias ``Inf``."""

    Inf = float("inf")

    def __getattr__(self, name: str) -> Any:
        import numpy

        return getattr(numpy, name)


def _numpy2_lightning_callbacks() -> None:
    """numpy 2 removed ``np.Inf``, which pytorch-lightning 1.9.5's ``EarlyStopping`` and ``ModelCheckpoint``
    constructors use: give just those two modules a numpy stand-in that has it."""
    from pytorch_lightning.callbacks import early_stopping, model_checkpoint

    for mod in (early_stopping, model_checkpoint):
        if not hasattr(mod.np, "Inf"):
            mod.np = _NumpyWithInf("numpy")  # type: ignore[attr-defined]


def patch_quaterion() -> None:
    """Apply every shim once (idempotent)."""
    global _PATCHED
    if _PATCHED:
        return
    _alias_t_co()  # must precede the first ``import quaterion``
    _fix_str_enums()
    _numpy2_lightning_callbacks()
    _PATCHED = True


def quiet_quaterion() -> None:
    """Silence quaterion's import-time chatter: lightning/pkg_resources deprecation warnings (install the
    filters inside ``warnings.catch_warnings()`` to keep them local) and quaterion's loguru debug lines."""
    for category in (DeprecationWarning, UserWarning):
        warnings.filterwarnings("ignore", category=category,
                                module=r"(lightning_fabric|pytorch_lightning|pkg_resources|quaterion).*")
    warnings.filterwarnings("ignore", message=r".*pkg_resources is deprecated.*")
    warnings.filterwarnings("ignore", message=r".*declare_namespace.*")
    from loguru import logger  # a dependency of quaterion's

    logger.disable("quaterion")

