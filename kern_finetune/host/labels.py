"""Labels on the host's records: associations posted the SDK's way, and direct writes of the host's owner."""

from __future__ import annotations

import json
from typing import Any

from ..errors import TaskNotFoundError
from ..refinery.export import resolve_task
from .api_errors import ApiError, GatewayError
from .db import HostDB, now_iso
from .project import Project
from .values import as_confidence, dump_row, is_text, is_unit_number

__all__ = ["Labels"]


class Labels:
    """Label writes: the records' label columns (``records.data``), ``label_events`` and ``model_callbacks``."""

    def __init__(self, db: HostDB, project: Project) -> None:
        self.db = db
        self.project = project

    def _resolve_task(self, task: Any) -> dict[str, Any]:
        if not isinstance(task, str) or not task:
            raise ApiError(422, "INVALID_REQUEST", "name the labeling task (a non-empty string)")
        template = {}
        for info in self.project.meta["tasks"]:
            template.update(dict.fromkeys((info["manual"], info["weak"], info["confidence"])))
        try:
            found = resolve_task([template], task)
        except TaskNotFoundError as exc:
            raise ApiError(404, "LABELING_TASK_NOT_FOUND", str(exc)) from None
        for info in self.project.meta["tasks"]:
            if info["name"] == found.name and info["attribute"] == found.attribute:
                return info
        raise ApiError(404, "LABELING_TASK_NOT_FOUND", f"task {task!r} is not in this project")

    def set_labels(
        self,
        task: Any,
        items: list[tuple[Any, str | None, float | None]],
        *,
        source: str,
        user_name: str,
        origin: str = "",
    ) -> dict[str, Any]:
        """Set labels of one task for several records, all or nothing; ``items``: ``(record_id, label, confidence)``.
        ``MANUAL`` sets the ``__MANUAL`` column (``None`` removes it), ``WEAK_SUPERVISION`` the weak label and its
        confidence.
        """
        info = self._resolve_task(task)
        if source not in ("MANUAL", "WEAK_SUPERVISION"):
            raise ApiError(422, "INVALID_REQUEST", f"unknown label source {source!r}")
        resolved: dict[int, tuple[str | None, float | None]] = {}
        for record_id, label, confidence in items:
            try:
                idx = self.project.record_index(record_id)
            except ApiError as exc:
                raise ApiError(422, "RECORD_NOT_FOUND" if exc.status == 404 else exc.error_code, exc.detail) from None
            if label is not None and (not isinstance(label, str) or not label.strip() or not is_text(label)
                                      or len(label) > 1000):
                raise ApiError(422, "INVALID_REQUEST", f"record {record_id!r}: a label is a non-empty string or null")
            if confidence is not None and not is_unit_number(confidence):
                raise ApiError(422, "INVALID_REQUEST", f"record {record_id!r}: confidence must be a number in [0, 1]")
            resolved[idx] = (label, None if confidence is None else float(confidence))
        now = now_iso()
        new_labels: set[str] = set()
        with self.db.tx() as conn:
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
                tasks = [dict(t, labels=updated) if t is info else t for t in self.project.meta["tasks"]]
                conn.execute("UPDATE meta SET value = ? WHERE key = 'tasks'", (json.dumps(tasks),))
            self.project.labels_changed()  # under the lock
        info["labels"] = updated
        return {"stored": len(resolved), "task": info["name"], "source": source}

    def import_associations(self, body: dict[str, Any], *, user_name: str) -> int:
        """The SDK's ``POST /associations`` as refinery-gateway v1.15.1 stores it
        (``controller/transfer/association_transfer_manager.py`` ``import_associations``, ``docs/host.md``):
        ``MODEL_CALLBACK`` votes of the source ``name``, replacing its earlier votes on the same records; answers
        how many were stored. What fails in the gateway raises :class:`GatewayError` (the proxy's ``200 null``).
        """
        name, task_name, source_type = body["name"], body["label_task_name"], body["source_type"]
        associations, indices = body["associations"], body["indices"]
        task = next((t for t in self.project.meta["tasks"] if t["name"] == task_name), None)
        if task is None:
            raise GatewayError(f"no labeling task named {task_name!r}")
        if not isinstance(name, str) or not is_text(name) or not name:
            raise GatewayError("name must be the information source's name")
        known = self.db.one("SELECT 1 FROM model_callbacks WHERE source_name = ? LIMIT 1", (name,)) is not None
        if not known and source_type != "heuristic":
            raise GatewayError("Unknown source type")
        if not isinstance(indices, list) or not indices or not isinstance(indices[0], dict):
            raise GatewayError("indices must be a non-empty list of primary-key objects")
        if not isinstance(associations, list):
            raise GatewayError("associations must be a list")
        keys = list(indices[0])
        if keys != [self.project.id_attribute]:
            raise GatewayError(f"indices must name records by {self.project.id_attribute!r}")
        found: list[int] = []  # get_records_by_composite_keys: records that exist, in the order asked
        for index in indices:
            value = index.get(self.project.id_attribute) if isinstance(index, dict) else None
            if isinstance(value, bool) or not isinstance(value, (str, int)):
                continue
            idx = self.project.idx_by_id.get(str(value))
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
        now = now_iso()
        with self.db.tx() as conn:
            conn.executemany("DELETE FROM model_callbacks WHERE source_name = ? AND record_idx = ?",
                             [(name, idx) for idx in found])
            conn.executemany(
                "INSERT INTO model_callbacks (record_idx, task, source_name, label, confidence, user_name, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(idx, task["name"], name, label, conf, user_name, now) for idx, label, conf in rows],
            )
        return len(rows)
