"""The host's SQLite file, ``<data_dir>/host.sqlite3`` (WAL mode): its tables (``docs/host.md``, "State") and one
guarded connection."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..web.serving import immediate_transaction, is_damaged, set_aside

__all__ = ["DB_FILE", "HostDB", "drop_embedding", "now_iso"]

DB_FILE = "host.sqlite3"
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


def now_iso() -> str:
    """The current UTC time as ISO 8601 to the second (what the host stores as ``created_at``)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def drop_embedding(conn: sqlite3.Connection, embedding_id: str) -> None:
    """Delete an embedding version with its tensors and threshold (inside a transaction)."""
    conn.execute("DELETE FROM tensors WHERE embedding_id = ?", (embedding_id,))
    conn.execute("DELETE FROM thresholds WHERE embedding_id = ?", (embedding_id,))
    conn.execute("DELETE FROM embeddings WHERE id = ?", (embedding_id,))


class HostDB:
    """One SQLite connection shared by the host's threads, guarded by a lock (:attr:`lock`, re-entrant)."""

    def __init__(self, conn: sqlite3.Connection, path: Path) -> None:
        self.conn = conn
        self.path = path
        self.lock = threading.RLock()

    @staticmethod
    def _connect(db_path: Path) -> sqlite3.Connection:
        fresh = not db_path.exists()
        conn = sqlite3.connect(db_path, check_same_thread=False, isolation_level=None, timeout=30)
        if fresh:  # SQLite gives the -wal/-shm files the same mode
            db_path.chmod(0o600)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.executescript(_SCHEMA)
        except BaseException:
            conn.close()
            raise
        return conn

    @classmethod
    def open(cls, data_dir: Path) -> HostDB:
        """Open (creating if needed) ``data_dir/host.sqlite3`` with its tables; a new folder and file are private."""
        if not data_dir.exists():  # a folder we create is private; an existing one keeps its mode
            data_dir.mkdir(parents=True, mode=0o700)
        elif not data_dir.is_dir():
            raise ConfigError(f"--data-dir {data_dir} is not a folder")
        db_path = data_dir / DB_FILE
        try:
            conn = cls._connect(db_path)
        except sqlite3.DatabaseError as exc:
            if not is_damaged(exc):
                raise ConfigError(f"cannot use {db_path}: {exc}; free disk space or make it writable") from None
            set_aside(db_path, exc)  # rebuilt: the project is imported again from --export
            conn = cls._connect(db_path)
        return cls(conn, db_path)

    def close(self) -> None:
        with self.lock:
            self.conn.close()

    @contextmanager
    def tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back on any error), under the lock."""
        with self.lock, immediate_transaction(self.conn):
            yield self.conn

    def one(self, sql: str, args: tuple[Any, ...] = ()) -> Any:
        """The first row of a read (or None), under the lock."""
        with self.lock:
            return self.conn.execute(sql, args).fetchone()

    def all(self, sql: str, args: tuple[Any, ...] | list[Any] = ()) -> list[Any]:
        """Every row of a read, under the lock."""
        with self.lock:
            return self.conn.execute(sql, args).fetchall()
