"""Write the fine-tuned model in sentence-transformers format, and the per-record vectors.

The trained head is folded into the model's module list as a built-in ``Dense`` layer (the head's
eval-mode map is affine, see :meth:`SkipConnectionHead.as_affine`) followed by ``Normalize``, so
``SentenceTransformer(DIR/model)`` loads anywhere, without kern-finetune, and gives the same vectors as
``normalize(head(encoder(x)))``. Everything is written to a temporary folder first and moved into
place at the end: a failed run leaves no half-written model.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from .heads import SkipConnectionHead

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

__all__ = ["save_model", "save_vectors", "load_vectors", "atomic_dir"]


def _with_head(model: SentenceTransformer, head: SkipConnectionHead) -> SentenceTransformer:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import Dense, Normalize

    weight, bias = head.as_affine()
    dense = Dense(
        head.dim, head.dim, bias=True, activation_function=nn.Identity(), init_weight=weight.clone(), init_bias=bias.clone()
    )
    modules = [model[i] for i in range(len(model))] + [dense, Normalize()]
    return SentenceTransformer(modules=modules, device="cpu")


def atomic_dir(final: Path) -> Path:
    """A fresh temporary sibling of ``final``; move it into place with :func:`_replace_dir`."""
    final.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))


def _replace_dir(tmp: Path, final: Path) -> None:
    if final.exists():
        old = final.with_name(f".{final.name}-old")
        shutil.rmtree(old, ignore_errors=True)
        final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)


def save_model(model: SentenceTransformer, head: SkipConnectionHead | None, out: Path) -> Path:
    """Save ``model`` (+ folded ``head``) to ``out`` atomically; returns ``out``."""
    tmp = atomic_dir(out)
    try:
        full = _with_head(model, head) if head is not None else model
        with torch.no_grad():
            full.save(str(tmp))
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def save_vectors(path: Path, ids: list[str], vectors: np.ndarray) -> None:
    """``vectors.npz`` with ``ids`` (str) and ``vectors`` (float32, L2-normalised), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as fh:
        np.savez_compressed(fh, ids=np.array(ids, dtype=str), vectors=vectors.astype(np.float32))
    tmp.replace(path)


def load_vectors(path: Path) -> tuple[list[str], np.ndarray]:
    data = np.load(path, allow_pickle=False)
    return [str(i) for i in data["ids"]], data["vectors"]


def write_json(path: Path, obj: object) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False))
    tmp.replace(path)
