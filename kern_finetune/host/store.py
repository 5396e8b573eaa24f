"""SQLite state of the local refinery-compatible host: one project, its records, labels, users and embeddings.

Everything lives in one file, ``<data_dir>/host.sqlite3`` (WAL mode). The records are imported once, on
the first start, from an export file; later starts reuse what is there, so a restart loses nothing.

Tables::

    meta          key/value: project id and name, id attribute, attributes, labeling tasks, export hash
    records       idx (import order), record_id (the id attribute's value), data (the export row as JSON,
                  label columns included; label changes rewrite it)
    label_events  every label change (audit trail: who, when, which column)
    users         the one configured user: salted PBKDF2-SHA256 password hash
    sessions      login tokens, stored as SHA-256 hashes, with an expiry
    embeddings    one row per version: state INITIALIZING/ENCODING (staged) or FINISHED (served)
    tensors       (embedding_id, record_idx) -> float32 little-endian blob
    record_uuids  the record UUIDs (a snapshot's record ids; made from project and record id for an export)
    thresholds    each served embedding's similarity threshold, computed on its first search
    model_callbacks  associations posted the SDK's way (refinery stores them as MODEL_CALLBACK votes)
    labeling_sessions  ordered record-id lists produced by similarity search

Staged embedding versions are never served; :meth:`HostStore.finalize_embedding` swaps a complete one in
within a single transaction. Errors meant for API callers are raised as :class:`ApiError`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import secrets
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, TaskNotFoundError
from ..refinery.export import resolve_task
from .importer import plan_import
from .values import as_confidence, dump_row, is_int, is_text, is_unit_number
from .vectors import SEARCH_LIMIT, VectorCache, VectorIndex, similarity_threshold

__all__ = ["ApiError", "GatewayError", "HostStore", "DB_FILE", "SESSION_TTL_S", "STALE_STAGED_S"]

log = logging.getLogger(__name__)

DB_FILE = "host.sqlite3"
SESSION_TTL_S = 24 * 3600
"""Login tokens expire after this many seconds (Kratos's default session lifespan)."""
STALE_STAGED_S = 6 * 3600
"""A staged version untouched this long is dropped when a new version of the same name is created."""
_PBKDF2_ITERATIONS = 100_000
_MAX_DIMENSION = 16_384
_STAGED = ("INITIALIZING", "ENCODING")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS records (
    idx INTEGER PRIMARY KEY, record_id TEXT NOT NULL UNIQUE, data TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS label_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT, record_idx INTEGER NOT NULL, task TEXT NOT NULL,
    source TEXT NOT NULL, label TEXT, confidence TEXT, origin TEXT, user_name TEXT, created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY, salt BLOB NOT NULL, pw_hash BLOB NOT NULL, iterations INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS sessions (
    token_hash TEXT PRIMARY KEY, user_name TEXT NOT NULL, created_at REAL NOT NULL, expires_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS embeddings (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, attribute TEXT, type TEXT NOT NULL, custom INTEGER NOT NULL,
    dimension INTEGER NOT NULL, platform TEXT, model TEXT, expected_count INTEGER, state TEXT NOT NULL,
    served INTEGER NOT NULL DEFAULT 0, created_at TEXT NOT NULL, updated_at REAL NOT NULL, finished_at TEXT);
CREATE UNIQUE INDEX IF NOT EXISTS embeddings_served_name ON embeddings(name) WHERE served = 1;
CREATE TABLE IF NOT EXISTS tensors (
    embedding_id TEXT NOT NULL, record_idx INTEGER NOT NULL, data BLOB NOT NULL,
    PRIMARY KEY (embedding_id, record_idx));
CREATE TABLE IF NOT EXISTS record_uuids (idx INTEGER PRIMARY KEY, uuid TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS thresholds (embedding_id TEXT PRIMARY KEY, value REAL);
CREATE TABLE IF NOT EXISTS model_callbacks (
    id INTEGER PRIMARY KEY AUTOINCREMENT, record_idx INTEGER NOT NULL, task TEXT NOT NULL, source_name TEXT NOT NULL,
    label TEXT NOT NULL, confidence REAL, user_name TEXT, created_at TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS labeling_sessions (
    id TEXT PRIMARY KEY, embedding_id TEXT NOT NULL, embedding_name TEXT NOT NULL, query_record_id TEXT NOT NULL,
    record_ids TEXT NOT NULL, user_name TEXT, created_at TEXT NOT NULL);
"""


class ApiError(Exception):
    """An error answered to the API caller as ``{"error_code": code, "detail": detail}`` with ``status``."""

    def __init__(self, status: int, error_code: str, detail: str = "") -> None:
        super().__init__(f"{status} {error_code}: {detail}")
        self.status = status
        self.error_code = error_code
        self.detail = detail


class GatewayError(ApiError):
    """A failure inside the gateway behind refinery's proxy: the proxy answers it as ``200 null``."""

    def __init__(self, detail: str) -> None:
        super().__init__(500, "GATEWAY_ERROR", detail)




def _decode_b64(text: str, pos: int) -> np.ndarray:
    """A vector sent as base64 of little-endian float32 (``data_b64``), the compact form of ``data``."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(422, "INVALID_VECTOR", f"tensor #{pos}: data_b64 is not valid base64") from None
    if len(raw) % 4:
        raise ApiError(422, "INVALID_VECTOR", f"tensor #{pos}: data_b64 is not a whole number of float32 values")
    return np.frombuffer(raw, dtype="<f4")








def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _hash_password(password: str, salt: bytes, iterations: int) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class HostStore:
    """The host's state in SQLite; thread-safe (one connection guarded by a lock).

    Open with :meth:`open`; the first open of an empty ``data_dir`` imports ``export_path``.
    """

    def __init__(self, conn: sqlite3.Connection, data_dir: Path) -> None:
        self._conn = conn
        self._lock = threading.RLock()
        self.data_dir = data_dir
        self._meta: dict[str, Any] = {}
        self._record_ids: list[str] = []
        self._idx_by_id: dict[str, int] = {}
        self._uuids: list[str] = []
        self._idx_by_uuid: dict[str, int] = {}
        self._export_cache: tuple[int, list[str]] | None = None
        self._label_generation = 0
        self._vectors = VectorCache(capacity=4)

    # ------------------------------------------------------------------------------------------
    # opening and importing

    @classmethod
    def open(
        cls,
        data_dir: str | Path,
        export_path: str | Path | None = None,
        *,
        id_attribute: str = "running_id",
        project_id: str | None = None,
        project_name: str | None = None,
    ) -> HostStore:
        """Open (creating if needed) the state under ``data_dir``; import ``export_path`` on first use.

        Raises :class:`ConfigError` when the data dir holds a different project than asked for, or when
        there is nothing to import; :class:`ExportError` when the export cannot be used.
        """
        data_dir = Path(data_dir)
        if not data_dir.exists():  # a folder we create is private; an existing one keeps its mode
            data_dir.mkdir(parents=True, mode=0o700)
        elif not data_dir.is_dir():
            raise ConfigError(f"--data-dir {data_dir} is not a folder")
        db_path = data_dir / DB_FILE
        fresh = not db_path.exists()
        conn = sqlite3.connect(db_path, check_same_thread=False, isolation_level=None, timeout=30)
        if fresh:  # SQLite gives the -wal/-shm files the same mode
            db_path.chmod(0o600)
        store = cls(conn, data_dir)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.executescript(_SCHEMA)
            store._load_meta()
            if "project_id" not in store._meta:
                if export_path is None:
                    raise ConfigError(f"{data_dir} holds no project yet: give --export PATH to import one")
                store._import(Path(export_path), id_attribute=id_attribute, project_id=project_id, name=project_name)
                store._load_meta()
            else:
                store._check_same_project(export_path, id_attribute=id_attribute, project_id=project_id)
            store._load_record_ids()
        except BaseException:
            conn.close()
            raise
        return store

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._conn.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back on any error)."""
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def _load_meta(self) -> None:
        with self._lock:
            rows = self._conn.execute("SELECT key, value FROM meta").fetchall()
        self._meta = {k: json.loads(v) for k, v in rows}

    def _load_record_ids(self) -> None:
        with self._lock:
            rows = self._conn.execute("SELECT idx, record_id FROM records ORDER BY idx").fetchall()
        self._record_ids = [rid for _, rid in rows]
        if any(idx != i for i, (idx, _) in enumerate(rows)):
            raise ConfigError(f"{self.data_dir / DB_FILE}: record table is damaged (gaps in idx)")
        self._idx_by_id = {rid: i for i, rid in enumerate(self._record_ids)}
        with self._tx() as conn:  # a data dir from before record UUIDs were kept gets them now
            if conn.execute("SELECT COUNT(*) FROM record_uuids").fetchone()[0] != len(self._record_ids):
                conn.execute("DELETE FROM record_uuids")
                conn.executemany("INSERT INTO record_uuids (idx, uuid) VALUES (?, ?)",
                                 [(i, self._made_uuid(rid)) for i, rid in enumerate(self._record_ids)])
            rows = conn.execute("SELECT uuid FROM record_uuids ORDER BY idx").fetchall()
        self._uuids = [r[0] for r in rows]
        self._idx_by_uuid = {u: i for i, u in enumerate(self._uuids)}

    def _made_uuid(self, record_id: str) -> str:
        """A record UUID for a record imported from an export (which carries none): stable per project and record."""
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"kern-host:{self._meta['project_id']}:{record_id}"))

    def _check_same_project(self, export_path: str | Path | None, *, id_attribute: str, project_id: str | None) -> None:
        where = self.data_dir / DB_FILE
        if project_id is not None and project_id != self._meta["project_id"]:
            raise ConfigError(
                f"{where} holds project {self._meta['project_id']}, not {project_id}: use another --data-dir"
            )
        if id_attribute != self._meta["id_attribute"]:
            raise ConfigError(
                f"{where} was imported with id attribute {self._meta['id_attribute']!r}, not {id_attribute!r}"
            )
        if export_path is not None:
            path = Path(export_path)
            if path.exists() and _file_sha256(path) != self._meta.get("export_sha256"):
                raise ConfigError(
                    f"{where} was imported from a different export ({self._meta.get('export_file')}); "
                    "state is kept per data dir: use another --data-dir for another export"
                )

    def _import(self, path: Path, *, id_attribute: str, project_id: str | None, name: str | None) -> None:
        plan = plan_import(path, id_attribute=id_attribute)
        meta = {
            "project_id": project_id or str(uuid.uuid4()),
            "name": name or plan.name or path.name.split(".")[0],
            "description": f"imported by kern-finetune host from {path.name}",
            "tokenizer": "en_core_web_sm",
            "id_attribute": id_attribute,
            "attributes": plan.attributes,
            "tasks": plan.tasks,
            "extraction_tasks": plan.extraction_tasks,
            "export_file": str(path),
            "export_sha256": _file_sha256(path),
            "imported_at": _now_iso(),
        }
        now, stamp = time.time(), _now_iso()
        with self._tx() as conn:
            conn.executemany("INSERT INTO records (idx, record_id, data) VALUES (?, ?, ?)", plan.rows)
            conn.executemany(
                "INSERT INTO record_uuids (idx, uuid) VALUES (?, ?)",
                [(i, u) for i, u in enumerate(plan.uuids) if u is not None],
            )
            conn.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?)", [(k, json.dumps(v)) for k, v in meta.items()]
            )
            for emb in plan.embeddings:
                eid = str(uuid.uuid4())
                conn.execute(
                    "INSERT INTO embeddings (id, name, attribute, type, custom, dimension, platform, model,"
                    " expected_count, state, served, created_at, updated_at, finished_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, 'FINISHED', 1, ?, ?, ?)",
                    (eid, emb.name, emb.attribute, emb.type, int(emb.custom), int(emb.matrix.shape[1]), emb.platform,
                     emb.model, len(emb.positions), stamp, now, stamp),
                )
                conn.executemany(
                    "INSERT INTO tensors (embedding_id, record_idx, data) VALUES (?, ?, ?)",
                    [(eid, p, emb.matrix[k].astype("<f4").tobytes()) for k, p in enumerate(emb.positions)],
                )
        log.info("imported %d records, %d labeling task(s) and %d embedding(s) from %s", len(plan.rows),
                 len(plan.tasks), len(plan.embeddings), path)

    # ------------------------------------------------------------------------------------------
    # project

    @property
    def project_id(self) -> str:
        return str(self._meta["project_id"])

    @property
    def id_attribute(self) -> str:
        return str(self._meta["id_attribute"])

    @property
    def record_count(self) -> int:
        return len(self._record_ids)

    def project_details(self) -> dict[str, Any]:
        """What ``GET /api/project/{id}`` answers: refinery-gateway ``api/project.py`` ``ProjectDetails``'s
        fields (``name``, ``max_running_id``, ``description``, ``tokenizer``, ``attributes`` with
        ``name``/``data_type``/``is_primary_key``/``state``, ``knowledge_base_ids``), plus ``id``,
        ``labeling_tasks`` and ``record_count`` of ours."""
        tasks = [
            {
                "name": t["name"],
                "attribute": t["attribute"],
                "task_target": "ON_WHOLE_RECORD" if t["attribute"] is None else "ON_ATTRIBUTE",
                "task_type": "MULTICLASS_CLASSIFICATION",
                "labels": t["labels"],
            }
            for t in self._meta["tasks"]
        ] + [
            {"name": t["name"], "attribute": t["attribute"], "task_target": "ON_ATTRIBUTE",
             "task_type": "INFORMATION_EXTRACTION", "labels": []}
            for t in self._meta.get("extraction_tasks", [])
        ]
        return {
            "id": self.project_id,
            "name": self._meta["name"],
            "max_running_id": self._max_running_id(),
            "description": self._meta["description"],
            "tokenizer": self._meta["tokenizer"],
            "attributes": [dict(a, state="UPLOADED") for a in self._meta["attributes"]],
            "knowledge_base_ids": [],
            "labeling_tasks": tasks,
            "record_count": self.record_count,
        }

    def _max_running_id(self) -> int:
        """refinery-submodule-model ``business_objects/project.py`` ``get_max_running_id``: the largest integer
        value of the running-id attribute, -1 for none (ours: the id attribute when its values are integers)."""
        best = -1
        for rid in self._record_ids:
            try:
                best = max(best, int(rid))
            except ValueError:  # not an integer ("²" passes isdigit but not int)
                continue
        return best

    def export_json(self, num_samples: int | None = None) -> str:
        """The records as a JSON list (one object per record, label columns current), once encoded.

        ``num_samples`` is applied as refinery-gateway ``controller/transfer/manager.py`` ``export_records``
        applies it: ``sql_df.head(int(num_samples))``, i.e. the first N rows, and for a negative N every row
        but the last -N (pandas' ``head``; a Python slice ``[:N]`` does the same, also for huge N).
        """
        with self._lock:
            generation = self._label_generation
            if self._export_cache is None or self._export_cache[0] != generation:
                rows = [r[0] for r in self._conn.execute("SELECT data FROM records ORDER BY idx").fetchall()]
                self._export_cache = (generation, rows)
            rows = self._export_cache[1]
        if num_samples is not None:
            rows = rows[:num_samples]
        return "[" + ",".join(rows) + "]"

    # ------------------------------------------------------------------------------------------
    # labels

    def _resolve_task(self, task: Any) -> dict[str, Any]:
        if not isinstance(task, str) or not task:
            raise ApiError(422, "INVALID_REQUEST", "name the labeling task (a non-empty string)")
        template = {}
        for info in self._meta["tasks"]:
            template.update(dict.fromkeys((info["manual"], info["weak"], info["confidence"])))
        try:
            found = resolve_task([template], task)
        except TaskNotFoundError as exc:
            raise ApiError(404, "LABELING_TASK_NOT_FOUND", str(exc)) from None
        for info in self._meta["tasks"]:
            if info["name"] == found.name and info["attribute"] == found.attribute:
                return info
        raise ApiError(404, "LABELING_TASK_NOT_FOUND", f"task {task!r} is not in this project")

    def record_index(self, record_id: Any) -> int:
        """Import position of a record, by the id attribute's value as a string (404 RECORD_NOT_FOUND)."""
        if not isinstance(record_id, str):
            raise ApiError(422, "INVALID_REQUEST", f"record_id must be a string (the {self.id_attribute} value)")
        idx = self._idx_by_id.get(record_id)
        if idx is None:
            raise ApiError(404, "RECORD_NOT_FOUND", f"no record with {self.id_attribute} = {record_id!r}")
        return idx

    def record_uuid(self, record_id: str) -> str:
        """The record UUID (what the data browser's routes name records by) of a record id."""
        return self._uuids[self.record_index(record_id)]

    def set_labels(
        self,
        task: Any,
        items: list[tuple[Any, str | None, float | None]],
        *,
        source: str,
        user_name: str,
        origin: str = "",
    ) -> dict[str, Any]:
        """Set labels of one task for several records, all or nothing.

        ``items``: ``(record_id, label, confidence)``. ``source`` ``MANUAL`` sets the ``__MANUAL`` column
        (one manual label per record and task; a new one replaces it, ``None`` removes it);
        ``WEAK_SUPERVISION`` sets the weak label and its confidence.
        """
        info = self._resolve_task(task)
        if source not in ("MANUAL", "WEAK_SUPERVISION"):
            raise ApiError(422, "INVALID_REQUEST", f"unknown label source {source!r}")
        resolved: dict[int, tuple[str | None, float | None]] = {}
        for record_id, label, confidence in items:
            try:
                idx = self.record_index(record_id)
            except ApiError as exc:
                raise ApiError(422, "RECORD_NOT_FOUND" if exc.status == 404 else exc.error_code, exc.detail) from None
            if label is not None and (not isinstance(label, str) or not label.strip() or not is_text(label)
                                      or len(label) > 1000):
                raise ApiError(422, "INVALID_REQUEST", f"record {record_id!r}: a label is a non-empty string or null")
            if confidence is not None and not is_unit_number(confidence):
                raise ApiError(422, "INVALID_REQUEST", f"record {record_id!r}: confidence must be a number in [0, 1]")
            resolved[idx] = (label, None if confidence is None else float(confidence))
        now = _now_iso()
        new_labels: set[str] = set()
        with self._tx() as conn:
            for idx, (label, confidence) in resolved.items():
                row = json.loads(conn.execute("SELECT data FROM records WHERE idx = ?", (idx,)).fetchone()[0])
                if source == "MANUAL":
                    row[info["manual"]] = label
                    conf_text = None
                else:
                    row[info["weak"]] = label
                    conf_text = None if label is None else as_confidence(1.0 if confidence is None else confidence)
                    row[info["confidence"]] = conf_text
                conn.execute("UPDATE records SET data = ? WHERE idx = ?", (dump_row(row), idx))
                conn.execute(
                    "INSERT INTO label_events (record_idx, task, source, label, confidence, origin, user_name, created_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (idx, info["name"], source, label, conf_text, origin, user_name, now),
                )
                if label is not None and label not in info["labels"]:
                    new_labels.add(label)
            updated = sorted(set(info["labels"]) | new_labels)
            if new_labels:
                tasks = [dict(t, labels=updated) if t is info else t for t in self._meta["tasks"]]
                conn.execute("UPDATE meta SET value = ? WHERE key = 'tasks'", (json.dumps(tasks),))
            self._label_generation += 1  # under the lock: the export cache is stale from here on
            self._export_cache = None
        info["labels"] = updated
        return {"stored": len(resolved), "task": info["name"], "source": source}

    def import_associations(self, body: dict[str, Any], *, user_name: str) -> int:
        """The SDK's ``POST /associations``, as refinery-gateway v1.15.1 stores it.

        refinery-gateway ``controller/transfer/association_transfer_manager.py`` ``import_associations``: the
        associations become ``MODEL_CALLBACK`` votes of the information source ``name`` (created only for
        ``source_type == "heuristic"``), replacing that source's earlier votes on the same records; they are
        not manual labels and do not appear in the record export. Answers how many were stored. What fails
        in the gateway there (unknown task, unknown source type, unknown label, no indices) raises
        :class:`GatewayError`, which the proxy turns into ``200 null``. (Gateway v1.17.0 answers every
        associations call with 404, which the proxy reports as ``PROJECT_NOT_FOUND``.)
        """
        name, task_name, source_type = body["name"], body["label_task_name"], body["source_type"]
        associations, indices = body["associations"], body["indices"]
        task = next((t for t in self._meta["tasks"] if t["name"] == task_name), None)
        if task is None:
            raise GatewayError(f"no labeling task named {task_name!r}")
        if not isinstance(name, str) or not is_text(name) or not name:
            raise GatewayError("name must be the information source's name")
        with self._lock:
            known = self._conn.execute(
                "SELECT 1 FROM model_callbacks WHERE source_name = ? LIMIT 1", (name,)
            ).fetchone() is not None
        if not known and source_type != "heuristic":
            raise GatewayError("Unknown source type")
        if not isinstance(indices, list) or not indices or not isinstance(indices[0], dict):
            raise GatewayError("indices must be a non-empty list of primary-key objects")
        if not isinstance(associations, list):
            raise GatewayError("associations must be a list")
        keys = list(indices[0])
        if keys != [self.id_attribute]:
            raise GatewayError(f"indices must name records by {self.id_attribute!r}")
        found: list[int] = []  # get_records_by_composite_keys: records that exist, in the order asked
        for index in indices:
            value = index.get(self.id_attribute) if isinstance(index, dict) else None
            if isinstance(value, bool) or not isinstance(value, (str, int)):
                continue
            idx = self._idx_by_id.get(str(value))
            if idx is not None and idx not in found:
                found.append(idx)
        rows: list[tuple[int, str, float | None]] = []
        for idx, association in zip(found, associations):
            if not isinstance(association, list) or len(association) != 2:
                raise GatewayError("each association is [label, confidence]")
            label, confidence = association
            if not isinstance(label, str) or label not in task["labels"]:
                raise GatewayError(f"label {label!r} is not a label of task {task_name!r}")
            if confidence is not None and not is_unit_number(confidence):
                raise GatewayError("confidence must be a number in [0, 1]")
            rows.append((idx, label, None if confidence is None else float(confidence)))
        now = _now_iso()
        with self._tx() as conn:
            conn.executemany("DELETE FROM model_callbacks WHERE source_name = ? AND record_idx = ?",
                             [(name, idx) for idx in found])
            conn.executemany(
                "INSERT INTO model_callbacks (record_idx, task, source_name, label, confidence, user_name, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(idx, task["name"], name, label, conf, user_name, now) for idx, label, conf in rows],
            )
        return len(rows)

    # ------------------------------------------------------------------------------------------
    # users and sessions

    def configure_user(self, name: str, password: str) -> None:
        """Make ``name`` the one user of this host with ``password``.

        Other users and their sessions are removed; a changed password revokes the user's sessions.
        """
        if not name or not password:
            raise ConfigError("the host needs a user name and a non-empty password")
        with self._tx() as conn:
            row = conn.execute("SELECT salt, pw_hash, iterations FROM users WHERE name = ?", (name,)).fetchone()
            unchanged = row is not None and hmac.compare_digest(_hash_password(password, row[0], row[2]), row[1])
            conn.execute("DELETE FROM sessions WHERE user_name != ?", (name,))
            conn.execute("DELETE FROM users WHERE name != ?", (name,))
            if not unchanged:
                salt = secrets.token_bytes(16)
                conn.execute(
                    "INSERT OR REPLACE INTO users (name, salt, pw_hash, iterations) VALUES (?, ?, ?, ?)",
                    (name, salt, _hash_password(password, salt, _PBKDF2_ITERATIONS), _PBKDF2_ITERATIONS),
                )
                conn.execute("DELETE FROM sessions WHERE user_name = ?", (name,))
            conn.execute("DELETE FROM sessions WHERE expires_at < ?", (time.time(),))

    def check_password(self, name: Any, password: Any) -> bool:
        """True when ``name``/``password`` are the configured credentials (constant work either way)."""
        if not isinstance(name, str) or not isinstance(password, str):
            return False
        with self._lock:
            row = self._conn.execute("SELECT salt, pw_hash, iterations FROM users WHERE name = ?", (name,)).fetchone()
        if row is None:
            _hash_password(password, b"\0" * 16, _PBKDF2_ITERATIONS)  # same work as a real check
            return False
        return hmac.compare_digest(_hash_password(password, row[0], row[2]), row[1])

    def create_session(self, user_name: str, ttl_s: float = SESSION_TTL_S) -> tuple[str, float, float]:
        """A new random token for ``user_name``; only its hash is stored. Returns (token, issued, expires)."""
        token = secrets.token_urlsafe(32)
        issued = time.time()
        expires = issued + ttl_s
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO sessions (token_hash, user_name, created_at, expires_at) VALUES (?, ?, ?, ?)",
                (_hash_token(token), user_name, issued, expires),
            )
        return token, issued, expires

    def session_user(self, token: str | None) -> tuple[str, float, float] | None:
        """(user name, issued, expires) of a valid token, else None."""
        if not token:
            return None
        with self._lock:
            row = self._conn.execute(
                "SELECT user_name, created_at, expires_at FROM sessions WHERE token_hash = ?", (_hash_token(token),)
            ).fetchone()
        if row is None or row[2] < time.time():
            return None
        return row[0], row[1], row[2]

    # ------------------------------------------------------------------------------------------
    # embeddings

    @staticmethod
    def _embedding_json(row: sqlite3.Row | tuple[Any, ...], stored: int | None = None) -> dict[str, Any]:
        (eid, name, attribute, etype, custom, dim, platform, model, expected, state, served, created, _upd, finished) = row
        out = {
            "id": eid,
            "name": name,
            "attribute": attribute,
            "type": etype,
            "custom": bool(custom),
            "dimension": dim,
            "platform": platform,
            "model": model,
            "count": expected,
            "state": state,
            "served": bool(served),
            "created_at": created,
            "finished_at": finished,
        }
        if stored is not None:
            out["stored"] = stored
        return out

    def _embedding_row(self, embedding_id: str) -> tuple[Any, ...]:
        with self._lock:
            row = self._conn.execute("SELECT * FROM embeddings WHERE id = ?", (embedding_id,)).fetchone()
        if row is None:
            raise ApiError(404, "EMBEDDING_NOT_FOUND", f"no embedding version {embedding_id!r} in this project")
        return row

    def create_embedding(self, spec: Any) -> dict[str, Any]:
        """Stage a new embedding version (state INITIALIZING); the served one of that name stays served."""
        if not isinstance(spec, dict):
            raise ApiError(422, "INVALID_REQUEST", "body must be a JSON object")
        name = spec.get("name")
        if not isinstance(name, str) or not name.strip() or len(name) > 200 or not is_text(name):
            raise ApiError(422, "INVALID_REQUEST", "name must be a non-empty string of at most 200 characters")
        dim = spec.get("dimension")
        if isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim <= _MAX_DIMENSION:
            raise ApiError(422, "INVALID_REQUEST", f"dimension must be an integer in [1, {_MAX_DIMENSION}]")
        etype = spec.get("type", "ON_ATTRIBUTE")
        if etype != "ON_ATTRIBUTE":
            raise ApiError(422, "INVALID_REQUEST", f"type {etype!r} is not supported here, only ON_ATTRIBUTE")
        count = spec.get("count")
        if count is not None and not is_int(count, 0, 10**9):
            raise ApiError(422, "INVALID_REQUEST", "count must be an integer in [0, 10^9]")
        custom = spec.get("custom", True)
        if not isinstance(custom, bool):
            raise ApiError(422, "INVALID_REQUEST", "custom must be true or false")
        texts = {}
        for key in ("attribute", "platform", "model"):
            value = spec.get(key)
            if value is not None and (not isinstance(value, str) or len(value) > 200 or not is_text(value)):
                raise ApiError(422, "INVALID_REQUEST", f"{key} must be a string of at most 200 characters")
            texts[key] = value
        names = [a["name"] for a in self._meta["attributes"]]
        if texts["attribute"] is not None and texts["attribute"] not in names:
            raise ApiError(422, "INVALID_REQUEST", f"attribute must be one of the project's attributes: {', '.join(names)}")
        eid = str(uuid.uuid4())
        now = time.time()
        with self._tx() as conn:
            stale = [
                r[0]
                for r in conn.execute(
                    "SELECT id FROM embeddings WHERE name = ? AND served = 0 AND updated_at < ?",
                    (name, now - STALE_STAGED_S),
                )
            ]
            for old in stale:
                conn.execute("DELETE FROM tensors WHERE embedding_id = ?", (old,))
                conn.execute("DELETE FROM embeddings WHERE id = ?", (old,))
            conn.execute(
                "INSERT INTO embeddings (id, name, attribute, type, custom, dimension, platform, model,"
                " expected_count, state, served, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?)",
                (eid, name, texts["attribute"], etype, int(custom), dim,
                 texts["platform"], texts["model"], count, "INITIALIZING", _now_iso(), now),
            )
        if stale:
            log.info("dropped %d stale staged version(s) of %s", len(stale), name)
        log.info("staged embedding %s (%s, %d dims)", name, eid, dim)
        return self._embedding_json(self._embedding_row(eid), stored=0)

    def get_embedding(self, embedding_id: str) -> dict[str, Any]:
        """One version (staged or served) with how many vectors it holds."""
        row = self._embedding_row(embedding_id)
        with self._lock:
            stored = self._conn.execute(
                "SELECT COUNT(*) FROM tensors WHERE embedding_id = ?", (embedding_id,)
            ).fetchone()[0]
        return self._embedding_json(row, stored=stored)

    def list_embeddings(self, include_staged: bool = False) -> list[dict[str, Any]]:
        """Served embeddings (and staged versions when asked), oldest first."""
        sql = "SELECT * FROM embeddings" + ("" if include_staged else " WHERE served = 1") + " ORDER BY created_at, id"
        with self._lock:
            rows = self._conn.execute(sql).fetchall()
        return [self._embedding_json(r) for r in rows]

    def put_tensors(self, embedding_id: str, body: Any) -> dict[str, Any]:
        """Upsert one chunk of vectors into a staged version; the whole chunk is checked before any is stored."""
        row = self._embedding_row(embedding_id)
        dim, state = row[5], row[9]
        if state not in _STAGED:
            raise ApiError(409, "EMBEDDING_NOT_STAGED", f"embedding version {embedding_id} is {state}, not staged")
        if not isinstance(body, dict) or not isinstance(body.get("tensors"), list):
            raise ApiError(422, "INVALID_REQUEST", 'body must be {"chunk": N, "tensors": [{"record_id", "data"}]}')
        chunk = body.get("chunk")
        if chunk is not None and not is_int(chunk, 0, 10**9):
            raise ApiError(422, "INVALID_REQUEST", "chunk must be a non-negative integer")
        tensors = body["tensors"]
        indices: list[int] = []
        unknown: list[str] = []
        vectors: list[Any] = []
        for pos, item in enumerate(tensors):
            if not isinstance(item, dict) or not isinstance(item.get("record_id"), str):
                raise ApiError(422, "INVALID_REQUEST", f"tensor #{pos} must be an object with a string record_id")
            rid = item["record_id"]
            has_list, has_b64 = "data" in item, "data_b64" in item
            if has_list == has_b64:
                raise ApiError(422, "INVALID_REQUEST", f"tensor #{pos} must carry exactly one of data (a list) or data_b64")
            if has_list:
                data = item["data"]
                if not isinstance(data, list) or not all(type(v) in (int, float) for v in data):
                    raise ApiError(422, "INVALID_VECTOR", f"tensor #{pos}: data must be a flat list of numbers")
            else:
                if not isinstance(item["data_b64"], str):
                    raise ApiError(422, "INVALID_VECTOR", f"tensor #{pos}: data_b64 must be a base64 string")
                data = _decode_b64(item["data_b64"], pos)
            idx = self._idx_by_id.get(rid)
            if idx is None:
                unknown.append(repr(rid))
                continue
            if len(data) != dim:
                raise ApiError(
                    422, "DIMENSION_MISMATCH", f"tensor #{pos}: vector has {len(data)} values, the embedding has {dim}"
                )
            indices.append(idx)
            vectors.append(data)
        if unknown:
            shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
            raise ApiError(422, "UNKNOWN_RECORD", f"{len(unknown)} record id(s) not in the project: {shown}")
        if vectors:
            try:
                matrix = np.asarray(vectors, dtype=np.float64)
            except (TypeError, ValueError, OverflowError):  # an integer beyond float range
                raise ApiError(422, "INVALID_VECTOR", "vectors must hold finite numbers within float32's range") from None
            if matrix.shape != (len(vectors), dim):
                raise ApiError(422, "INVALID_VECTOR", "vectors must be flat lists of numbers")
            with np.errstate(over="ignore", invalid="ignore"):
                matrix32 = matrix.astype("<f4")
            bad = ~np.isfinite(matrix32).all(axis=1)
            if bad.any():
                first = self._record_ids[indices[int(np.argmax(bad))]]
                raise ApiError(
                    422, "INVALID_VECTOR", f"{int(bad.sum())} vector(s) hold NaN, infinite or out-of-range values (first: record {first!r})"
                )
        else:
            matrix32 = np.zeros((0, dim), dtype="<f4")
        rows = [(embedding_id, idx, matrix32[i].tobytes()) for i, idx in enumerate(indices)]
        with self._tx() as conn:
            current = conn.execute("SELECT state FROM embeddings WHERE id = ?", (embedding_id,)).fetchone()
            if current is None or current[0] not in _STAGED:  # finalized or dropped meanwhile
                raise ApiError(409, "EMBEDDING_NOT_STAGED", f"embedding version {embedding_id} is no longer staged")
            conn.executemany("INSERT OR REPLACE INTO tensors (embedding_id, record_idx, data) VALUES (?, ?, ?)", rows)
            conn.execute(
                "UPDATE embeddings SET state = 'ENCODING', updated_at = ? WHERE id = ?", (time.time(), embedding_id)
            )
            total = conn.execute("SELECT COUNT(*) FROM tensors WHERE embedding_id = ?", (embedding_id,)).fetchone()[0]
        return {"chunk": chunk, "received": len(tensors), "stored": len(set(indices)), "total": total}

    def finalize_embedding(self, embedding_id: str, body: Any = None) -> dict[str, Any]:
        """Check completeness and, in one transaction, serve this version and drop the previous one.

        Idempotent: finalizing the version that is already served answers the same as the first time.
        """
        if body is not None and not isinstance(body, dict):
            raise ApiError(422, "INVALID_REQUEST", 'body must be {"count": N} or empty')
        count = body.get("count") if isinstance(body, dict) else None
        if count is not None and not is_int(count, 0, 10**9):
            raise ApiError(422, "INVALID_REQUEST", "count must be an integer in [0, 10^9]")
        replaced: list[str] = []
        with self._tx() as conn:
            row = conn.execute("SELECT * FROM embeddings WHERE id = ?", (embedding_id,)).fetchone()
            if row is None:
                raise ApiError(404, "EMBEDDING_NOT_FOUND", f"no embedding version {embedding_id!r} in this project")
            name, state, served = row[1], row[9], row[10]
            stored = conn.execute("SELECT COUNT(*) FROM tensors WHERE embedding_id = ?", (embedding_id,)).fetchone()[0]
            if state == "FINISHED" and served:
                return self._embedding_json(row, stored=stored)
            if state not in _STAGED:
                raise ApiError(409, "EMBEDDING_NOT_STAGED", f"embedding version {embedding_id} is {state}")
            n = self.record_count
            if stored != n:
                raise ApiError(
                    409, "EMBEDDING_INCOMPLETE", f"{stored} of {n} records have a vector; upload the rest, then finalize"
                )
            if count is not None and count != stored:
                raise ApiError(409, "EMBEDDING_INCOMPLETE", f"client sent {count} vectors but the host holds {stored}")
            replaced = [
                r[0] for r in conn.execute("SELECT id FROM embeddings WHERE name = ? AND served = 1", (name,))
            ]
            for old in replaced:
                conn.execute("DELETE FROM tensors WHERE embedding_id = ?", (old,))
                conn.execute("DELETE FROM thresholds WHERE embedding_id = ?", (old,))
                conn.execute("DELETE FROM embeddings WHERE id = ?", (old,))
            conn.execute(
                "UPDATE embeddings SET state = 'FINISHED', served = 1, updated_at = ?, finished_at = ? WHERE id = ?",
                (time.time(), _now_iso(), embedding_id),
            )
            row = conn.execute("SELECT * FROM embeddings WHERE id = ?", (embedding_id,)).fetchone()
        for old in replaced:
            self._vectors.drop(old)
        log.info("embedding %s now served by version %s (replaced %s)", name, embedding_id, replaced or "none")
        out = self._embedding_json(row, stored=stored)
        out["replaced"] = replaced
        return out

    def delete_embedding(self, embedding_id: str, *, force: bool = False) -> dict[str, Any]:
        """Drop a staged version. A served one is only dropped with ``force`` (409 EMBEDDING_SERVED otherwise)."""
        with self._tx() as conn:
            row = conn.execute("SELECT served, name FROM embeddings WHERE id = ?", (embedding_id,)).fetchone()
            if row is None:
                raise ApiError(404, "EMBEDDING_NOT_FOUND", f"no embedding version {embedding_id!r} in this project")
            if row[0] and not force:
                raise ApiError(
                    409, "EMBEDDING_SERVED", f"version {embedding_id} is the served {row[1]!r}; add ?force=true to drop it"
                )
            conn.execute("DELETE FROM tensors WHERE embedding_id = ?", (embedding_id,))
            conn.execute("DELETE FROM thresholds WHERE embedding_id = ?", (embedding_id,))
            conn.execute("DELETE FROM embeddings WHERE id = ?", (embedding_id,))
        self._vectors.drop(embedding_id)
        return {"id": embedding_id, "deleted": True, "was_served": bool(row[0])}

    # ------------------------------------------------------------------------------------------
    # similarity search and labeling sessions

    def _served(self, name_or_id: Any) -> tuple[str, str]:
        if not isinstance(name_or_id, str) or not name_or_id or not is_text(name_or_id):
            raise ApiError(422, "INVALID_REQUEST", "embedding must be a served embedding's name or id (a string)")
        with self._lock:
            row = self._conn.execute(
                "SELECT id, name FROM embeddings WHERE served = 1 AND (id = ? OR name = ?) ORDER BY id = ? DESC",
                (name_or_id, name_or_id, name_or_id),
            ).fetchone()
        if row is None:
            raise ApiError(404, "EMBEDDING_NOT_FOUND", f"no served embedding named {name_or_id!r} (staged ones are not searchable)")
        return row[0], row[1]

    def _load_index(self, embedding_id: str) -> VectorIndex:
        with self._lock:
            found = self._conn.execute("SELECT dimension FROM embeddings WHERE id = ?", (embedding_id,)).fetchone()
            if found is None:  # replaced between name lookup and load
                raise ApiError(409, "EMBEDDING_REPLACED", "the embedding was replaced during the search; retry")
            dim = found[0]
            rows = self._conn.execute(
                "SELECT record_idx, data FROM tensors WHERE embedding_id = ? ORDER BY record_idx", (embedding_id,)
            ).fetchall()
        positions = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        matrix = np.frombuffer(b"".join(r[1] for r in rows), dtype="<f4").reshape(len(rows), dim)
        return VectorIndex(positions, matrix)

    def _threshold(self, embedding_id: str, index: VectorIndex) -> float | None:
        """The embedding's similarity threshold: computed on its first search, then stored (``similarity_threshold.py``)."""
        with self._lock:
            row = self._conn.execute("SELECT value FROM thresholds WHERE embedding_id = ?", (embedding_id,)).fetchone()
        if row is not None:
            return row[0]
        value = similarity_threshold(index.matrix, seed=embedding_id)
        if value is not None:
            with self._tx() as conn:
                if conn.execute("SELECT 1 FROM embeddings WHERE id = ?", (embedding_id,)).fetchone() is not None:
                    conn.execute("INSERT OR IGNORE INTO thresholds (embedding_id, value) VALUES (?, ?)", (embedding_id, value))
        return value

    def _search(self, embedding_id: str, idx: int, limit: int) -> tuple[list[int], list[float], float | None]:
        """Positions and distances of the records within the threshold of record ``idx``, query first; the query
        alone when the search finds nothing (``get_records_by_similarity_search``)."""
        index = self._vectors.get(embedding_id, self._load_index)
        threshold = self._threshold(embedding_id, index)
        positions, distances = index.search(idx, threshold=threshold, limit=limit)
        if not positions:
            positions, distances = [idx], [0.0]
        return positions, distances, threshold

    def similar(self, embedding: Any, record_id: Any, limit: Any = SEARCH_LIMIT) -> dict[str, Any]:
        """The push extension's search: the data browser's, by record id (see :mod:`.vectors`).

        ``record_ids`` starts with the query record (score 0); ``scores`` are Euclidean distances, nearest
        first, all within ``threshold``; at most ``limit`` (1..100, default 100) records.
        """
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= SEARCH_LIMIT:
            raise ApiError(422, "INVALID_REQUEST", f"limit must be an integer in [1, {SEARCH_LIMIT}]")
        eid, name = self._served(embedding)
        idx = self.record_index(record_id)
        positions, distances, threshold = self._search(eid, idx, limit)
        return {
            "record_ids": [self._record_ids[p] for p in positions],
            "scores": [round(d, 6) for d in distances],
            "embedding": name,
            "embedding_id": eid,
            "record_id": self._record_ids[idx],
            "threshold": None if threshold is None else round(threshold, 6),
        }

    def create_labeling_session(self, embedding: Any, record_id: Any, limit: Any, user_name: str) -> dict[str, Any]:
        """Run a similarity search and keep its ordered result as a session, as the data browser does."""
        found = self.similar(embedding, record_id, limit)
        sid = self._store_session(found["embedding_id"], found["embedding"], found["record_id"], found["record_ids"],
                                  user_name)
        return self.get_labeling_session(sid)

    def _store_session(self, embedding_id: str, embedding_name: str, query: str, record_ids: list[str], user_name: str) -> str:
        sid = str(uuid.uuid4())
        with self._tx() as conn:
            conn.execute(
                "INSERT INTO labeling_sessions (id, embedding_id, embedding_name, query_record_id, record_ids,"
                " user_name, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (sid, embedding_id, embedding_name, query, json.dumps(record_ids), user_name, _now_iso()),
            )
        return sid

    def search_records_by_similarity(self, body: dict[str, Any], user_name: str) -> dict[str, Any]:
        """refinery-gateway ``fast_api/routes/data_browser.py`` ``get_search_records_by_similarity``.

        ``body`` is the validated ``{"embeddingId", "recordId", "attFilter", "recordSubKey"}`` (record UUIDs).
        The answer has the gateway's shape: ``{"data": {"searchRecordsBySimilarity": {"recordList":
        [{"recordData": JSON text of the record row, "typename": "ExtendedRecord"}], "queryLimit": 100,
        "queryOffset": 0, "fullCount", "sessionId"}}}`` (``pack_json_result`` camel-cases ``__typename``).
        An attribute filter is not supported here: a non-empty ``attFilter`` finds nothing, as for an
        embedding without filter attributes (``is_filter_valid_for_embedding``), so the query record alone.
        """
        embedding_id, record_uuid = body["embeddingId"], body["recordId"]
        with self._lock:
            row = self._conn.execute("SELECT id, name FROM embeddings WHERE served = 1 AND id = ?", (embedding_id,)).fetchone()
        if row is None:
            raise ApiError(404, "EMBEDDING_NOT_FOUND", f"no served embedding with id {embedding_id!r}")
        idx = self._idx_by_uuid.get(record_uuid)
        if idx is None:
            raise ApiError(404, "RECORD_NOT_FOUND", f"no record with id {record_uuid!r}")
        if body.get("attFilter"):
            positions = [idx]
        else:
            positions, _, _ = self._search(row[0], idx, SEARCH_LIMIT)
        sid = self._store_session(row[0], row[1], self._record_ids[idx], [self._record_ids[p] for p in positions], user_name)
        with self._lock:
            datas = {
                i: d for i, d in self._conn.execute(
                    f"SELECT idx, data FROM records WHERE idx IN ({','.join('?' * len(positions))})", positions
                ).fetchall()
            }
        attribute_names = [a["name"] for a in self._meta["attributes"]]
        record_list = []
        for order, p in enumerate(positions, start=1):
            full = json.loads(datas[p])
            record = {
                "id": self._uuids[p],
                "project_id": self.project_id,
                "data": {a: full.get(a) for a in attribute_names},
                "category": "SCALE",
                "record_id": self._uuids[p],
                "db_order": order,
                "rla_data": None,
            }
            record_list.append({"recordData": json.dumps(record), "typename": "ExtendedRecord"})
        return {"data": {"searchRecordsBySimilarity": {
            "recordList": record_list,
            "queryLimit": SEARCH_LIMIT,
            "queryOffset": 0,
            "fullCount": len(positions),
            "sessionId": sid,
        }}}

    def get_labeling_session(self, session_id: str) -> dict[str, Any]:
        """A stored labeling session (its record list is fixed when it is created)."""
        with self._lock:
            row = self._conn.execute(
                "SELECT id, embedding_id, embedding_name, query_record_id, record_ids, created_at"
                " FROM labeling_sessions WHERE id = ?",
                (session_id,),
            ).fetchone()
        if row is None:
            raise ApiError(404, "SESSION_NOT_FOUND", f"no labeling session {session_id!r}")
        return {
            "id": row[0],
            "embedding_id": row[1],
            "embedding": row[2],
            "query_record_id": row[3],
            "record_ids": json.loads(row[4]),
            "created_at": row[5],
        }
