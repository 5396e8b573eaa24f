"""A replay of refinery's record export (``GET /api/project/{id}/export``) over a snapshot's tables.

Transcribed from code-kern-ai/refinery-submodule-model ``business_objects/export.py`` at the commit
refinery-gateway v1.17.0 pins (49ea175b), ``build_full_record_sql_export``, and refinery-gateway v1.17.0
``controller/transfer/manager.py`` ``export_records`` (``pd.read_sql(...).to_json(orient="records")``):

- attributes in ``relative_position`` order, each ``r.data->>'<name>'`` (text; JSON numbers as their text);
- per classification task, base ``COALESCE(attribute_name,'') || '__' || task_name``:
  ``__MANUAL`` = ``string_agg(label, ', ')`` over valid manual labels (``is_valid_manual_label = TRUE``,
  ``valid_rla_ids``), ``__WEAK_SUPERVISION`` = ``string_agg`` over weak labels,
  ``__WEAK_SUPERVISION__confidence`` = ``string_agg(ROUND(confidence, 4)::TEXT, ', ')``; only
  ``return_type = 'RETURN'`` rows (``__get_classification_labels``); a LEFT JOIN, so nulls without labels;
- per information-extraction task (``__build_extraction_part``, ``__get_extraction_labels_BIO``), base
  ``<attribute>__<task>``: per token of the task's attribute, ordered by token index, ``B-<label>`` /
  ``I-<label>`` where a ``YIELD`` label covers it (``is_beginning_token``), else ``OUTSIDE``; one array per
  source (``MANUAL`` valid ones only, ``WEAK_SUPERVISION``), and for weak supervision the confidences
  (``0`` outside). An INNER JOIN: records without token statistics drop out of the export;
- ``ORDER BY 1``: by the first attribute's *text*.

Token counts come from ``record_attribute_token_statistics_data``; where a snapshot has none (the real
AG News one was exported without them; refinery recomputes them with spaCy on import), a regex tokenizer
stands in (words and single punctuation marks), at least one past the highest labelled token index.
"""

from __future__ import annotations

import json
import re
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

__all__ = ["record_export"]

_TOKEN = re.compile(r"\w+|[^\w\s]")


def _text(value: Any) -> str | None:
    """``r.data->>'name'``: JSON text of a value, strings unquoted, null as None."""
    if value is None:
        return None
    if isinstance(value, str):
        return value
    return json.dumps(value)


def _round4(value: float) -> str:
    """Postgres ``ROUND(x::numeric, 4)::TEXT``."""
    return str(Decimal(repr(float(value))).quantize(Decimal("0.0001"), rounding=ROUND_HALF_UP))


def record_export(data: dict[str, Any]) -> list[dict[str, Any]]:
    attributes = sorted(data["attributes_data"], key=lambda a: a.get("relative_position") or 0)
    attr_name = {a["id"]: a["name"] for a in attributes}
    tasks = data["labeling_tasks_data"]
    labels = {lab["id"]: lab for lab in data["labeling_task_labels_data"]}
    task_of_label = {lid: lab["labeling_task_id"] for lid, lab in labels.items()}
    classification = [t for t in tasks if t["task_type"] == "MULTICLASS_CLASSIFICATION"]
    extraction = [t for t in tasks if t["task_type"] == "INFORMATION_EXTRACTION" and t["attribute_id"] in attr_name]
    rlas_by_record: dict[str, list[dict[str, Any]]] = {}
    for r in data["record_label_associations_data"]:
        rlas_by_record.setdefault(r["record_id"], []).append(r)
    tokens_by_rla: dict[str, list[dict[str, Any]]] = {}
    for tok in data.get("record_label_association_tokens_data") or []:
        tokens_by_rla.setdefault(tok["record_label_association_id"], []).append(tok)

    def valid(rla: dict[str, Any]) -> bool:
        return rla["source_type"] == "MANUAL" and rla.get("is_valid_manual_label") is True

    stats: dict[tuple[str, str], int] = {}
    for s in data.get("record_attribute_token_statistics_data") or []:
        stats[(s["record_id"], s["attribute_id"])] = int(s["num_token"])

    out: list[dict[str, Any]] = []
    for rec in data["records_data"]:
        rid = rec["id"]
        row: dict[str, Any] = {a["name"]: _text(rec["data"].get(a["name"])) for a in attributes}
        mine = rlas_by_record.get(rid, [])
        for t in classification:
            base = f"{attr_name.get(t['attribute_id'], '')}__{t['name']}"
            rows = [r for r in mine if r["return_type"] == "RETURN" and task_of_label.get(r["labeling_task_label_id"]) == t["id"]]
            manual = [labels[r["labeling_task_label_id"]]["name"] for r in rows if valid(r)]
            weak = [r for r in rows if r["source_type"] == "WEAK_SUPERVISION"]
            row[f"{base}__MANUAL"] = ", ".join(manual) or None
            row[f"{base}__WEAK_SUPERVISION"] = ", ".join(labels[r["labeling_task_label_id"]]["name"] for r in weak) or None
            row[f"{base}__WEAK_SUPERVISION__confidence"] = ", ".join(_round4(r["confidence"]) for r in weak) or None
        if extraction:
            has_stats = False
            for t in extraction:
                att = t["attribute_id"]
                yields = [r for r in mine if r["return_type"] == "YIELD" and task_of_label.get(r["labeling_task_label_id"]) == t["id"]]
                n = stats.get((rid, att))
                if n is None and not stats:
                    text = _text(rec["data"].get(attr_name[att])) or ""
                    top = max((tok["token_index"] for r in yields for tok in tokens_by_rla.get(r["id"], [])), default=-1)
                    n = max(len(_TOKEN.findall(text)), top + 1)
                if not n:
                    continue
                has_stats = True
                base = f"{attr_name[att]}__{t['name']}"
                for source in ("MANUAL", "WEAK_SUPERVISION"):
                    tags: list[str] = ["OUTSIDE"] * n
                    confs: list[float] = [0.0] * n
                    for r in yields:
                        if r["source_type"] != source or (source == "MANUAL" and not valid(r)):
                            continue
                        name = labels[r["labeling_task_label_id"]]["name"]
                        for tok in tokens_by_rla.get(r["id"], []):
                            if tok["token_index"] < n:
                                tags[tok["token_index"]] = ("B-" if tok["is_beginning_token"] else "I-") + name
                                confs[tok["token_index"]] = float(_round4(r.get("confidence") or 0))
                    row[f"{base}__{source}"] = tags
                    if source == "WEAK_SUPERVISION":
                        row[f"{base}__WEAK_SUPERVISION__confidence"] = confs
            if not has_stats:
                continue  # INNER JOIN on the token statistics
        out.append(row)
    first = attributes[0]["name"]
    out.sort(key=lambda r: (r[first] is None, r[first] or ""))
    return out
