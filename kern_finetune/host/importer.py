"""What the host imports on its first start: a record export kept as it is, or a snapshot turned into the
export the gateway would serve once it is imported (``docs/host.md``, "The export" and "Embeddings of a snapshot").

A snapshot follows refinery-submodule-model ``business_objects/export.py`` ``build_full_record_sql_export``
(columns, per-token arrays of extraction tasks, ``ORDER BY 1``) and refinery-gateway
``controller/transfer/project_transfer_manager.py`` ``import_records_and_rlas`` (embedding names and attributes).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ExportError
from ..refinery.columns import (EXTRACTION, Record, TaskColumns, as_string, import_attribute, import_rename,
                                split_task_column, task_base)
from ..refinery.export import discover_tasks, load_export
from ..refinery.snapshot import read_snapshot
from .values import as_confidence, dump_row, is_text

__all__ = ["ImportPlan", "ImportedEmbedding", "ImportedProject", "plan_import", "read_project"]

_EXTRACTION = "INFORMATION_EXTRACTION"
_OUTSIDE = "OUTSIDE"
# spaCy's English tokenizer, approximately: for a snapshot without token statistics
_TOKEN = re.compile(
    r"(?:[A-Za-z]\.){2,}|\d+(?:[.,:]\d+)+|\.{2,}"  # U.S., 1.6, 10:30 and ... stay one token
    r"|\w+(?=n't\b)|n't\b|'(?:s|m|d|ll|re|ve)\b"  # clitics: do|n't, AP|'s
    r"|\w+|[^\w\s]"  # words, and each punctuation mark
    r"|\s{2,}|[^\S ]",  # whitespace other than one space is a token of its own
    re.IGNORECASE,
)


@dataclass
class ImportedEmbedding:
    """An embedding of a snapshot, as the gateway's import would store it."""

    name: str
    attribute: str
    type: str
    custom: bool
    platform: str
    model: str
    positions: list[int]
    """Record positions (into :attr:`ImportedProject.records`) that have a vector, in record order."""
    matrix: np.ndarray = field(repr=False)


@dataclass
class ImportedProject:
    records: list[Record] = field(repr=False)
    uuids: list[str | None] = field(repr=False)
    """The host's record UUID per record (a snapshot's record ids; None for a record export)."""
    extraction_columns: list[str]
    embeddings: list[ImportedEmbedding]
    name: str | None = None


@dataclass
class ImportPlan:
    """What the store writes on the first start: rows, record UUIDs, attributes, tasks, embeddings."""

    rows: list[tuple[int, str, str]] = field(repr=False)
    """``(position, record id, row JSON)``: the export row, every value a string or null (arrays kept)."""
    uuids: list[str | None] = field(repr=False)
    attributes: list[dict[str, Any]]
    """``{"name", "data_type", "is_primary_key"}`` in column order."""
    tasks: list[dict[str, Any]]
    """Classification tasks: ``{"name", "attribute", "manual", "weak", "confidence", "labels"}`` (column names)."""
    extraction_tasks: list[dict[str, Any]]
    """``{"name", "attribute", "columns"}``; their columns are served as they are."""
    embeddings: list[ImportedEmbedding]
    name: str | None


def plan_import(path: str | Path, *, id_attribute: str) -> ImportPlan:
    """Read ``path`` (:func:`read_project`) and lay out what the host stores. Errors are :class:`ExportError`."""
    project = read_project(path)
    records = project.records
    extraction = set(project.extraction_columns)
    columns: dict[str, None] = {}
    for rec in records:
        for key in rec:
            columns.setdefault(key, None)
    label_columns: set[str] = set(extraction)
    tasks: list[dict[str, Any]] = []
    for task in discover_tasks([{c: None for c in columns if c not in extraction}]):
        label_set: dict[str, None] = {}
        for col in (task.manual, task.weak):
            if col:
                for rec in records:
                    value = rec.get(col)
                    if isinstance(value, str) and value:
                        label_set.setdefault(value, None)
        info = _task_json(task, sorted(label_set))
        tasks.append(info)
        label_columns.update((info["manual"], info["weak"], info["confidence"]))
    attributes = [c for c in columns if c not in label_columns]
    synthesize_id = id_attribute not in columns
    if synthesize_id and id_attribute != "running_id":
        raise ExportError(f"id attribute {id_attribute!r} is not in the export; attributes: {', '.join(attributes)}")
    order = list(columns)
    for info in tasks:  # a task column the export lacks is still served, after the others
        order.extend(c for c in (info["manual"], info["weak"], info["confidence"]) if c not in columns)
    if synthesize_id:  # refinery numbers records itself; do the same when the export lacks the column
        attributes.insert(0, id_attribute)
        order.insert(0, id_attribute)
    confidences = {info["confidence"] for info in tasks}
    rows: list[tuple[int, str, str]] = []
    seen: set[str] = set()
    values_by_attr: dict[str, list[str | None]] = {a: [] for a in attributes}
    for i, rec in enumerate(records):
        row: dict[str, Any] = {}
        for col in order:
            if synthesize_id and col == id_attribute:
                row[col] = str(i)
            elif col in extraction:
                value = rec.get(col)
                row[col] = value if isinstance(value, list) else None
            elif col in confidences:
                row[col] = as_confidence(rec.get(col))
            else:
                row[col] = as_string(rec.get(col))
        for attr in attributes:
            if len(values_by_attr[attr]) < 2000:
                values_by_attr[attr].append(row[attr])
        rid = row[id_attribute]
        if rid is None or rid == "":
            raise ExportError(f"record #{i} has no value for the id attribute {id_attribute!r}")
        if rid in seen:
            raise ExportError(f"id attribute {id_attribute!r} is not unique: {rid!r} appears twice")
        seen.add(rid)
        dumped = dump_row(row)
        if not is_text(dumped):
            raise ExportError(f"record #{i} holds text that is not valid Unicode (a lone surrogate)")
        rows.append((i, rid, dumped))
    return ImportPlan(
        rows=rows,
        uuids=project.uuids,
        attributes=[{"name": a, "data_type": _guess_data_type(values_by_attr[a]), "is_primary_key": a == id_attribute}
                    for a in attributes],
        tasks=tasks,
        extraction_tasks=_extraction_tasks(project.extraction_columns),
        embeddings=project.embeddings,
        name=project.name,
    )


def read_project(path: str | Path) -> ImportedProject:
    """Read an export file or a snapshot (see the module docstring). Errors are :class:`ExportError`."""
    path = Path(path)
    if path.suffix != ".zip":
        records = load_export(path)
        return ImportedProject(records=records, uuids=[None] * len(records),
                               extraction_columns=extraction_columns(records), embeddings=[])
    snap = read_snapshot(path)
    data = snap.data
    attributes = sorted(
        (a for a in data.get("attributes_data") or [] if isinstance(a, dict) and a.get("name")),
        key=lambda a: (a.get("relative_position") is None, a.get("relative_position") or 0),
    )
    records = [dict(r) for r in snap.records]
    columns = _add_extraction(records, snap.record_uuids, data, attributes, source=str(path))
    first = next(iter(records[0]), None) if records else None
    order = list(range(len(records)))
    if first is not None:  # ORDER BY 1: the first column as text, nulls last
        order.sort(key=lambda i: (records[i].get(first) is None, str(records[i].get(first) or "")))
    uuids = [snap.record_uuids[i] for i in order]
    return ImportedProject(
        records=[records[i] for i in order],
        uuids=uuids,
        extraction_columns=columns,
        embeddings=_embeddings(data, uuids, attributes, source=str(path)),
        name=snap.project_name or None,
    )


def extraction_columns(records: list[Record]) -> list[str]:
    """The label columns of the export's extraction tasks (per-token arrays, as the real export writes them);
    :func:`kern_finetune.refinery.export.discover_tasks` is the one place that tells the two kinds of task apart."""
    return [col for task in discover_tasks(records) if task.kind == EXTRACTION
            for col in (task.manual, task.weak, task.confidence) if col]


def _add_extraction(records: list[Record], uuids: list[str], data: dict[str, Any], attributes: list[dict[str, Any]],
                    *, source: str) -> list[str]:
    """Add each extraction task's three columns to ``records`` (in place); returns the column names."""
    attr_by_id = {str(a.get("id")): str(a["name"]) for a in attributes}
    tasks = [t for t in data.get("labeling_tasks_data") or [] if isinstance(t, dict) and t.get("task_type") == _EXTRACTION]
    if not tasks:
        return []
    counts: dict[tuple[str, str], int] = {}
    for row in data.get("record_attribute_token_statistics_data") or []:
        if isinstance(row, dict) and isinstance(row.get("num_token"), int):
            counts[(str(row.get("record_id")), str(row.get("attribute_id")))] = row["num_token"]
    labels = {str(lab.get("id")): (str(lab.get("labeling_task_id")), str(lab.get("name")))
              for lab in data.get("labeling_task_labels_data") or [] if isinstance(lab, dict)}
    tokens: dict[str, list[tuple[int, bool]]] = {}
    for tok in data.get("record_label_association_tokens_data") or []:
        if isinstance(tok, dict) and isinstance(tok.get("token_index"), int):
            tokens.setdefault(str(tok.get("record_label_association_id")), []).append(
                (tok["token_index"], bool(tok.get("is_beginning_token"))))
    # (task id, record id, source type) -> {token index: [(tag, confidence)]}
    tagged: dict[tuple[str, str, str], dict[int, list[tuple[str, float | None]]]] = {}
    for rla in data.get("record_label_associations_data") or []:
        if not isinstance(rla, dict) or rla.get("return_type") != "YIELD":
            continue
        kind = rla.get("source_type")
        if kind == "MANUAL" and rla.get("is_valid_manual_label") is False or kind not in ("MANUAL", "WEAK_SUPERVISION"):
            continue
        hit = labels.get(str(rla.get("labeling_task_label_id")))
        if hit is None:
            continue
        conf = rla.get("confidence")
        conf = round(float(conf), 4) if isinstance(conf, (int, float)) and not isinstance(conf, bool) else None
        slot = tagged.setdefault((hit[0], str(rla.get("record_id")), kind), {})
        for index, begin in tokens.get(str(rla.get("id")), []):
            slot.setdefault(index, []).append((("B-" if begin else "I-") + hit[1], conf))
    columns: list[str] = []
    for task in tasks:
        attr_id = str(task.get("attribute_id"))
        if attr_id not in attr_by_id:
            raise ExportError(f"{source}: extraction task {task.get('name')!r} points at an unknown attribute")
        attr, tid = attr_by_id[attr_id], str(task.get("id"))
        cols = TaskColumns.named(str(task.get("name")), attr, kind=EXTRACTION)
        names = (str(cols.manual), str(cols.weak), str(cols.confidence))
        columns.extend(names)
        for rec, rid in zip(records, uuids):
            n = counts.get((rid, attr_id))
            if n is None:  # approximated, but never short of a labelled token
                value = rec.get(attr)
                labelled = [t for kind in ("MANUAL", "WEAK_SUPERVISION") for t in tagged.get((tid, rid, kind), {})]
                n = max([len(_TOKEN.findall(value)) if isinstance(value, str) else 0] + [t + 1 for t in labelled])
            manual, weak, weak_conf = [], [], []
            for kind, out in (("MANUAL", manual), ("WEAK_SUPERVISION", weak)):
                slot = tagged.get((tid, rid, kind), {})
                for t in range(n):
                    hits = slot.get(t)
                    if not hits:
                        out.append(_OUTSIDE)
                        if kind == "WEAK_SUPERVISION":
                            weak_conf.append(0.0)
                        continue
                    for tag, conf in hits:
                        out.append(tag)
                        if kind == "WEAK_SUPERVISION" and conf is not None:
                            weak_conf.append(conf)
            rec[names[0]] = manual or None
            rec[names[1]] = weak or None
            rec[names[2]] = weak_conf or None
    return columns


def _embeddings(data: dict[str, Any], uuids: list[str], attributes: list[dict[str, Any]], *, source: str) -> list[ImportedEmbedding]:
    """The snapshot's ON_ATTRIBUTE embeddings with tensors, named and attributed as the gateway's import does."""
    tensors: dict[str, list[dict[str, Any]]] = {}
    for t in data.get("embedding_tensors_data") or []:
        if isinstance(t, dict):
            tensors.setdefault(str(t.get("embedding_id")), []).append(t)
    attr_by_id = {str(a.get("id")): str(a["name"]) for a in attributes}
    attr_names = set(attr_by_id.values())
    position = {rid: i for i, rid in enumerate(uuids)}
    out: list[ImportedEmbedding] = []
    seen: set[str] = set()
    for emb in data.get("embeddings_data") or []:
        if not isinstance(emb, dict) or not isinstance(emb.get("name"), str):
            raise ExportError(f"{source}: an embedding has no name; refinery's import would fail")
        name = emb["name"]
        platform, model = emb.get("platform"), emb.get("model")
        if not platform:  # project_transfer_manager.py __transform_embedding_by_name (IndexError there)
            renamed = import_rename(name)
            if renamed is None:
                raise ExportError(f"embedding {name!r}: refinery's import splits the name on '-' and fails on this one")
            platform, model, name = renamed
        if emb.get("attribute_id"):
            attribute = attr_by_id.get(str(emb["attribute_id"]))
            if attribute is None:
                raise ExportError(f"{source}: embedding {name!r} points at an unknown attribute")
        else:
            attribute = import_attribute(name)
            if attribute is None or attribute not in attr_names:
                raise ExportError(
                    f"{source}: embedding {name!r} has no attribute_id and its name does not start with an attribute "
                    "followed by -classification or -extraction; refinery's import would fail"
                )
        rows = tensors.get(str(emb.get("id")), [])
        if emb.get("type", "ON_ATTRIBUTE") != "ON_ATTRIBUTE" or not rows:
            continue  # refinery recomputes an embedding without tensors; token-level ones are not searchable here
        if name in seen:
            raise ExportError(f"{source}: two embeddings are named {name!r}")
        seen.add(name)
        pairs: list[tuple[int, Any]] = []
        for t in rows:
            p = position.get(str(t.get("record_id")))
            if p is not None and t.get("sub_key") is None:
                pairs.append((p, t.get("data")))
        pairs.sort(key=lambda x: x[0])
        if not pairs:
            continue  # no tensor belongs to a record of the snapshot
        try:
            matrix = np.asarray([d for _, d in pairs], dtype=np.float32)
        except (TypeError, ValueError, OverflowError):
            raise ExportError(f"{source}: embedding {name!r} has tensors that are not flat lists of numbers") from None
        if matrix.ndim != 2 or matrix.shape[1] == 0 or not np.isfinite(matrix).all():
            raise ExportError(f"{source}: embedding {name!r} has tensors of unequal length or non-finite values")
        out.append(ImportedEmbedding(name=name, attribute=attribute, type="ON_ATTRIBUTE", custom=bool(emb.get("custom")),
                                     platform=str(platform), model=str(model or ""), positions=[p for p, _ in pairs],
                                     matrix=matrix))
    return out


def _guess_data_type(values: list[str]) -> str:
    """A refinery attribute data type guessed from string values: INTEGER, FLOAT, BOOLEAN, CATEGORY or TEXT."""
    present = [v for v in values if v is not None]
    if not present:
        return "TEXT"
    if all(v.lstrip("-").isdigit() for v in present):
        return "INTEGER"
    if all(_is_float(v) for v in present):
        return "FLOAT"
    if all(v.lower() in ("true", "false") for v in present):
        return "BOOLEAN"
    distinct = set(present)
    if len(distinct) <= 20 and len(present) >= 5 * len(distinct) and max(len(v) for v in distinct) <= 40:
        return "CATEGORY"
    return "TEXT"


def _is_float(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def _task_json(task: TaskColumns, labels: list[str]) -> dict[str, Any]:
    named = TaskColumns.named(task.name, task.attribute)
    return {
        "name": task.name,
        "attribute": task.attribute,
        "manual": task.manual or named.manual,
        "weak": task.weak or named.weak,
        "confidence": task.confidence or named.confidence,
        "labels": labels,
    }


def _extraction_tasks(columns: list[str]) -> list[dict[str, Any]]:
    """Extraction tasks (name, attribute, columns) from their export columns ``<attribute>__<task>__<suffix>``."""
    found: dict[str, dict[str, Any]] = {}
    for col in columns:
        hit = split_task_column(col)
        if hit is not None:
            attribute, name, _ = hit
            info = found.setdefault(task_base(attribute, name), {"name": name, "attribute": attribute, "columns": []})
            info["columns"].append(col)
    return list(found.values())
