"""Read a refinery record export (``GET /api/project/{id}/export``, decoded) and find its labeling tasks.

Columns: :mod:`kern_finetune.refinery.columns`. Information-extraction tasks use the same suffixes with
per-token JSON arrays (refinery-submodule-model ``business_objects/export.py``, ``__build_extraction_part``);
they are found but never trained on.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ..errors import ExportError, TaskNotFoundError
from .columns import CLASSIFICATION, EXTRACTION, Record, TaskColumns, split_task_column
from .reader import is_zip, parse_json, read_export_bytes
from .snapshot import read_snapshot

__all__ = ["load_export", "parse_export_payload", "discover_tasks", "resolve_task"]

log = logging.getLogger(__name__)


def parse_export_payload(payload: Any, *, source: str = "export") -> list[Record]:
    """Turn an export body (a JSON string holding the records, or the list itself) into records."""
    if isinstance(payload, (bytes, bytearray)):
        payload = parse_json(bytes(payload), source=source)
    for _ in range(2):  # the host double-encodes: a JSON string that holds the JSON list
        if isinstance(payload, str):
            payload = parse_json(payload, source=source)
    if isinstance(payload, dict) and isinstance(payload.get("records"), list):
        payload = payload["records"]
    if not isinstance(payload, list):
        what = "null" if payload is None else type(payload).__name__
        raise ExportError(f"{source} must be a list of records, got {what}")
    for i, rec in enumerate(payload):
        if not isinstance(rec, dict):
            raise ExportError(f"{source} record #{i} is a {type(rec).__name__}, expected an object")
    if not payload:
        raise ExportError(f"{source} holds no records")
    return payload


def load_export(path: str | Path, *, max_bytes: int | None = None) -> list[Record]:
    """Read an export file: ``.json``, ``.json.gz`` or a refinery project snapshot ``.zip``, decompressed
    under ``max_bytes`` (default: :func:`kern_finetune.refinery.reader.max_input_bytes`)."""
    path = Path(path)
    if is_zip(path):
        return read_snapshot(path, max_bytes=max_bytes).records
    raw = read_export_bytes(path, max_bytes=max_bytes)
    return parse_export_payload(raw, source=str(path))


def _is_token_array(value: Any) -> bool:
    """A per-token value of an extraction task: a JSON array (or its text) of BIO tags or confidences."""
    if isinstance(value, list):
        return True
    if isinstance(value, str) and value.startswith("[") and value.endswith("]"):
        try:
            parsed = json.loads(value)
        except (ValueError, RecursionError):
            return False
        return isinstance(parsed, list) and (
            all(isinstance(x, str) and (x == "OUTSIDE" or x[:2] in ("B-", "I-")) for x in parsed)
            or all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in parsed)
        )
    return False


def discover_tasks(records: list[Record]) -> list[TaskColumns]:
    """All labeling tasks whose columns appear in the export, in column order; ``kind="extraction"`` where most
    non-null values in the first 1,000 records are per-token arrays."""
    window = records[:1000]
    columns = dict.fromkeys(key for rec in window for key in rec)
    found: dict[tuple[str | None, str], dict[str, str]] = {}
    for col in columns:
        hit = split_task_column(col)
        if hit is not None:
            attribute, name, role = hit
            found.setdefault((attribute, name), {})[role] = col
    out = []
    for (attr, name), c in found.items():
        values = [v for col in c.values() for rec in window if (v := rec.get(col)) is not None]
        extraction = bool(values) and 2 * sum(_is_token_array(v) for v in values) > len(values)
        out.append(TaskColumns(
            name=name, attribute=attr, manual=c.get("manual"), weak=c.get("weak"), confidence=c.get("confidence"),
            kind=EXTRACTION if extraction else CLASSIFICATION,
        ))
    return out


def resolve_task(records: list[Record], task: str | None) -> TaskColumns:
    """Find the named classification task (``Topic`` or ``attribute.Topic``); with no name, the only one.
    Extraction tasks are never chosen: with no name they are skipped (and logged), by name they are an error."""
    tasks = discover_tasks(records)
    classification = [t for t in tasks if t.kind == CLASSIFICATION]
    extraction = [t for t in tasks if t.kind == EXTRACTION]
    listing = ", ".join(t.label for t in classification) or "none"
    ext_listing = ", ".join(t.label for t in extraction)
    if task is None:
        if len(classification) == 1:
            if extraction:
                log.info("task %s: ignored the information-extraction task(s) %s (per-token labels)",
                         classification[0].label, ext_listing)
            return classification[0]
        if not classification:
            if extraction:
                raise TaskNotFoundError(
                    f"the export has only information-extraction tasks ({ext_listing}); "
                    "kern-finetune trains on classification tasks"
                )
            raise TaskNotFoundError("the export has no labeling-task columns (__<task>__MANUAL / __WEAK_SUPERVISION)")
        raise TaskNotFoundError(f"the export has several labeling tasks, name one with --task: {listing}")
    matches = [t for t in classification if task in (t.name, t.label)]
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise TaskNotFoundError(f"task {task!r} exists on several attributes, name one of: {listing}")
    if any(task in (t.name, t.label) for t in extraction):
        raise TaskNotFoundError(
            f"task {task!r} is an information-extraction task (per-token labels); name a classification task: {listing}"
        )
    more = f" (information extraction, not trainable: {ext_listing})" if extraction else ""
    raise TaskNotFoundError(f"task {task!r} is not in the export; tasks found: {listing}{more}")
