"""Write the model door's folder: a sentence-transformers model every embedder refinery ships can load.

refinery-embedder runs ``SentenceTransformer(path)`` (``util/embedders.py``) with sentence-transformers 2.2.2
(CPU image) or 3.0.1 (GPU image). A folder saved by today's release carries config keys those refuse, so it
is written in the classic layout they read (``docs/snapshot.md``): classic module paths, a minimal
``sentence_bert_config.json``, 2.2.2's five pooling keys, the head as ``Dense`` (``pytorch_model.bin``) then
``Normalize``; the base model's files copied unchanged in head mode.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..errors import ConfigError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

__all__ = ["save_model", "TRANSFORMER_FILES"]

TRANSFORMER_FILES = ("config.json", "model.safetensors", "pytorch_model.bin", "tokenizer.json", "tokenizer_config.json",
                     "vocab.txt", "special_tokens_map.json", "merges.txt", "vocab.json", "sentencepiece.bpe.model",
                     "spiece.model", "added_tokens.json")
"""The transformer's files a sentence-transformers folder keeps at its top level (weights, config, tokenizer)."""
_WEIGHTS = ("config.json", "model.safetensors", "pytorch_model.bin")
_POOLING_KEYS = {"cls": "pooling_mode_cls_token", "mean": "pooling_mode_mean_tokens", "max": "pooling_mode_max_tokens",
                 "mean_sqrt_len_tokens": "pooling_mode_mean_sqrt_len_tokens"}
"""Pooling modes 2.2.2's ``Pooling(**config)`` knows, by today's name, and the config key each sets."""


def _pooling_config(model: SentenceTransformer) -> dict[str, object]:
    pooling = model[1]
    mode = str(getattr(pooling, "pooling_mode", "mean"))
    if mode not in _POOLING_KEYS:
        raise ConfigError(f"the base model pools by {mode!r}, which refinery's embedder (sentence-transformers 2.2.2) "
                          f"cannot load; use a base model with {', '.join(_POOLING_KEYS)} pooling (--base-model)")
    config: dict[str, object] = {"word_embedding_dimension": int(pooling.embedding_dimension)}
    config.update({key: name == mode for name, key in _POOLING_KEYS.items()})
    return config


def _transformer_files(model: SentenceTransformer, source: Path, into: Path, *, fine_tuned: bool) -> None:
    """The transformer's files: copied from ``source`` (the base model folder); with ``fine_tuned`` the
    weights and their config come from ``model`` instead."""
    for name in TRANSFORMER_FILES:
        if (source / name).is_file() and not (fine_tuned and name in _WEIGHTS):
            shutil.copyfile(source / name, into / name)
    if fine_tuned:
        with torch.no_grad():
            model[0].auto_model.save_pretrained(str(into), safe_serialization=True)


def _modules(entries: list[tuple[str, str]]) -> list[dict[str, object]]:
    return [{"idx": i, "name": str(i), "path": path, "type": f"sentence_transformers.models.{kind}"}
            for i, (kind, path) in enumerate(entries)]


def save_model(model: SentenceTransformer, out: Path, *, source: Path, fine_tuned: bool = False,
               dense: tuple[np.ndarray, np.ndarray] | None = None) -> Path:
    """Write ``model`` (Transformer, Pooling, Normalize) into ``out`` in the classic layout; returns ``out``.

    ``source``: the base model's folder (its tokenizer, and its weights unless ``fine_tuned``). ``dense``:
    ``(weight, bias)`` of ``x @ weight.T + bias`` on the normalised vector, a ``Dense`` layer then ``Normalize``.
    """
    from .save import atomic_dir, replace_dir

    tmp = atomic_dir(out)
    try:
        _transformer_files(model, Path(source), tmp, fine_tuned=fine_tuned)
        (tmp / "sentence_bert_config.json").write_text(json.dumps(
            {"max_seq_length": int(model.max_seq_length), "do_lower_case": bool(getattr(model[0], "do_lower_case", False))},
            indent=2))
        (tmp / "1_Pooling").mkdir()
        (tmp / "1_Pooling" / "config.json").write_text(json.dumps(_pooling_config(model), indent=2))
        entries = [("Transformer", ""), ("Pooling", "1_Pooling"), ("Normalize", "2_Normalize")]
        if dense is not None:
            weight = torch.as_tensor(np.asarray(dense[0], dtype=np.float32))
            bias = torch.as_tensor(np.asarray(dense[1], dtype=np.float32))
            (tmp / "3_Dense").mkdir()
            (tmp / "3_Dense" / "config.json").write_text(json.dumps(
                {"in_features": int(weight.shape[1]), "out_features": int(weight.shape[0]), "bias": True,
                 "activation_function": "torch.nn.modules.linear.Identity"}, indent=2))
            torch.save({"linear.weight": weight.contiguous(), "linear.bias": bias.contiguous()},
                       tmp / "3_Dense" / "pytorch_model.bin")
            entries += [("Dense", "3_Dense"), ("Normalize", "4_Normalize")]
        for kind, path in entries:
            if kind == "Normalize":
                (tmp / path).mkdir()
        (tmp / "modules.json").write_text(json.dumps(_modules(entries), indent=2))
        (tmp / "config_sentence_transformers.json").write_text(json.dumps(
            {"__version__": {"sentence_transformers": "2.2.2", "transformers": "4.41.2", "pytorch": torch.__version__}},
            indent=2))
        replace_dir(tmp, Path(out))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Path(out)
