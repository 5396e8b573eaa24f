"""Compatibility shims that let quaterion 0.1.35 (2022) run on this project's stack.

quaterion and quaterion-models are installed ``--no-deps``: their pins (torch<2, numpy<2, Python
<3.11-era enum behaviour) conflict with the rest of the project. Only what actually breaks is shimmed;
each shim says what it fixes. :func:`patch_quaterion` applies them and is idempotent; call it before
importing anything from ``quaterion`` (``kern_finetune.training.train_quaterion`` does).

Checked and found *not* to need a shim (torch 2.13, numpy 2.x, pytorch-lightning 1.9.5,
setuptools 80, Python 3.11):

* numpy 2 in quaterion / quaterion-models – they use only ``np.concatenate`` / ``np.atleast_2d``
  (numpy 2 does break pytorch-lightning 1.9.5's callbacks: shim (c)).
* ``pkg_resources`` – still shipped by setuptools<81 (lightning's namespace declaration uses it;
  only deprecation warnings, which :func:`quiet_quaterion` silences).
"""

from __future__ import annotations

import enum
import types
import warnings
from typing import Any

__all__ = ["patch_quaterion", "quiet_quaterion"]

_PATCHED = False


def _alias_t_co() -> None:
    """Shim (a): torch renamed the ``T_co`` TypeVar to ``_T_co`` in ``torch.utils.data.dataloader`` and
    ``torch.utils.data.dataset``; quaterion does ``from torch.utils.data.dataloader import T_co`` (and
    from ``dataset``), which is an ImportError on current torch. Alias the old name back."""
    import torch.utils.data.dataloader as dataloader_mod
    import torch.utils.data.dataset as dataset_mod

    for mod in (dataloader_mod, dataset_mod):
        if not hasattr(mod, "T_co"):
            mod.T_co = mod._T_co  # type: ignore[attr-defined]


def _str_enum_value_format(cls: type[enum.Enum]) -> None:
    """Make a ``(str, Enum)`` class print and format as its value, as it did before Python 3.11."""

    def __str__(self: enum.Enum) -> str:  # noqa: N807
        return str(self.value)

    def __format__(self: enum.Enum, spec: str) -> str:  # noqa: N807
        return format(str(self.value), spec)

    cls.__str__ = __str__  # type: ignore[method-assign,assignment]
    cls.__format__ = __format__  # type: ignore[method-assign,assignment]


def _fix_str_enums() -> None:
    """Shim (b): since Python 3.11, ``f"{TrainStage.VALIDATION}_loss"`` renders as
    ``"TrainStage.VALIDATION_loss"`` instead of ``"validation_loss"`` (``Enum.__format__`` now follows
    ``Enum.__str__`` for mixed-in enums). quaterion builds every logged metric name that way
    (``TrainableModel._common_step``, attached metrics, its own ``EarlyStopping`` default), so
    monitors on ``validation_loss`` silently never see their metric. Restore value formatting on
    quaterion's str-enums: ``TrainStage`` (the one that breaks names); ``Distance``, ``CacheType``,
    ``CacheMode`` and ``XbmDevice`` only appear in messages/config dicts, fixed alike for
    consistency. Equality and hashing (dict lookups by name) are unaffected."""
    from quaterion.distances import Distance
    from quaterion.train.cache.cache_config import CacheType
    from quaterion.train.cache.cache_encoder import CacheMode
    from quaterion.train.xbm.xbm_config import XbmDevice
    from quaterion.utils.enums import TrainStage

    for cls in (TrainStage, Distance, CacheType, CacheMode, XbmDevice):
        _str_enum_value_format(cls)


class _NumpyWithInf(types.ModuleType):
    """A stand-in for the ``numpy`` module that also has the pre-2.0 alias ``Inf``."""

    Inf = float("inf")

    def __getattr__(self, name: str) -> Any:
        import numpy

        return getattr(numpy, name)


def _numpy2_lightning_callbacks() -> None:
    """Shim (c): numpy 2 removed ``np.Inf``; pytorch-lightning 1.9.5 (quaterion's Lightning line) uses
    it in the constructors of ``EarlyStopping`` and ``ModelCheckpoint`` (``torch.tensor(np.Inf)``), so
    building either raises AttributeError. Give just those two modules a numpy stand-in that has
    ``Inf`` (numpy itself is left untouched). Nothing else in lightning/quaterion/quaterion-models
    uses a name numpy 2 removed (torchmetrics' FID does, but is not used)."""
    import numpy
    from pytorch_lightning.callbacks import early_stopping, model_checkpoint

    for mod in (early_stopping, model_checkpoint):
        if not hasattr(mod.np, "Inf"):
            mod.np = _NumpyWithInf("numpy")  # type: ignore[attr-defined]
    del numpy


def patch_quaterion() -> None:
    """Apply every shim once (idempotent); afterwards ``import quaterion`` works and names metrics
    the way quaterion's own callbacks expect (``train_loss``, ``validation_loss``)."""
    global _PATCHED
    if _PATCHED:
        return
    _alias_t_co()  # must precede the first ``import quaterion``
    _fix_str_enums()
    _numpy2_lightning_callbacks()
    _PATCHED = True


def quiet_quaterion() -> None:
    """Silence quaterion's import-time chatter: lightning/pkg_resources deprecation warnings (install
    the filters inside ``warnings.catch_warnings()`` to keep them local) and quaterion's loguru debug
    lines (disabled for good). Output only; no behaviour change. Fit-time lightning logging is
    silenced separately, for the duration of a fit."""
    for category, module in (
        (DeprecationWarning, r"(lightning_fabric|pytorch_lightning|pkg_resources|quaterion).*"),
        (UserWarning, r"(lightning_fabric|pytorch_lightning|pkg_resources|quaterion).*"),
    ):
        warnings.filterwarnings("ignore", category=category, module=module)
    warnings.filterwarnings("ignore", message=r".*pkg_resources is deprecated.*")
    warnings.filterwarnings("ignore", message=r".*declare_namespace.*")
    try:
        from loguru import logger as _loguru

        _loguru.disable("quaterion")
    except ImportError:  # pragma: no cover - loguru is a quaterion dependency
        pass

