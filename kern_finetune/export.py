"""Read a refinery record export and find its labeling tasks.

A record export is what ``GET /api/project/{id}/export`` returns once decoded: a list of objects, one
per record, every attribute value a string (or null). The host sends it as a JSON *string* holding that
list, so :func:`parse_export_payload` accepts both the string and the list.

Column naming per classification task (``docs/refinery-api.md``)::

    <attribute>__<task>__MANUAL                      manual label(s), several joined with ", "
    <attribute>__<task>__WEAK_SUPERVISION            weak-supervision label
    <attribute>__<task>__WEAK_SUPERVISION__confidence  its confidence, a string like "0.9312"

For a whole-record task the attribute part is empty (``__Topic__MANUAL``). Information-extraction tasks use
the same suffixes with per-token JSON arrays (``headline__indicators__MANUAL: ["OUTSIDE", "B-x", ...]``,
refinery-submodule-model ``business_objects/export.py``, ``__build_extraction_part``): :func:`discover_tasks`
reports them with ``kind="extraction"`` and :func:`resolve_task` never trains on them.

Files are read by :mod:`kern_finetune.reader` (size cap, one-line errors). :func:`embedding_name` is the one
place that names the embedding we write, refinery's way: ``<attribute>-classification-<platform>-<model>``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ExportError, TaskNotFoundError
from .reader import parse_json, read_export_bytes

__all__ = [
    "Record",
    "TaskColumns",
    "CLASSIFICATION",
    "EXTRACTION",
    "PLATFORM",
    "embedding_name",
    "model_short_name",
    "load_export",
    "parse_export_payload",
    "discover_tasks",
    "resolve_task",
]

log = logging.getLogger(__name__)

Record = dict[str, Any]

CLASSIFICATION = "classification"
EXTRACTION = "extraction"

PLATFORM = "kern-finetune"
"""The ``platform`` of the embeddings we write. refinery stores it as a plain string (submodule-model
``models.py``, ``Embedding.platform = Column(String)``); the import keeps a name whose platform is set, the
tensor upload and search never read it except to pick the distance (Euclidean for every platform but
``python``/tf-idf, refinery-neural-search ``util.py``, ``get_distance_key``). A later ``recreate_embeddings``
fails on it in the embedder (``util/embedders.py``: ``Unknown platform``), which marks the embedding FAILED
instead of silently replacing our vectors with those of a stock model. See ``docs/snapshot.md``."""

_MANUAL = "__MANUAL"
_WEAK = "__WEAK_SUPERVISION"
_CONF = "__WEAK_SUPERVISION__confidence"


def model_short_name(model: str) -> str:
    """``/path/to/all-MiniLM-L6-v2/`` -> ``all-MiniLM-L6-v2``; ``org/name`` -> ``name``."""
    return model.rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1] or model


def embedding_name(attribute: str, *, model: str, platform: str = PLATFORM) -> str:
    """``<attribute>-classification-<platform>-<model>``: how refinery names an attribute-level embedding.

    The same format as refinery-gateway's ``controller/embedding/manager.py`` ``get_embedding_name``, so
    that the project import (``project_transfer_manager.py``) keeps it unchanged when ``platform`` is set.
    """
    if not attribute:
        raise ExportError("the embedding needs the name of the text attribute it belongs to")
    if not platform:
        raise ExportError("the embedding needs a platform name")
    return f"{attribute}-classification-{platform}-{model_short_name(model)}"


@dataclass(frozen=True)
class TaskColumns:
    """Where one labeling task lives in the export's columns."""

    name: str
    attribute: str | None  # None for a whole-record task
    manual: str | None
    weak: str | None
    confidence: str | None
    kind: str = CLASSIFICATION
    """``"classification"``, or ``"extraction"`` when the columns hold per-token arrays."""

    @property
    def label(self) -> str:
        return self.name if self.attribute is None else f"{self.attribute}.{self.name}"


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
    """Read an export file: ``.json``, ``.json.gz`` or a refinery project snapshot ``.zip``.

    ``max_bytes`` caps the decompressed size (default: :func:`kern_finetune.reader.max_input_bytes`).
    """
    path = Path(path)
    if path.suffix == ".zip":
        from .snapshot import read_snapshot  # local import: snapshots are the less common door

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
    """All labeling tasks whose columns appear in the export, in column order.

    A task whose values (most non-null ones in the first 1,000 records) are per-token arrays is
    ``kind="extraction"``.
    """
    window = records[:1000]
    columns: dict[str, None] = {}
    for rec in window:
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

    Extraction tasks are never chosen: with no name they are skipped (and logged), by name they are an error.
    """
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
