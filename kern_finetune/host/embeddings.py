"""Embeddings on the host (the push extension, ``docs/push-contract.md``): staged versions, chunked vector
uploads, and the swap that serves a complete one within a single transaction."""

from __future__ import annotations

import base64
import binascii
import logging
import sqlite3
import time
import uuid
from typing import Any

import numpy as np

from ..config import is_embedding_name
from .api_errors import ApiError
from .db import HostDB, drop_embedding, now_iso
from .project import Project
from .values import is_int, is_text
from .vectors import VectorCache

__all__ = ["Embeddings", "STALE_STAGED_S", "STAGED_STATES"]

log = logging.getLogger(__name__)

STALE_STAGED_S = 6 * 3600
"""A staged version untouched this long is dropped when a new version of the same name is created."""
STAGED_STATES = ("INITIALIZING", "ENCODING")
_MAX_DIMENSION = 16_384
_JSON_KEYS = ("id", "name", "attribute", "type", "custom", "dimension", "platform", "model", "count", "state", "served",
              "created_at", "updated_at", "finished_at")
"""The answer's key of each ``embeddings`` column, in table order (``updated_at`` is left out)."""


def _decode_b64(text: str, pos: int) -> np.ndarray:
    """A vector sent as base64 of little-endian float32 (``data_b64``), the compact form of ``data``."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(422, "INVALID_VECTOR", f"tensor #{pos}: data_b64 is not valid base64") from None
    if len(raw) % 4:
        raise ApiError(422, "INVALID_VECTOR", f"tensor #{pos}: data_b64 is not a whole number of float32 values")
    return np.frombuffer(raw, dtype="<f4")


def _not_found(embedding_id: str) -> ApiError:
    return ApiError(404, "EMBEDDING_NOT_FOUND", f"no embedding version {embedding_id!r} in this project")


class Embeddings:
    """The ``embeddings``, ``tensors`` and ``thresholds`` tables; a replaced or dropped version leaves ``vectors``."""

    def __init__(self, db: HostDB, project: Project, vectors: VectorCache) -> None:
        self.db = db
        self.project = project
        self.vectors = vectors

    @staticmethod
    def _embedding_json(row: sqlite3.Row | tuple[Any, ...], stored: int | None = None) -> dict[str, Any]:
        out = dict(zip(_JSON_KEYS, row))
        del out["updated_at"]
        out["custom"], out["served"] = bool(out["custom"]), bool(out["served"])
        if stored is not None:
            out["stored"] = stored
        return out

    def _embedding_row(self, embedding_id: str) -> tuple[Any, ...]:
        row = self.db.one("SELECT * FROM embeddings WHERE id = ?", (embedding_id,))
        if row is None:
            raise _not_found(embedding_id)
        return row

    def create_embedding(self, spec: Any) -> dict[str, Any]:
        """Stage a new embedding version (state INITIALIZING); the served one of that name stays served."""
        if not isinstance(spec, dict):
            raise ApiError(422, "INVALID_REQUEST", "body must be a JSON object")
        name = spec.get("name")
        if not isinstance(name, str) or not is_text(name) or not is_embedding_name(name):
            raise ApiError(422, "INVALID_REQUEST", "name must be 1-200 characters without control characters, "
                                                   "'/' or '\\', nor spaces at either end")
        dim = spec.get("dimension")
        if not is_int(dim, 1, _MAX_DIMENSION):
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
        names = self.project.attribute_names
        if texts["attribute"] is not None and texts["attribute"] not in names:
            raise ApiError(422, "INVALID_REQUEST", f"attribute must be one of the project's attributes: {', '.join(names)}")
        eid = str(uuid.uuid4())
        now = time.time()
        with self.db.tx() as conn:
            stale = [r[0] for r in conn.execute("SELECT id FROM embeddings WHERE name = ? AND served = 0"
                                                " AND updated_at < ?", (name, now - STALE_STAGED_S))]
            for old in stale:
                drop_embedding(conn, old)
            conn.execute(
                "INSERT INTO embeddings (id, name, attribute, type, custom, dimension, platform, model,"
                " expected_count, state, served, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, ?)",
                (eid, name, texts["attribute"], etype, int(custom), dim,
                 texts["platform"], texts["model"], count, "INITIALIZING", now_iso(), now),
            )
        if stale:
            log.info("dropped %d stale staged version(s) of %s", len(stale), name)
        log.info("staged embedding %s (%s, %d dims)", name, eid, dim)
        return self._embedding_json(self._embedding_row(eid), stored=0)

    def get_embedding(self, embedding_id: str) -> dict[str, Any]:
        """One version (staged or served) with how many vectors it holds."""
        row = self._embedding_row(embedding_id)
        stored = self.db.one("SELECT COUNT(*) FROM tensors WHERE embedding_id = ?", (embedding_id,))[0]
        return self._embedding_json(row, stored=stored)

    def list_embeddings(self, include_staged: bool = False) -> list[dict[str, Any]]:
        """Served embeddings (and staged versions when asked), oldest first."""
        sql = "SELECT * FROM embeddings" + ("" if include_staged else " WHERE served = 1") + " ORDER BY created_at, id"
        return [self._embedding_json(r) for r in self.db.all(sql)]

    def put_tensors(self, embedding_id: str, body: Any) -> dict[str, Any]:
        """Upsert one chunk of vectors into a staged version; the whole chunk is checked before any is stored."""
        row = self._embedding_row(embedding_id)
        dim, state = row[5], row[9]
        if state not in STAGED_STATES:
            raise ApiError(409, "EMBEDDING_NOT_STAGED", f"embedding version {embedding_id} is {state}, not staged")
        if not isinstance(body, dict) or not isinstance(body.get("tensors"), list):
            raise ApiError(422, "INVALID_REQUEST", 'body must be {"chunk": N, "tensors": [{"record_id", "data"}]}')
        chunk = body.get("chunk")
        if chunk is not None and not is_int(chunk, 0, 10**9):
            raise ApiError(422, "INVALID_REQUEST", "chunk must be a non-negative integer")
        tensors = body["tensors"]
        indices, vectors = _read_chunk(tensors, dim, self.project.idx_by_id)
        matrix32 = _as_float32(vectors, dim, [self.project.record_ids[i] for i in indices])
        rows = [(embedding_id, idx, matrix32[i].tobytes()) for i, idx in enumerate(indices)]
        with self.db.tx() as conn:
            current = conn.execute("SELECT state FROM embeddings WHERE id = ?", (embedding_id,)).fetchone()
            if current is None or current[0] not in STAGED_STATES:  # finalized or dropped meanwhile
                raise ApiError(409, "EMBEDDING_NOT_STAGED", f"embedding version {embedding_id} is no longer staged")
            conn.executemany("INSERT OR REPLACE INTO tensors (embedding_id, record_idx, data) VALUES (?, ?, ?)", rows)
            conn.execute(
                "UPDATE embeddings SET state = 'ENCODING', updated_at = ? WHERE id = ?", (time.time(), embedding_id)
            )
            total = conn.execute("SELECT COUNT(*) FROM tensors WHERE embedding_id = ?", (embedding_id,)).fetchone()[0]
        return {"chunk": chunk, "received": len(tensors), "stored": len(set(indices)), "total": total}

    def finalize_embedding(self, embedding_id: str, body: Any = None) -> dict[str, Any]:
        """Check completeness and, in one transaction, serve this version and drop the previous one (idempotent:
        finalizing the served version again answers the same)."""
        if body is not None and not isinstance(body, dict):
            raise ApiError(422, "INVALID_REQUEST", 'body must be {"count": N} or empty')
        count = body.get("count") if isinstance(body, dict) else None
        if count is not None and not is_int(count, 0, 10**9):
            raise ApiError(422, "INVALID_REQUEST", "count must be an integer in [0, 10^9]")
        replaced: list[str] = []
        with self.db.tx() as conn:
            row = conn.execute("SELECT * FROM embeddings WHERE id = ?", (embedding_id,)).fetchone()
            if row is None:
                raise _not_found(embedding_id)
            name, state, served = row[1], row[9], row[10]
            stored = conn.execute("SELECT COUNT(*) FROM tensors WHERE embedding_id = ?", (embedding_id,)).fetchone()[0]
            if state == "FINISHED" and served:
                return self._embedding_json(row, stored=stored)
            if state not in STAGED_STATES:
                raise ApiError(409, "EMBEDDING_NOT_STAGED", f"embedding version {embedding_id} is {state}")
            n = self.project.record_count
            if stored != n:
                raise ApiError(
                    409, "EMBEDDING_INCOMPLETE", f"{stored} of {n} records have a vector; upload the rest, then finalize"
                )
            if count is not None and count != stored:
                raise ApiError(409, "EMBEDDING_INCOMPLETE", f"client sent {count} vectors but the host holds {stored}")
            replaced = [r[0] for r in conn.execute("SELECT id FROM embeddings WHERE name = ? AND served = 1", (name,))]
            for old in replaced:
                drop_embedding(conn, old)
            conn.execute(
                "UPDATE embeddings SET state = 'FINISHED', served = 1, updated_at = ?, finished_at = ? WHERE id = ?",
                (time.time(), now_iso(), embedding_id),
            )
            row = conn.execute("SELECT * FROM embeddings WHERE id = ?", (embedding_id,)).fetchone()
        for old in replaced:
            self.vectors.drop(old)
        log.info("embedding %s now served by version %s (replaced %s)", name, embedding_id, replaced or "none")
        out = self._embedding_json(row, stored=stored)
        out["replaced"] = replaced
        return out

    def delete_embedding(self, embedding_id: str, *, force: bool = False) -> dict[str, Any]:
        """Drop a staged version. A served one is only dropped with ``force`` (409 EMBEDDING_SERVED otherwise)."""
        with self.db.tx() as conn:
            row = conn.execute("SELECT served, name FROM embeddings WHERE id = ?", (embedding_id,)).fetchone()
            if row is None:
                raise _not_found(embedding_id)
            if row[0] and not force:
                raise ApiError(
                    409, "EMBEDDING_SERVED", f"version {embedding_id} is the served {row[1]!r}; add ?force=true to drop it"
                )
            drop_embedding(conn, embedding_id)
        self.vectors.drop(embedding_id)
        return {"id": embedding_id, "deleted": True, "was_served": bool(row[0])}


def _read_chunk(tensors: list[Any], dim: int, idx_by_id: dict[str, int]) -> tuple[list[int], list[Any]]:
    """The record positions and vectors of an upload chunk, every item checked (422 on the first bad one;
    all unknown record ids in one error)."""
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
        idx = idx_by_id.get(rid)
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
    return indices, vectors


def _as_float32(vectors: list[Any], dim: int, record_ids: list[str]) -> np.ndarray:
    """The vectors as a little-endian float32 matrix; 422 when one is not finite in float32 (naming the first
    such vector's record, ``record_ids`` in the vectors' order)."""
    if not vectors:
        return np.zeros((0, dim), dtype="<f4")
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
        first = record_ids[int(np.argmax(bad))]
        raise ApiError(
            422, "INVALID_VECTOR", f"{int(bad.sum())} vector(s) hold NaN, infinite or out-of-range values (first: record {first!r})"
        )
    return matrix32
