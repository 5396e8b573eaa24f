"""Read a refinery record export and find its labeling tasks.

A record export is what ``GET /api/project/{id}/export`` returns once decoded: a list of objects, one
per record, every attribute value a string (or null). The host sends it as a JSON *string* holding that
list, so :func:`parse_export_payload` accepts both the string and the list.

Column naming per classification task (``docs/refinery-api.md``)::

    <attribute>__<task>__MANUAL                      manual label(s), several joined with ", "
    <attribute>__<task>__WEAK_SUPERVISION            weak-supervision label
    <attribute>__<task>__WEAK_SUPERVISION__confidence  its confidence, a string like "0.9312"

For a whole-record task the attribute part is empty (``__Topic__MANUAL``).
"""

from __future__ import annotations

import gzip
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ExportError, TaskNotFoundError

__all__ = ["Record", "TaskColumns", "load_export", "parse_export_payload", "discover_tasks", "resolve_task"]

Record = dict[str, Any]

_MANUAL = "__MANUAL"
_WEAK = "__WEAK_SUPERVISION"
_CONF = "__WEAK_SUPERVISION__confidence"


@dataclass(frozen=True)
class TaskColumns:
    """Where one classification task lives in the export's columns."""

    name: str
    attribute: str | None  # None for a whole-record task
    manual: str | None
    weak: str | None
    confidence: str | None

    @property
    def label(self) -> str:
        return self.name if self.attribute is None else f"{self.attribute}.{self.name}"


def parse_export_payload(payload: Any) -> list[Record]:
    """Turn an export body (a JSON string holding the records, or the list itself) into records."""
    if isinstance(payload, (bytes, bytearray)):
        payload = payload.decode("utf-8")
    for _ in range(2):  # the host double-encodes: a JSON string that holds the JSON list
        if isinstance(payload, str):
            try:
                payload = json.loads(payload)
            except json.JSONDecodeError as exc:
                raise ExportError(f"export is not valid JSON: {exc.msg} at position {exc.pos}") from None
    if isinstance(payload, dict) and isinstance(payload.get("records"), list):
        payload = payload["records"]
    if not isinstance(payload, list):
        raise ExportError(f"export must be a list of records, got {type(payload).__name__}")
    for i, rec in enumerate(payload):
        if not isinstance(rec, dict):
            raise ExportError(f"export record #{i} is a {type(rec).__name__}, expected an object")
    if not payload:
        raise ExportError("export holds no records")
    return payload


def load_export(path: str | Path) -> list[Record]:
    """Read an export file: ``.json``, ``.json.gz`` or a refinery project snapshot ``.zip``."""
    path = Path(path)
    if not path.exists():
        raise ExportError(f"export file not found: {path}")
    if path.suffix == ".zip":
        from .snapshot import read_snapshot  # local import: snapshots are the less common door

        return read_snapshot(path).records
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                raw = fh.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise ExportError(f"cannot read export {path}: {exc}") from None
    return parse_export_payload(raw)


def discover_tasks(records: list[Record]) -> list[TaskColumns]:
    """All classification tasks whose columns appear in the export, in column order."""
    columns: dict[str, None] = {}
    for rec in records[:1000]:
        for key in rec:
            columns.setdefault(key, None)
    found: dict[tuple[str | None, str], dict[str, str]] = {}
    for col in columns:
        for suffix, kind in ((_CONF, "confidence"), (_WEAK, "weak"), (_MANUAL, "manual")):
            if col.endswith(suffix):
                base = col[: -len(suffix)]
                if "__" not in base:
                    break
                attribute, _, name = base.rpartition("__")
                if not name:
                    break
                found.setdefault((attribute or None, name), {})[kind] = col
                break
    return [
        TaskColumns(name=name, attribute=attr, manual=c.get("manual"), weak=c.get("weak"), confidence=c.get("confidence"))
        for (attr, name), c in found.items()
    ]


def resolve_task(records: list[Record], task: str | None) -> TaskColumns:
    """Find the named task (``Topic`` or ``attribute.Topic``); with no name, the only one there is."""
    tasks = discover_tasks(records)
    listing = ", ".join(t.label for t in tasks) or "none"
    if task is None:
        if len(tasks) == 1:
            return tasks[0]
        if not tasks:
            raise TaskNotFoundError("the export has no labeling-task columns (__<task>__MANUAL / __WEAK_SUPERVISION)")
        raise TaskNotFoundError(f"the export has several labeling tasks, name one with --task: {listing}")
    matches = [t for t in tasks if task in (t.name, t.label)]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise TaskNotFoundError(f"task {task!r} exists on several attributes, name one of: {listing}")
    raise TaskNotFoundError(f"task {task!r} is not in the export; tasks found: {listing}")
