"""Embeddings the host computes from a model, as refinery's gateway queues them and its embedder runs them
(the model door, ``docs/model-door.md``).

:attr:`ModelEmbeddings.events` records what happened in order, so tests can check that a new embedding was
``FINISHED`` before an old one was deleted.
"""

from __future__ import annotations

import json
import logging
import posixpath
import queue
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..refinery.columns import HUGGINGFACE
from .api_errors import GatewayError
from .db import HostDB, drop_embedding, now_iso
from .project import Project
from .vectors import VectorCache

__all__ = ["ModelEmbeddings", "parse_volume", "EMBED_BATCH"]

log = logging.getLogger(__name__)

EMBED_BATCH = 128
"""refinery-embedder ``get_embedder``: ``batch_size = 128`` for attribute embeddings."""


def parse_volume(spec: str) -> tuple[Path, str]:
    """``HOST_DIR:/container/path`` (docker's ``-v`` syntax, an optional ``:ro`` allowed) -> the pair."""
    parts = spec.split(":")
    if len(parts) == 3 and parts[2] in ("ro", "rw"):
        parts = parts[:2]
    if len(parts) != 2 or not parts[0] or not posixpath.isabs(parts[1]):
        raise ValueError(f"a volume is HOST_DIR:/path/in/container, got {spec!r}")
    return Path(parts[0]).expanduser(), posixpath.normpath(parts[1])


@dataclass(frozen=True)
class _Task:
    name: str
    attribute: str
    embedding_type: str
    platform: str | None
    model: str | None


class ModelEmbeddings:
    """The gateway's embedding routes over the ``embeddings``/``tensors`` tables, and the one-slot task worker."""

    def __init__(self, db: HostDB, project: Project, vectors: VectorCache,
                 volumes: Sequence[tuple[Path, str]] = ()) -> None:
        self.db = db
        self.project = project
        self.vectors = vectors
        self.volumes = [(Path(h), posixpath.normpath(c)) for h, c in volumes]
        self.events: list[tuple[str, str]] = []
        """``(event, embedding name)`` in order: ``queued``, ``dropped``, ``INITIALIZING``, ``ENCODING``,
        ``FINISHED``, ``FAILED``, ``deleted``."""
        self._queue: queue.Queue[_Task | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def queue_embedding(self, attribute_id: str, config: str) -> None:
        """refinery-gateway ``fast_api/routes/embedding.py`` ``create_embedding``: ``json.loads(config)``, the name
        from ``controller/embedding/manager.py`` ``get_embedding_name``; a failure raises :class:`GatewayError`
        (the gateway's 500), else the task is queued."""
        try:
            cfg = json.loads(config)
            embedding_type = cfg["embeddingType"]
            platform, model = cfg.get("platform"), cfg.get("model")
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
            raise GatewayError("config is not a JSON object with embeddingType") from None
        if embedding_type not in ("ON_ATTRIBUTE", "ON_TOKEN"):
            raise GatewayError("Embedding type must be either attribute or token")
        attribute = self.project.attribute_named_by_id(attribute_id)
        if attribute is None:
            raise GatewayError("attribute not found")
        kind = "classification" if embedding_type == "ON_ATTRIBUTE" else "extraction"
        name = f"{attribute}-{kind}-{platform}" + (f"-{model}" if model else "")
        self._note("queued", name)
        self._ensure_worker()
        self._queue.put(_Task(name, attribute, embedding_type, platform, model))

    def nodes(self) -> list[dict[str, Any]]:
        """``embeddings-by-project``'s nodes: every embedding of the project, whatever made it."""
        rows = self.db.all("SELECT id, name, attribute, type, custom, dimension, platform, model, state, served"
                           " FROM embeddings ORDER BY created_at, id")
        counts = dict(self.db.all("SELECT embedding_id, COUNT(*) FROM tensors GROUP BY embedding_id"))
        n = max(self.project.record_count, 1)
        out = []
        for eid, name, attribute, etype, custom, dim, platform, model, state, served in rows:
            count = int(counts.get(eid, 0))
            progress = 1 if state == "FINISHED" else 0.0 if state in ("INITIALIZING", "WAITING") else min(
                0.1 + count / n * 0.9, 0.99)
            out.append({
                "id": eid, "name": name, "custom": bool(custom), "type": etype, "state": state, "platform": platform,
                "model": model, "filterAttributes": None,
                "attributeId": self.project.attribute_id(attribute) if attribute else None,
                "progress": progress, "dimension": dim if count else 0, "count": count,
                "onQdrant": bool(served) and state == "FINISHED",
            })
        return out

    def delete(self, embedding_id: str) -> None:
        """``delete-embedding`` (``controller/embedding/manager.py``): the row, its tensors and threshold; a task
        still encoding it stores nothing; nothing happens for an unknown id."""
        with self.db.tx() as conn:
            row = conn.execute("SELECT name FROM embeddings WHERE id = ?", (embedding_id,)).fetchone()
            drop_embedding(conn, embedding_id)
        self.vectors.drop(embedding_id)
        if row is not None:
            self._note("deleted", row[0])

    def close(self, timeout: float = 30.0) -> None:
        """Stop the worker after the task it runs."""
        with self._lock:
            thread = self._thread
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout)

    def wait_idle(self, timeout: float = 120.0) -> bool:
        """True once every queued task ran (tests)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._queue.unfinished_tasks == 0:
                return True
            time.sleep(0.05)
        return False

    def _note(self, event: str, name: str) -> None:
        with self._lock:
            self.events.append((event, name))
        log.info("embedding %s: %s", name, event)

    def _ensure_worker(self) -> None:
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._loop, name="kern-host-embedder", daemon=True)
                self._thread.start()

    def _loop(self) -> None:
        while True:
            task = self._queue.get()
            try:
                if task is None:
                    return
                eid = self._start(task)
                if eid is not None:
                    self._run(eid, task)
            except Exception:  # noqa: BLE001 - one task must not stop the queue
                log.exception("embedding task %s crashed", getattr(task, "name", "?"))
            finally:
                self._queue.task_done()

    def _start(self, task: _Task) -> str | None:
        """The task queue's start (v1.15 ``controller/task_queue/handler/embedding.py``, one slot): a task whose
        name an embedding has is dropped silently, else the row appears, ``INITIALIZING``."""
        eid = str(uuid.uuid4())
        with self.db.tx() as conn:
            if conn.execute("SELECT 1 FROM embeddings WHERE name = ?", (task.name,)).fetchone() is not None:
                eid = ""
            else:
                conn.execute(
                    "INSERT INTO embeddings (id, name, attribute, type, custom, dimension, platform, model,"
                    " expected_count, state, served, created_at, updated_at) VALUES (?, ?, ?, ?, 0, 0, ?, ?, ?,"
                    " 'INITIALIZING', 0, ?, ?)",
                    (eid, task.name, task.attribute, task.embedding_type, task.platform, task.model,
                     self.project.record_count, now_iso(), time.time()))
        self._note("dropped" if not eid else "INITIALIZING", task.name)
        return eid or None

    def _set_state(self, eid: str, name: str, state: str, **extra: Any) -> bool:
        """Set the state unless the embedding was deleted meanwhile (then False)."""
        sets = ", ".join(["state = ?", "updated_at = ?"] + [f"{k} = ?" for k in extra])
        with self.db.tx() as conn:
            cur = conn.execute(f"UPDATE embeddings SET {sets} WHERE id = ?",
                               (state, time.time(), *extra.values(), eid))
            alive = cur.rowcount > 0
        if alive:
            self._note(state, name)
        return alive

    def _run(self, eid: str, task: _Task) -> None:
        """refinery-embedder ``controller.py`` ``run_encoding``: a model that does not load is ``FAILED``; else
        ``ENCODING``, the texts in batches of 128 in ``running_id`` order, the embedder's PCA-64, ``FINISHED``."""
        try:
            encoder = self._load(task)
        except Exception as exc:  # noqa: BLE001 - the embedder marks any load failure FAILED
            log.warning("embedding %s: the model does not load: %s", task.name, exc)
            self._set_state(eid, task.name, "FAILED")
            return
        if not self._set_state(eid, task.name, "ENCODING"):
            return
        try:
            order, texts = self.project.attribute_texts(task.attribute)
            parts = [np.asarray(encoder.encode(texts[i:i + EMBED_BATCH], batch_size=EMBED_BATCH,
                                               show_progress_bar=False), dtype=np.float64)
                     for i in range(0, len(texts), EMBED_BATCH)]
            matrix = np.concatenate(parts) if parts else np.zeros((0, 1))
            from ..refinery.embedder import reduce_like_embedder

            matrix = reduce_like_embedder(matrix).astype("<f4")  # rows already in running_id order
        except Exception as exc:  # noqa: BLE001 - a runtime error: FAILED, as run_encoding does
            log.warning("embedding %s failed while encoding: %s", task.name, exc)
            self._set_state(eid, task.name, "FAILED")
            return
        self._store(eid, task.name, order, matrix)

    def _store(self, eid: str, name: str, order: list[int], matrix: np.ndarray) -> None:
        rows = [(eid, idx, matrix[i].tobytes()) for i, idx in enumerate(order)]
        with self.db.tx() as conn:
            if conn.execute("SELECT 1 FROM embeddings WHERE id = ?", (eid,)).fetchone() is None:
                return  # deleted while it was encoding: the embedder stops too
            conn.executemany("INSERT OR REPLACE INTO tensors (embedding_id, record_idx, data) VALUES (?, ?, ?)", rows)
            conn.execute("UPDATE embeddings SET dimension = ? WHERE id = ?", (int(matrix.shape[1]), eid))
        self._set_state(eid, name, "FINISHED", served=1, finished_at=now_iso())

    def _load(self, task: _Task) -> Any:
        """``SentenceTransformer(model)`` as the embedder container sees ``model``."""
        if task.embedding_type != "ON_ATTRIBUTE":
            raise ValueError("this host computes attribute-level embeddings only")
        if task.platform != HUGGINGFACE or not task.model:
            raise ValueError(f"this host computes huggingface embeddings only, not {task.platform!r}")
        where: str | Path = task.model
        if posixpath.isabs(task.model):
            where = self._on_volume(task.model)
        from sentence_transformers import SentenceTransformer

        return SentenceTransformer(str(where), device="cpu", local_files_only=True)  # this host never downloads

    def _on_volume(self, model: str) -> Path:
        """The host folder behind an absolute path inside the embedder container (``models_volumes``); ValueError
        when no volume holds it (the container has no such path)."""
        path = posixpath.normpath(model)
        for host_dir, mount in self.volumes:
            if path == mount or path.startswith(mount.rstrip("/") + "/"):
                local = host_dir.joinpath(*posixpath.relpath(path, mount).split("/"))
                if local.is_dir():
                    return local
                break
        raise ValueError(f"{model} does not exist inside the embedder (no models volume holds it)")
