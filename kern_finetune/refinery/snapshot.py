"""Read and write refinery project snapshots (the host's own export/import ``.zip``, one JSON file of tables).

:func:`read_snapshot` derives the table a record export has (classification tasks only), so a snapshot can
stand in for ``GET /export``. :func:`write_snapshot` is the snapshot door: a copy with our embedding added as
refinery-gateway v1.17.0's own export writes one (``controller/transfer/project_transfer_manager.py``,
``get_project_export_dump``). What refinery's import does with it: ``docs/snapshot.md``.
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
import zipfile
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, ExportError, DoorError
from .columns import (PLATFORM, Record, TaskColumns, as_string, confidence_string, embedding_name, import_platform,
                      model_short_name, parse_embedding_name)
from .reader import parse_json, read_zip_json_member

__all__ = ["Snapshot", "read_snapshot", "write_snapshot", "check_snapshot_dst", "snapshot_records", "import_steps"]

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
    notices: list[str] = field(default_factory=list)
    """What :func:`write_snapshot` changed besides adding the embedding (dropped or completed embeddings)."""

    @property
    def project_name(self) -> str:
        details = self.data.get("project_details_data")
        return str((details if isinstance(details, dict) else {}).get("name") or "")

    @property
    def embeddings(self) -> dict[str, dict[str, Any]]:
        """``{name: {"id", "custom", "type", "platform", "count", "dimension"}}`` of the snapshot's embeddings."""
        counts: dict[Any, int] = {}
        dims: dict[Any, int] = {}
        for t in _rows(self.data, "embedding_tensors_data"):
            eid = t.get("embedding_id")
            counts[eid] = counts.get(eid, 0) + 1
            if eid not in dims and isinstance(t.get("data"), list):
                dims[eid] = len(t["data"])
        out: dict[str, dict[str, Any]] = {}
        for emb in _rows(self.data, "embeddings_data"):
            eid = emb.get("id")
            out[str(emb.get("name"))] = {"id": eid, "custom": bool(emb.get("custom")), "type": emb.get("type"),
                                         "platform": emb.get("platform"), "count": counts.get(eid, 0),
                                         "dimension": dims.get(eid, 0)}
        return out

    def embedding_vectors(self, name: str, *, id_attribute: str = "running_id") -> tuple[list[str], np.ndarray]:
        """The tensors of embedding ``name`` keyed by the records' ``id_attribute`` values, in record order."""
        emb = next((e for e in _rows(self.data, "embeddings_data") if e.get("name") == name), None)
        if emb is None:
            raise KeyError(f"no embedding named {name!r} in {self.path}")
        by_uuid = {t.get("record_id"): t.get("data") for t in _rows(self.data, "embedding_tensors_data")
                   if t.get("embedding_id") == emb.get("id")}
        ids, rows = [], []
        for rec, rid in zip(self.records, self.record_uuids):
            if rid in by_uuid:
                ids.append(str(rec.get(id_attribute)))
                rows.append(by_uuid[rid])
        return ids, np.asarray(rows, dtype=np.float32)


def read_snapshot(path: str | Path, *, max_bytes: int | None = None) -> Snapshot:
    """Open a snapshot zip and derive its export-shaped records. Errors are :class:`ExportError`."""
    path = Path(path)
    member, data = _load(path, max_bytes=max_bytes)
    records, uuids = snapshot_records(data, source=str(path))
    return Snapshot(path=path, member=member, data=data, records=records, record_uuids=uuids)


def snapshot_records(data: dict[str, Any], *, source: str = "snapshot") -> tuple[list[Record], list[str]]:
    """Export-shaped records (and their host uuids) from a snapshot's tables."""
    for key in ("records_data", "labeling_tasks_data", "labeling_task_labels_data", "record_label_associations_data"):
        if not isinstance(data.get(key), list):
            raise ExportError(f"{source}: not a refinery snapshot (no list {key!r})")
        for i, row in enumerate(data[key]):
            if not isinstance(row, dict):
                raise ExportError(f"{source}: {key} row #{i} is a {type(row).__name__}, expected an object")
    attributes = sorted(
        (a for a in _rows(data, "attributes_data") if isinstance(a.get("name"), str) and a.get("name")),
        key=lambda a: _position(a.get("relative_position")),
    )
    attr_names: list[str] = [str(a["name"]) for a in attributes]
    attr_by_id = {str(a.get("id")): str(a["name"]) for a in attributes}

    tasks: dict[str, TaskColumns] = {}  # task id -> its columns
    for t in data["labeling_tasks_data"]:
        if t.get("task_type") != _CLASSIFICATION:
            continue
        if not isinstance(t.get("name"), str) or t.get("id") is None:
            raise ExportError(f"{source}: a labeling task lacks its id or name")
        attr_id = str(t.get("attribute_id"))
        if t.get("task_target") == "ON_ATTRIBUTE" and attr_id not in attr_by_id:
            raise ExportError(f"{source}: task {t.get('name')!r} points at an unknown attribute")
        attr = attr_by_id[attr_id] if t.get("task_target") == "ON_ATTRIBUTE" else None
        tasks[str(t["id"])] = TaskColumns.named(t["name"], attr)
    label_task: dict[str, tuple[str, str]] = {}
    for lab in data["labeling_task_labels_data"]:
        if str(lab.get("labeling_task_id")) not in tasks:
            continue
        if lab.get("id") is None or not isinstance(lab.get("name"), str):
            raise ExportError(f"{source}: a label of a classification task lacks its id or name")
        label_task[str(lab["id"])] = (str(lab["labeling_task_id"]), lab["name"])

    manual: dict[tuple[str, str], list[str]] = {}
    weak: dict[tuple[str, str], tuple[str, float | None]] = {}
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
            conf = _float_or_none(rla.get("confidence"))
            old = weak.get(key)
            if old is None or (conf is not None and (old[1] is None or conf > old[1])):
                weak[key] = (label, conf)

    records: list[Record] = []
    uuids: list[str] = []
    for i, row in enumerate(data["records_data"]):
        if not isinstance(row.get("data"), dict) or not row.get("id"):
            raise ExportError(f"{source}: record #{i} lacks id or data")
        values = row["data"]
        rec: Record = {}
        for name in attr_names or list(values):
            rec[name] = as_string(values.get(name))
        for name in values:  # attributes the table does not list still come through
            rec.setdefault(name, as_string(values[name]))
        rid = str(row["id"])
        for task_id, cols in tasks.items():
            names = manual.get((rid, task_id))
            rec[str(cols.manual)] = ", ".join(names) if names else None
            w = weak.get((rid, task_id))
            rec[str(cols.weak)] = w[0] if w else None
            rec[str(cols.confidence)] = confidence_string(w[1]) if w else None
        records.append(rec)
        uuids.append(rid)
    if not records:
        raise ExportError(f"{source}: the snapshot holds no records")
    return records, uuids


def write_snapshot(src: str | Path, dst: str | Path, *, ids: list[Any], vectors: np.ndarray,
                   attribute: str | None = None, model: str, platform: str = PLATFORM, id_attribute: str = "running_id",
                   name: str | None = None) -> Snapshot:
    """Copy snapshot ``src`` to ``dst`` with our embedding added as refinery's own export writes one.

    ``ids[i]`` (values of ``id_attribute``) gets ``vectors[i]``, L2-normalised; every record must get exactly
    one. The embedding belongs to ``attribute``, a TEXT attribute (default: the first), is named ``name``
    (default :func:`kern_finetune.refinery.columns.embedding_name`) and comes first in ``embeddings_data``
    (the order the import uploads tensors in). One of the same name is replaced; the source's embeddings
    without tensors are dropped, older ones completed (:attr:`Snapshot.notices` says which): the fields
    and why are in ``docs/snapshot.md``.

    ``dst`` is written atomically and read back first; on any error it is left untouched. Raises
    :class:`DoorError` for bad ids/vectors, :class:`ConfigError` for a bad attribute, :class:`ExportError`
    for an unreadable ``src``.
    """
    src, dst = Path(src), Path(dst)
    snap = read_snapshot(src)
    arr = _unit_vectors(vectors, len(ids))
    by_id = _record_uuids(snap, ids, id_attribute)
    attr = _text_attribute(snap, attribute)
    name = name or embedding_name(str(attr["name"]), model=model, platform=platform)
    if not isinstance(name, str) or not name.strip():
        raise ConfigError("the embedding name must be a non-empty string")

    data = dict(snap.data)
    emb_id = str(uuid.uuid4())
    now = str(datetime.now(timezone.utc).replace(tzinfo=None))  # the export's json.dumps(default=str) form
    ours = {"id": emb_id, "attribute_id": str(attr["id"]), "name": name, "custom": True, "type": "ON_ATTRIBUTE",
            "started_at": now, "finished_at": now, "platform": platform, "model": model_short_name(model),
            "filter_attributes": None, "additional_data": None}
    tensors = _rows(data, "embedding_tensors_data")
    kept, notices = _kept_embeddings(snap, tensors, name)
    keep_ids = {e.get("id") for e in kept}
    uuids = set(snap.record_uuids)
    data["embeddings_data"] = [ours] + kept
    data["embedding_tensors_data"] = [
        t for t in tensors if t.get("embedding_id") in keep_ids and t.get("record_id") in uuids
    ] + [
        {"embedding_id": emb_id, "record_id": rid, "data": row.tolist(), "sub_key": None}
        for rid, row in zip(by_id, np.round(arr, 7))
    ]
    member = _safe_member(snap.member)
    if member != snap.member:
        notices.append(f"the source's JSON member {snap.member!r} is not a plain file name (a path that would "
                       f"write outside the folder it is unzipped in); written as {member!r}")
    back = _write_checked(dst, member, data, name=name, count=len(by_id), dimension=arr.shape[1])
    back.notices = notices
    return back


def check_snapshot_dst(dst: str | Path, *, src: str | Path | None = None, out_dir: str | Path | None = None,
                       flag: str = "--write-snapshot") -> Path:
    """Check, before any work, that a snapshot may be written to ``dst``; returns it. One :class:`ConfigError`
    line when ``dst`` is the input ``src`` (under any spelling, links too), lies inside the run's output folder
    ``out_dir`` (replaced as a whole), is a folder or not a regular file, or its folder cannot be written
    (a probe file is created and removed there, so a read-only file system counts too).
    """
    dst = Path(dst)
    real = Path(os.path.realpath(dst))
    if src is not None:
        src_p = Path(src)
        same = real == Path(os.path.realpath(src_p))
        if not same and dst.exists() and src_p.exists():
            try:
                same = os.path.samefile(src_p, dst)
            except OSError:
                same = False
        if same:
            raise ConfigError(f"{flag} {dst} is the input snapshot {src_p}: writing it would replace your export; "
                              f"name a new file (e.g. {src_p.with_name(src_p.stem + '-with-embedding.zip')})")
    if dst.is_dir():
        raise ConfigError(f"{flag} {dst} is a folder; name the .zip file to write in it (e.g. {dst / 'with-embedding.zip'})")
    if dst.exists() and not dst.is_file():
        raise ConfigError(f"{flag} {dst} is not a regular file; name a .zip file to write")
    if out_dir is not None:
        out_real = Path(os.path.realpath(out_dir))
        if out_real == real or out_real in real.parents:
            raise ConfigError(f"{flag} {dst} is inside the output folder {out_dir}, which a run replaces as a whole; "
                              "name a file outside it")
    folder = real.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise ConfigError(f"cannot write {flag} {dst}: {folder} is a file, not a folder; name a file in a folder")
    try:
        fd, probe = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError(f"cannot write {flag} {dst}: {folder} is not writable ({exc.strerror}); "
                          "name a file in a folder you can write") from None
    return dst


def _safe_member(member: str) -> str:
    """A zip member name that stays inside the folder it is unzipped in: the last part of ``member`` when it
    is absolute, holds ``..``, a backslash or a drive letter; else ``member`` as it is."""
    parts = member.replace("\\", "/").split("/")
    if not member.startswith(("/", "\\")) and "\\" not in member and ".." not in parts and ":" not in member:
        return member
    name = next((p for p in reversed(parts) if p not in ("", ".", "..")), "")
    name = name.split(":")[-1]
    return name if name.endswith(".json") and name != ".json" else "snapshot.json"


def _unit_vectors(vectors: np.ndarray, n_ids: int) -> np.ndarray:
    """The vectors as float64, L2-normalised; :class:`DoorError` for a bad shape, NaN or zero vector."""
    arr = np.asarray(vectors, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] != n_ids or arr.shape[1] == 0:
        raise DoorError(f"vectors of shape {arr.shape} do not match {n_ids} ids")
    if not np.isfinite(arr).all():
        raise DoorError("vectors hold NaN or infinite values")
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    if (norms == 0).any():
        raise DoorError("zero vectors cannot be L2-normalised")
    return arr / norms


def _record_uuids(snap: Snapshot, ids: list[Any], id_attribute: str) -> list[str]:
    """The snapshot record uuid of every id, in order; every snapshot record must get exactly one."""
    by_id: dict[str, str] = {}
    for rec, rid in zip(snap.records, snap.record_uuids):
        key = rec.get(id_attribute)
        if key is None:
            raise DoorError(f"snapshot record {rid} has no {id_attribute!r}")
        by_id[str(key)] = rid
    ids_s = [str(i) for i in ids]
    if len(set(ids_s)) != len(ids_s):
        raise DoorError("duplicate record ids: each record must get exactly one vector")
    unknown = [i for i in ids_s if i not in by_id]
    if unknown:
        raise DoorError(f"{len(unknown)} id(s) not in the snapshot, e.g. {unknown[:3]}")
    if len(ids_s) != len(by_id):
        raise DoorError(f"{len(by_id) - len(ids_s)} snapshot record(s) would get no vector")
    return [by_id[i] for i in ids_s]


def _kept_embeddings(snap: Snapshot, tensors: list[dict[str, Any]], name: str) -> tuple[list[dict[str, Any]], list[str]]:
    """The source's embeddings that stay beside ours (completed where older), and notices for the rest."""
    notices: list[str] = []
    kept: list[dict[str, Any]] = []
    for emb in _rows(snap.data, "embeddings_data"):
        ename = str(emb.get("name"))
        if ename == name:
            continue  # replaced by ours
        if not any(t.get("embedding_id") == emb.get("id") for t in tensors):
            notices.append(f"dropped embedding {ename!r}: it has no tensors in the source snapshot (exported "
                           "without embedding tensors); recreate it in refinery after the import")
            continue
        fixed, note = _complete_legacy(emb, snap)
        if fixed is None:
            notices.append(f"dropped embedding {ename!r}: {note}")
            continue
        if note:
            notices.append(note)
        kept.append(fixed)
    return kept, notices


def _write_checked(dst: Path, member: str, data: dict[str, Any], *, name: str, count: int, dimension: int) -> Snapshot:
    """Write the zip atomically (a temporary file renamed into place) after reading our embedding back."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # an ordinary file, not mkstemp's 0600
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
            zf.writestr(member, json.dumps(data))
        back = read_snapshot(tmp)
        info = back.embeddings.get(name)
        if not info or info["count"] != count or info["dimension"] != dimension:
            raise DoorError(f"read-back check failed for embedding {name!r} in {dst}")
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    back.path = dst
    return back


def import_steps(path: str | Path, embedding: str) -> list[str]:
    """The steps to import a written snapshot in refinery's UI (refinery-ui ``ButtonsContainer.tsx``)."""
    return [
        "open refinery (http://localhost:4455) and go to the projects overview",
        f'click "Import snapshot" and upload {path} (leave the password empty)',
        "refinery creates a NEW project from it (the source project stays as it was)",
        f"once tokenization has finished, refinery uploads the tensors: the embedding {embedding!r} shows as "
        "FINISHED under Project settings > Embeddings and serves the data browser's similarity search",
        "do not upload records into that project later: a record upload recomputes every embedding "
        "(recreate_embeddings) and ours cannot be recomputed by refinery; write and import a new snapshot instead",
    ]


def _text_attribute(snap: Snapshot, attribute: str | None) -> dict[str, Any]:
    attrs = sorted(
        (a for a in _rows(snap.data, "attributes_data") if isinstance(a.get("name"), str) and a.get("id") is not None),
        key=lambda a: _position(a.get("relative_position")),
    )
    texts = [a for a in attrs if a.get("data_type") == "TEXT"]
    if attribute is None:
        if not texts:
            raise ExportError(f"{snap.path}: the snapshot has no TEXT attribute to attach an embedding to")
        return texts[0]
    found = next((a for a in attrs if a["name"] == attribute), None)
    listing = ", ".join(a["name"] for a in texts) or "none"
    if found is None:
        raise ConfigError(f"attribute {attribute!r} is not in the snapshot; its TEXT attributes: {listing}")
    if found.get("data_type") != "TEXT":
        raise ConfigError(f"attribute {attribute!r} is {found.get('data_type')}, refinery embeds TEXT attributes: {listing}")
    return found


def _complete_legacy(emb: dict[str, Any], snap: Snapshot) -> tuple[dict[str, Any] | None, str]:
    """Give an older embedding entry the ``platform``/``model``/``attribute_id`` the import would infer from its
    name (:func:`~kern_finetune.refinery.columns.parse_embedding_name`, which also reads names with ``-`` in the
    attribute); the name is kept."""
    if emb.get("platform") and emb.get("attribute_id"):
        return emb, ""
    ename = str(emb.get("name") or "")
    attrs = {a["name"]: a for a in _rows(snap.data, "attributes_data") if isinstance(a.get("name"), str)}
    parsed = parse_embedding_name(ename, attrs)
    if parsed is not None:
        out = dict(emb)
        if not out.get("platform"):
            out["platform"] = import_platform(parsed.rest)
            out["model"] = parsed.rest
        if not out.get("attribute_id"):
            out["attribute_id"] = str(attrs[parsed.attribute].get("id"))
        return out, (f"completed older embedding {ename!r} with platform {out['platform']!r}, model "
                     f"{out.get('model')!r} and attribute {parsed.attribute!r} (its name stays)")
    return None, "its attribute cannot be told from its name, and refinery's import would fail on it"


def _load(path: Path, *, max_bytes: int | None = None) -> tuple[str, dict[str, Any]]:
    member, raw = read_zip_json_member(path, max_bytes=max_bytes)
    data = parse_json(raw, source=f"{path} ({member})")
    if isinstance(data, str):  # tolerate a double-encoded body, as the export has
        data = parse_json(data, source=f"{path} ({member}, double-encoded)")
    if not isinstance(data, dict):
        raise ExportError(f"{path}: the snapshot JSON must be an object of tables, got {type(data).__name__}")
    return member, data


def _rows(data: dict[str, Any], key: str) -> list[dict[str, Any]]:
    """The object rows of table ``key`` (absent or malformed tables read as empty)."""
    table = data.get(key)
    return [r for r in table if isinstance(r, dict)] if isinstance(table, list) else []


def _position(value: Any) -> tuple[bool, float]:
    try:
        return (False, float(value))
    except (TypeError, ValueError):
        return (True, 0.0)


def _float_or_none(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if np.isfinite(out) else None
