"""The host's one project: its metadata, record ids and UUIDs, the import on the first start (:mod:`.importer`),
the details and export routes."""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .api_errors import ApiError
from .db import HostDB, now_iso
from .importer import ImportPlan, plan_import

__all__ = ["Project"]

log = logging.getLogger(__name__)


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Project:
    """The project a host serves: metadata (``meta`` table) and the records' ids, kept in memory once loaded."""

    def __init__(self, db: HostDB) -> None:
        self.db = db
        self.meta: dict[str, Any] = {}
        self.record_ids: list[str] = []
        """Record ids (the id attribute's values) in import order: a record's position is its index."""
        self.idx_by_id: dict[str, int] = {}
        self.uuids: list[str] = []
        self.idx_by_uuid: dict[str, int] = {}
        self._export_rows: list[str] | None = None

    def load(self, export_path: str | Path | None, *, id_attribute: str, project_id: str | None,
             project_name: str | None) -> None:
        """Load the project, importing ``export_path`` when the database holds none yet.

        Raises :class:`ConfigError` when the data dir holds a different project than asked for, or when
        there is nothing to import; :class:`ExportError` when the export cannot be used."""
        self._load_meta()
        if "project_id" not in self.meta:
            if export_path is None:
                raise ConfigError(f"{self.db.path.parent} holds no project yet: give --export PATH to import one")
            self._import(Path(export_path), id_attribute=id_attribute, project_id=project_id, name=project_name)
            self._load_meta()
        else:
            self._check_same_project(export_path, id_attribute=id_attribute, project_id=project_id)
        self._load_record_ids()

    def _load_meta(self) -> None:
        self.meta = {k: json.loads(v) for k, v in self.db.all("SELECT key, value FROM meta")}

    def _load_record_ids(self) -> None:
        rows = self.db.all("SELECT idx, record_id FROM records ORDER BY idx")
        self.record_ids = [rid for _, rid in rows]
        if any(idx != i for i, (idx, _) in enumerate(rows)):
            raise ConfigError(f"{self.db.path}: record table is damaged (gaps in idx)")
        self.idx_by_id = {rid: i for i, rid in enumerate(self.record_ids)}
        with self.db.tx() as conn:  # an export carries no record UUIDs: made here
            if conn.execute("SELECT COUNT(*) FROM record_uuids").fetchone()[0] != len(self.record_ids):
                conn.execute("DELETE FROM record_uuids")
                conn.executemany("INSERT INTO record_uuids (idx, uuid) VALUES (?, ?)",
                                 [(i, self._made_uuid(rid)) for i, rid in enumerate(self.record_ids)])
            rows = conn.execute("SELECT uuid FROM record_uuids ORDER BY idx").fetchall()
        self.uuids = [r[0] for r in rows]
        self.idx_by_uuid = {u: i for i, u in enumerate(self.uuids)}

    def _made_uuid(self, record_id: str) -> str:
        """A record UUID for a record imported from an export (which carries none): stable per project and record."""
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"kern-host:{self.meta['project_id']}:{record_id}"))

    def _check_same_project(self, export_path: str | Path | None, *, id_attribute: str, project_id: str | None) -> None:
        where = self.db.path
        if project_id is not None and project_id != self.meta["project_id"]:
            raise ConfigError(
                f"{where} holds project {self.meta['project_id']}, not {project_id}: use another --data-dir"
            )
        if id_attribute != self.meta["id_attribute"]:
            raise ConfigError(
                f"{where} was imported with id attribute {self.meta['id_attribute']!r}, not {id_attribute!r}"
            )
        if export_path is not None:
            path = Path(export_path)
            if path.exists() and _file_sha256(path) != self.meta.get("export_sha256"):
                raise ConfigError(
                    f"{where} was imported from a different export ({self.meta.get('export_file')}); "
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
            "imported_at": now_iso(),
        }
        with self.db.tx() as conn:
            conn.executemany("INSERT INTO records (idx, record_id, data) VALUES (?, ?, ?)", plan.rows)
            conn.executemany(
                "INSERT INTO record_uuids (idx, uuid) VALUES (?, ?)",
                [(i, u) for i, u in enumerate(plan.uuids) if u is not None],
            )
            conn.executemany(
                "INSERT INTO meta (key, value) VALUES (?, ?)", [(k, json.dumps(v)) for k, v in meta.items()]
            )
            _insert_embeddings(conn, plan)
        log.info("imported %d records, %d labeling task(s) and %d embedding(s) from %s", len(plan.rows),
                 len(plan.tasks), len(plan.embeddings), path)

    @property
    def project_id(self) -> str:
        return str(self.meta["project_id"])

    @property
    def id_attribute(self) -> str:
        return str(self.meta["id_attribute"])

    @property
    def record_count(self) -> int:
        return len(self.record_ids)

    @property
    def attribute_names(self) -> list[str]:
        """The project's attribute names, in the export's order."""
        return [a["name"] for a in self.meta["attributes"]]

    def attribute_id(self, name: str) -> str:
        """A stable id for attribute ``name`` (refinery gives each attribute a UUID; an export carries none)."""
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"kern-host:{self.project_id}:attribute:{name}"))

    def attribute_named_by_id(self, attribute_id: str) -> str | None:
        """The attribute whose :meth:`attribute_id` is ``attribute_id``, or None."""
        return next((a for a in self.attribute_names if self.attribute_id(a) == attribute_id), None)

    def attribute_texts(self, name: str) -> tuple[list[int], list[str]]:
        """Record positions in refinery's record order (``running_id``) and attribute ``name``'s values as
        text (``""`` for a missing value), as refinery-embedder reads them (``record.get_attribute_data``)."""
        from ..refinery.embedder import running_order

        rows = self.db.all("SELECT idx, data FROM records ORDER BY idx")
        datas = [json.loads(d) for _, d in rows]
        keys = [str(d.get("running_id", rid)) for d, rid in zip(datas, self.record_ids)]
        order = [int(i) for i in running_order(keys)]
        texts = ["" if datas[i].get(name) is None else str(datas[i][name]) for i in order]
        return order, texts

    def project_details(self) -> dict[str, Any]:
        """What ``GET /api/project/{id}`` answers: refinery-gateway ``api/project.py`` ``ProjectDetails``'s fields,
        plus ``id``, ``labeling_tasks`` and ``record_count`` of ours."""
        tasks = [
            {
                "name": t["name"],
                "attribute": t["attribute"],
                "task_target": "ON_WHOLE_RECORD" if t["attribute"] is None else "ON_ATTRIBUTE",
                "task_type": "MULTICLASS_CLASSIFICATION",
                "labels": t["labels"],
            }
            for t in self.meta["tasks"]
        ] + [
            {"name": t["name"], "attribute": t["attribute"], "task_target": "ON_ATTRIBUTE",
             "task_type": "INFORMATION_EXTRACTION", "labels": []}
            for t in self.meta.get("extraction_tasks", [])
        ]
        return {
            "id": self.project_id,
            "name": self.meta["name"],
            "max_running_id": self._max_running_id(),
            "description": self.meta["description"],
            "tokenizer": self.meta["tokenizer"],
            "attributes": [dict(a, state="UPLOADED") for a in self.meta["attributes"]],
            "knowledge_base_ids": [],
            "labeling_tasks": tasks,
            "record_count": self.record_count,
        }

    def _max_running_id(self) -> int:
        """refinery-submodule-model ``business_objects/project.py`` ``get_max_running_id``: the largest integer
        value of the running-id attribute, -1 for none (ours: the id attribute when its values are integers)."""
        best = -1
        for rid in self.record_ids:
            try:
                best = max(best, int(rid))
            except ValueError:  # not an integer ("²" passes isdigit but not int)
                continue
        return best

    def export_json(self, num_samples: int | None = None) -> str:
        """The records as a JSON list (label columns current); ``num_samples`` as refinery-gateway
        ``controller/transfer/manager.py`` ``export_records`` applies it: ``sql_df.head(N)``, which ``[:N]`` equals."""
        with self.db.lock:
            if self._export_rows is None:
                self._export_rows = [r[0] for r in self.db.conn.execute("SELECT data FROM records ORDER BY idx")]
            rows = self._export_rows
        if num_samples is not None:
            rows = rows[:num_samples]
        return "[" + ",".join(rows) + "]"

    def labels_changed(self) -> None:
        """Called under the database lock by a label write: the export cache is stale from here on."""
        self._export_rows = None

    def record_index(self, record_id: Any) -> int:
        """Import position of a record, by the id attribute's value as a string (404 RECORD_NOT_FOUND)."""
        if not isinstance(record_id, str):
            raise ApiError(422, "INVALID_REQUEST", f"record_id must be a string (the {self.id_attribute} value)")
        idx = self.idx_by_id.get(record_id)
        if idx is None:
            raise ApiError(404, "RECORD_NOT_FOUND", f"no record with {self.id_attribute} = {record_id!r}")
        return idx

    def record_uuid(self, record_id: str) -> str:
        """The record UUID (what the data browser's routes name records by) of a record id."""
        return self.uuids[self.record_index(record_id)]


def _insert_embeddings(conn: Any, plan: ImportPlan) -> None:
    """The imported project's embeddings, each served at once (a snapshot's tensors)."""
    now, stamp = time.time(), now_iso()
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
