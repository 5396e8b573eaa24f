"""The gateway's data-browser similarity search on the host's served embeddings, and the labeling session each
search leaves (see :mod:`.vectors`)."""

from __future__ import annotations

import json
import uuid
from typing import Any

import numpy as np

from .api_errors import ApiError
from .db import HostDB, now_iso
from .project import Project
from ..refinery.search import SEARCH_LIMIT, similarity_threshold
from .vectors import VectorCache, VectorIndex

__all__ = ["Search"]


class Search:
    """Searches (vectors loaded into ``vectors`` once per served version) and the ``labeling_sessions`` they leave."""

    def __init__(self, db: HostDB, project: Project, vectors: VectorCache) -> None:
        self.db = db
        self.project = project
        self.vectors = vectors

    def _load_index(self, embedding_id: str) -> VectorIndex:
        with self.db.lock:
            found = self.db.conn.execute("SELECT dimension FROM embeddings WHERE id = ?", (embedding_id,)).fetchone()
            if found is None:  # deleted between the lookup and the load
                raise ApiError(409, "EMBEDDING_REPLACED", "the embedding was deleted during the search; retry")
            dim = found[0]
            rows = self.db.conn.execute(
                "SELECT record_idx, data FROM tensors WHERE embedding_id = ? ORDER BY record_idx", (embedding_id,)
            ).fetchall()
        positions = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        matrix = np.frombuffer(b"".join(r[1] for r in rows), dtype="<f4").reshape(len(rows), dim)
        return VectorIndex(positions, matrix)

    def _threshold(self, embedding_id: str, index: VectorIndex) -> float | None:
        """The embedding's similarity threshold, its sample seeded by the version id: computed on its first search,
        then stored; None for fewer than 2 vectors (no pair to measure: the search applies no threshold)."""
        row = self.db.one("SELECT value FROM thresholds WHERE embedding_id = ?", (embedding_id,))
        if row is not None:
            return row[0]
        if len(index.matrix) < 2:
            return None
        value = similarity_threshold(index.matrix, seed=embedding_id)
        with self.db.tx() as conn:
            if conn.execute("SELECT 1 FROM embeddings WHERE id = ?", (embedding_id,)).fetchone() is not None:
                conn.execute("INSERT OR IGNORE INTO thresholds (embedding_id, value) VALUES (?, ?)", (embedding_id, value))
        return value

    def _search(self, embedding_id: str, idx: int, limit: int) -> tuple[list[int], list[float], float | None]:
        """Positions and distances of the records within the threshold of record ``idx``, query first; the query
        alone when the search finds nothing (``get_records_by_similarity_search``)."""
        index = self.vectors.get(embedding_id, self._load_index)
        threshold = self._threshold(embedding_id, index)
        positions, distances = index.search(idx, threshold=threshold, limit=limit)
        if not positions:
            positions, distances = [idx], [0.0]
        return positions, distances, threshold

    def _store_session(self, embedding_id: str, embedding_name: str, query: str, record_ids: list[str], user_name: str) -> str:
        sid = str(uuid.uuid4())
        with self.db.tx() as conn:
            conn.execute(
                "INSERT INTO labeling_sessions (id, embedding_id, embedding_name, query_record_id, record_ids,"
                " user_name, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (sid, embedding_id, embedding_name, query, json.dumps(record_ids), user_name, now_iso()),
            )
        return sid

    def search_records_by_similarity(self, body: dict[str, Any], user_name: str) -> dict[str, Any]:
        """refinery-gateway ``fast_api/routes/data_browser.py`` ``get_search_records_by_similarity``, in the
        gateway's shape (``docs/host.md``); ``body``: the validated ``{"embeddingId", "recordId", "attFilter"}``.

        A non-empty ``attFilter`` finds the query record alone, as for an embedding without filter attributes
        (``is_filter_valid_for_embedding``).
        """
        embedding_id, record_uuid = body["embeddingId"], body["recordId"]
        row = self.db.one("SELECT id, name FROM embeddings WHERE served = 1 AND id = ?", (embedding_id,))
        if row is None:
            raise ApiError(404, "EMBEDDING_NOT_FOUND", f"no served embedding with id {embedding_id!r}")
        idx = self.project.idx_by_uuid.get(record_uuid)
        if idx is None:
            raise ApiError(404, "RECORD_NOT_FOUND", f"no record with id {record_uuid!r}")
        if body.get("attFilter"):
            positions = [idx]
        else:
            positions, _, _ = self._search(row[0], idx, SEARCH_LIMIT)
        ids = self.project.record_ids
        sid = self._store_session(row[0], row[1], ids[idx], [ids[p] for p in positions], user_name)
        datas = dict(self.db.all(f"SELECT idx, data FROM records WHERE idx IN ({','.join('?' * len(positions))})",
                                 positions))
        attribute_names = self.project.attribute_names
        record_list = []
        for order, p in enumerate(positions, start=1):
            full = json.loads(datas[p])
            record = {
                "id": self.project.uuids[p],
                "project_id": self.project.project_id,
                "data": {a: full.get(a) for a in attribute_names},
                "category": "SCALE",
                "record_id": self.project.uuids[p],
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
