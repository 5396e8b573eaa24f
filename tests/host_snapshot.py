"""A refinery project snapshot written for a test, carrying vectors the test chooses.

The local host serves only what a real refinery serves, so a test that needs known vectors in it (search, the
threshold, the 100-result limit, fuzzing the search route) lets the host import them: a snapshot's tables as
refinery-gateway's export writes them (``controller/transfer/project_transfer_manager.py``
``get_project_export_dump``, the tables the bundled ``tests/data/ag_news_snapshot_small.zip`` has), with one
finished attribute embedding and its ``embedding_tensors_data``. Ids are UUIDs derived from the positions, so a
snapshot is the same file every time (the host refuses another file in a data dir it imported one into).
"""

from __future__ import annotations

import json
import uuid
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["embedding_name", "write_snapshot_zip"]


def _id(kind: str, key: Any) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"kern-finetune-test-snapshot:{kind}:{key}"))


def embedding_name(attribute: str, model: str, platform: str = "huggingface") -> str:
    """refinery-gateway ``get_embedding_name`` of an attribute embedding."""
    return f"{attribute}-classification-{platform}-{model}"


def write_snapshot_zip(
    path: Path,
    rows: Sequence[Mapping[str, Any]],
    vectors: np.ndarray | None,
    *,
    attribute: str = "Title",
    task: str = "Topic",
    manual: Mapping[int, str] | None = None,
    weak: Mapping[int, tuple[str, float]] | None = None,
    platform: str = "huggingface",
    model: str = "test-model",
) -> Path:
    """Write a snapshot of ``rows`` (attribute values, in ``rows[0]``'s key order, the first one the running id)
    to ``path``; ``vectors[i]`` (stored as given) is row ``i``'s tensor of the ``attribute`` embedding (none
    without ``vectors``). ``manual``/``weak``: row -> label (and confidence) of the whole-record task ``task``."""
    manual, weak = dict(manual or {}), dict(weak or {})
    names = list(rows[0])
    attributes = [{"id": _id("attribute", a), "name": a, "data_type": "INTEGER" if k == 0 else "TEXT",
                   "is_primary_key": False, "relative_position": k + 1} for k, a in enumerate(names)]
    attr_id = {a["name"]: a["id"] for a in attributes}
    records = [{"id": _id("record", i), "data": dict(row), "category": "SCALE"} for i, row in enumerate(rows)]
    task_id = _id("task", task)
    labels = sorted({*manual.values(), *(lab for lab, _ in weak.values())})
    label_id = {lab: _id("label", lab) for lab in labels}
    rlas = [{"id": _id("rla-manual", i), "source_id": "None", "record_id": _id("record", i),
             "labeling_task_label_id": label_id[lab], "source_type": "MANUAL", "return_type": "RETURN",
             "confidence": 1.0, "is_gold_star": None, "is_valid_manual_label": True}
            for i, lab in manual.items()]
    rlas += [{"id": _id("rla-weak", i), "source_id": "None", "record_id": _id("record", i),
              "labeling_task_label_id": label_id[lab], "source_type": "WEAK_SUPERVISION", "return_type": "RETURN",
              "confidence": conf, "is_gold_star": None, "is_valid_manual_label": None}
             for i, (lab, conf) in weak.items()]
    embeddings, tensors = [], []
    if vectors is not None:
        assert len(vectors) == len(rows)
        emb_id = _id("embedding", model)
        embeddings.append({"id": emb_id, "attribute_id": attr_id[attribute],
                           "name": embedding_name(attribute, model, platform), "custom": False, "type": "ON_ATTRIBUTE",
                           "platform": platform, "model": model, "filter_attributes": None, "additional_data": None})
        tensors = [{"embedding_id": emb_id, "record_id": _id("record", i),
                    "data": np.asarray(v, dtype=np.float32).astype(float).tolist(), "sub_key": None}
                   for i, v in enumerate(vectors)]
    tables = {
        "project_details_data": {"id": _id("project", path.name), "name": path.stem, "description": "",
                                 "tokenizer": "en_core_web_sm", "status": "INIT_COMPLETE"},
        "records_data": records,
        "attributes_data": attributes,
        "labeling_tasks_data": [{"id": task_id, "attribute_id": "None", "name": task, "task_target": "ON_WHOLE_RECORD",
                                 "task_type": "MULTICLASS_CLASSIFICATION"}],
        "labeling_task_labels_data": [{"id": label_id[lab], "labeling_task_id": task_id, "name": lab}
                                      for lab in labels],
        "record_label_associations_data": rlas,
        "record_label_association_tokens_data": [],
        "record_attribute_token_statistics_data": [],
        "embeddings_data": embeddings,
        "embedding_tensors_data": tensors,
    }
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("project_export.json", json.dumps(tables))
    return path
