"""Read and write refinery project snapshots (the host's own export/import ``.zip``).

A snapshot is a zip holding one JSON file whose top-level keys are the host's tables
(``records_data``, ``labeling_tasks_data``, ``record_label_associations_data``,
``embeddings_data``, ``embedding_tensors_data``, ...; see ``docs/refinery-api.md``).

:func:`read_snapshot` derives from it the same table a record export has, so a snapshot can stand in
for ``GET /export``:

- every attribute by name, its value as a string (``running_id`` 2 -> ``"2"``), null stays null;
- per *classification* task, base ``<attribute>__<task>`` (``__<task>`` for a whole-record task):
  ``<base>__MANUAL`` (the valid manual labels, distinct, joined with ``", "``),
  ``<base>__WEAK_SUPERVISION`` and ``<base>__WEAK_SUPERVISION__confidence`` (4 places, a string).
  Information-extraction tasks (per-token spans) and raw ``INFORMATION_SOURCE`` votes are left out.

:func:`write_snapshot` is the other door for pushed vectors, for hosts without the push endpoint:
it copies a snapshot and adds a custom embedding (``custom: true``, ``type: ON_ATTRIBUTE``) with one
L2-normalised tensor per record, which refinery imports as is into a new project.
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ExportError, PushError
from .export import Record

__all__ = ["Snapshot", "read_snapshot", "write_snapshot", "snapshot_records"]

_CLASSIFICATION = "MULTICLASS_CLASSIFICATION"


@dataclass
class Snapshot:
    """A decoded snapshot. ``records[i]`` belongs to the host record ``record_uuids[i]``."""

    path: Path
    member: str
    """Name of the JSON file inside the zip."""
    data: dict[str, Any] = field(repr=False)
    """The raw tables, as read."""
    records: list[Record] = field(repr=False)
    record_uuids: list[str] = field(repr=False)

    @property
    def project_name(self) -> str:
        return str((self.data.get("project_details_data") or {}).get("name") or "")

    @property
    def embeddings(self) -> dict[str, dict[str, Any]]:
        """``{name: {"id", "custom", "type", "count", "dimension"}}`` of the embeddings in the snapshot."""
        out: dict[str, dict[str, Any]] = {}
        tensors = self.data.get("embedding_tensors_data") or []
        for emb in self.data.get("embeddings_data") or []:
            rows = [t for t in tensors if t.get("embedding_id") == emb.get("id")]
            out[str(emb.get("name"))] = {
                "id": emb.get("id"),
                "custom": bool(emb.get("custom")),
                "type": emb.get("type"),
                "count": len(rows),
                "dimension": len(rows[0]["data"]) if rows else 0,
            }
        return out

    def embedding_vectors(self, name: str, *, id_attribute: str = "running_id") -> tuple[list[str], np.ndarray]:
        """The tensors of embedding ``name`` keyed by the records' ``id_attribute`` values, in record order."""
        emb = next((e for e in self.data.get("embeddings_data") or [] if e.get("name") == name), None)
        if emb is None:
            raise KeyError(f"no embedding named {name!r} in {self.path}")
        by_uuid = {t["record_id"]: t["data"] for t in self.data.get("embedding_tensors_data") or [] if t.get("embedding_id") == emb["id"]}
        ids, rows = [], []
        for rec, rid in zip(self.records, self.record_uuids):
            if rid in by_uuid:
                ids.append(str(rec.get(id_attribute)))
                rows.append(by_uuid[rid])
        return ids, np.asarray(rows, dtype=np.float32)


def read_snapshot(path: str | Path) -> Snapshot:
    """Open a snapshot zip and derive its export-shaped records. Errors are :class:`ExportError`."""
    path = Path(path)
    member, data = _load(path)
    records, uuids = snapshot_records(data, source=str(path))
    return Snapshot(path=path, member=member, data=data, records=records, record_uuids=uuids)


def snapshot_records(data: dict[str, Any], *, source: str = "snapshot") -> tuple[list[Record], list[str]]:
    """Export-shaped records (and their host uuids) from a snapshot's tables."""
    for key in ("records_data", "labeling_tasks_data", "labeling_task_labels_data", "record_label_associations_data"):
        if not isinstance(data.get(key), list):
            raise ExportError(f"{source}: not a refinery snapshot (no list {key!r})")
    attributes = sorted(
        (a for a in data.get("attributes_data") or [] if isinstance(a, dict) and a.get("name")),
        key=lambda a: (a.get("relative_position") is None, a.get("relative_position") or 0),
    )
    attr_names: list[str] = [str(a["name"]) for a in attributes]
    attr_by_id = {str(a.get("id")): str(a["name"]) for a in attributes}

    tasks: dict[str, str] = {}  # task id -> column base
    for t in data["labeling_tasks_data"]:
        if t.get("task_type") != _CLASSIFICATION:
            continue
        attr_id = str(t.get("attribute_id"))
        if t.get("task_target") == "ON_ATTRIBUTE" and attr_id not in attr_by_id:
            raise ExportError(f"{source}: task {t.get('name')!r} points at an unknown attribute")
        attr = attr_by_id[attr_id] if t.get("task_target") == "ON_ATTRIBUTE" else ""
        tasks[str(t["id"])] = f"{attr}__{t['name']}"
    label_task = {
        str(lab["id"]): (str(lab["labeling_task_id"]), str(lab["name"]))
        for lab in data["labeling_task_labels_data"]
        if str(lab.get("labeling_task_id")) in tasks
    }

    manual: dict[tuple[str, str], list[str]] = {}
    weak: dict[tuple[str, str], tuple[str, float]] = {}
    for rla in data["record_label_associations_data"]:
        hit = label_task.get(str(rla.get("labeling_task_label_id")))
        if hit is None:
            continue
        task_id, label = hit
        key = (str(rla.get("record_id")), task_id)
        source_type = rla.get("source_type")
        if source_type == "MANUAL" and rla.get("is_valid_manual_label") is not False:
            names = manual.setdefault(key, [])
            if label not in names:
                names.append(label)
        elif source_type == "WEAK_SUPERVISION":
            conf = float(rla.get("confidence") or 0.0)
            if key not in weak or conf > weak[key][1]:
                weak[key] = (label, conf)

    records: list[Record] = []
    uuids: list[str] = []
    for i, row in enumerate(data["records_data"]):
        if not isinstance(row, dict) or not isinstance(row.get("data"), dict) or not row.get("id"):
            raise ExportError(f"{source}: record #{i} lacks id or data")
        values = row["data"]
        rec: Record = {}
        for name in attr_names or list(values):
            rec[name] = _as_string(values.get(name))
        for name in values:  # attributes the table does not list still come through
            rec.setdefault(name, _as_string(values[name]))
        rid = str(row["id"])
        for task_id, base in tasks.items():
            names = manual.get((rid, task_id))
            rec[f"{base}__MANUAL"] = ", ".join(names) if names else None
            w = weak.get((rid, task_id))
            rec[f"{base}__WEAK_SUPERVISION"] = w[0] if w else None
            rec[f"{base}__WEAK_SUPERVISION__confidence"] = f"{w[1]:.4f}" if w else None
        records.append(rec)
        uuids.append(rid)
    if not records:
        raise ExportError(f"{source}: the snapshot holds no records")
    return records, uuids


def write_snapshot(
    src: str | Path,
    dst: str | Path,
    *,
    name: str,
    ids: list[Any],
    vectors: np.ndarray,
    id_attribute: str = "running_id",
) -> Snapshot:
    """Copy snapshot ``src`` to ``dst`` with a custom embedding ``name`` added, and read it back.

    ``ids[i]`` (values of ``id_attribute``) gets ``vectors[i]``, L2-normalised. Every record must get
    exactly one vector, as the push endpoint's finalize demands. An embedding of the same name in
    ``src`` is replaced. ``dst`` is written atomically (a temporary file renamed into place); on any
    error it is left untouched. Raises :class:`PushError` for bad ids/vectors.
    """
    src, dst = Path(src), Path(dst)
    snap = read_snapshot(src)
    arr = np.asarray(vectors, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] != len(ids) or arr.shape[1] == 0:
        raise PushError(f"vectors of shape {arr.shape} do not match {len(ids)} ids")
    if not np.isfinite(arr).all():
        raise PushError("vectors hold NaN or infinite values")
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    if (norms == 0).any():
        raise PushError("zero vectors cannot be L2-normalised")
    arr = arr / norms

    by_id: dict[str, str] = {}
    for rec, rid in zip(snap.records, snap.record_uuids):
        key = rec.get(id_attribute)
        if key is None:
            raise PushError(f"snapshot record {rid} has no {id_attribute!r}")
        by_id[str(key)] = rid
    ids_s = [str(i) for i in ids]
    if len(set(ids_s)) != len(ids_s):
        raise PushError("duplicate record ids: each record must get exactly one vector")
    unknown = [i for i in ids_s if i not in by_id]
    if unknown:
        raise PushError(f"{len(unknown)} id(s) not in the snapshot, e.g. {unknown[:3]}")
    if len(ids_s) != len(by_id):
        raise PushError(f"{len(by_id) - len(ids_s)} snapshot record(s) would get no vector")

    data = dict(snap.data)
    old_ids = {e.get("id") for e in data.get("embeddings_data") or [] if e.get("name") == name}
    emb_id = str(uuid.uuid4())
    data["embeddings_data"] = [e for e in data.get("embeddings_data") or [] if e.get("id") not in old_ids] + [
        {"id": emb_id, "name": name, "custom": True, "type": "ON_ATTRIBUTE"}
    ]
    data["embedding_tensors_data"] = [
        t for t in data.get("embedding_tensors_data") or [] if t.get("embedding_id") not in old_ids
    ] + [{"embedding_id": emb_id, "record_id": by_id[i], "data": row.tolist()} for i, row in zip(ids_s, arr)]

    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(snap.member, json.dumps(data))
        back = read_snapshot(tmp)
        info = back.embeddings.get(name)
        if not info or info["count"] != len(ids_s) or info["dimension"] != arr.shape[1]:
            raise PushError(f"read-back check failed for embedding {name!r} in {dst}")
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    back.path = dst
    return back


def _load(path: Path) -> tuple[str, dict[str, Any]]:
    if not path.exists():
        raise ExportError(f"snapshot not found: {path}")
    try:
        with zipfile.ZipFile(path) as zf:
            members = [m for m in zf.namelist() if m.endswith(".json") and not m.startswith("__MACOSX")]
            if len(members) != 1:
                raise ExportError(f"{path}: a snapshot holds exactly one JSON file, found {len(members)}")
            raw = zf.read(members[0])
    except zipfile.BadZipFile:
        raise ExportError(f"{path} is not a zip file") from None
    except OSError as exc:
        raise ExportError(f"cannot read snapshot {path}: {exc}") from None
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ExportError(f"{path}: the snapshot JSON is malformed ({type(exc).__name__})") from None
    if isinstance(data, str):  # tolerate a double-encoded body, as the export has
        data = json.loads(data)
    if not isinstance(data, dict):
        raise ExportError(f"{path}: the snapshot JSON must be an object of tables")
    return members[0], data


def _as_string(value: Any) -> str | None:
    """Export convention: every attribute value is a string (null stays null)."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)
