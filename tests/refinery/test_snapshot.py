"""Snapshot reading (export-shaped records) and writing (a custom embedding added).

The fixture ``tests/data/ag_news_snapshot_small.zip`` is 200 records of the real AG News snapshot,
made by ``scripts/make_snapshot_fixture.py``; the other snapshots are generated here.
"""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import shared_file

from kern_finetune.errors import ExportError, DoorError
from kern_finetune.refinery.export import discover_tasks, load_export, resolve_task
from kern_finetune.refinery.snapshot import read_snapshot, write_snapshot

FIXTURE = Path(__file__).parents[1] / "data" / "ag_news_snapshot_small.zip"


def _tiny_tables() -> dict[str, Any]:
    """Three records, a whole-record task, an attribute-level task and an extraction task."""
    attrs = [
        {"id": "a-id", "name": "running_id", "data_type": "INTEGER", "relative_position": 1},
        {"id": "a-txt", "name": "text", "data_type": "TEXT", "relative_position": 2},
        {"id": "a-num", "name": "score", "data_type": "FLOAT", "relative_position": 3},
    ]
    tasks = [
        {"id": "t1", "attribute_id": "None", "name": "Topic", "task_target": "ON_WHOLE_RECORD", "task_type": "MULTICLASS_CLASSIFICATION"},
        {"id": "t2", "attribute_id": "a-txt", "name": "Tone", "task_target": "ON_ATTRIBUTE", "task_type": "MULTICLASS_CLASSIFICATION"},
        {"id": "t3", "attribute_id": "a-txt", "name": "Spans", "task_target": "ON_ATTRIBUTE", "task_type": "INFORMATION_EXTRACTION"},
    ]
    labels = [
        {"id": "l-a", "labeling_task_id": "t1", "name": "A"},
        {"id": "l-b", "labeling_task_id": "t1", "name": "B"},
        {"id": "l-pos", "labeling_task_id": "t2", "name": "pos"},
        {"id": "l-span", "labeling_task_id": "t3", "name": "X"},
    ]
    records = [{"id": f"r{i}", "data": {"running_id": i, "text": f"text {i}", "score": 0.5 * i}, "category": "SCALE"} for i in range(3)]

    def rla(rec: str, label: str, source: str, conf: float | None = None, valid: bool | None = None) -> dict[str, Any]:
        return {"id": f"{rec}-{label}-{source}", "record_id": rec, "labeling_task_label_id": label, "source_type": source,
                "confidence": conf, "is_valid_manual_label": valid}

    assoc = [
        rla("r0", "l-a", "MANUAL", valid=True),
        rla("r0", "l-b", "WEAK_SUPERVISION", 0.62199),
        rla("r1", "l-a", "MANUAL", valid=True),
        rla("r1", "l-b", "MANUAL", valid=True),  # two labelers disagree
        rla("r1", "l-b", "INFORMATION_SOURCE", 1.0),  # raw votes are not export columns
        rla("r2", "l-b", "MANUAL", valid=False),  # not a valid manual label
        rla("r2", "l-pos", "WEAK_SUPERVISION", 0.9),
        rla("r2", "l-span", "MANUAL", valid=True),
    ]
    return {
        "project_details_data": {"name": "tiny"},
        "records_data": records,
        "attributes_data": attrs,
        "labeling_tasks_data": tasks,
        "labeling_task_labels_data": labels,
        "record_label_associations_data": assoc,
        "embeddings_data": [],
        "embedding_tensors_data": [],
    }


def _zip(path: Path, tables: Any, member: str = "project_export.json") -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(member, json.dumps(tables))
    return path


def test_tiny_snapshot_columns(tmp_path: Path) -> None:
    snap = read_snapshot(_zip(tmp_path / "s.zip", _tiny_tables()))
    r0, r1, r2 = snap.records
    assert snap.record_uuids == ["r0", "r1", "r2"]
    assert r0 == {
        "running_id": "0", "text": "text 0", "score": "0.0",
        "__Topic__MANUAL": "A", "__Topic__WEAK_SUPERVISION": "B", "__Topic__WEAK_SUPERVISION__confidence": "0.6220",
        "text__Tone__MANUAL": None, "text__Tone__WEAK_SUPERVISION": None, "text__Tone__WEAK_SUPERVISION__confidence": None,
    }
    assert r1["__Topic__MANUAL"] == "A, B" and r1["__Topic__WEAK_SUPERVISION"] is None
    assert r2["__Topic__MANUAL"] is None
    assert r2["text__Tone__WEAK_SUPERVISION"] == "pos" and r2["text__Tone__WEAK_SUPERVISION__confidence"] == "0.9000"
    assert not any("Spans" in k for k in r2)  # extraction tasks are left out
    labels = sorted(t.label for t in discover_tasks(snap.records))
    assert labels == ["Topic", "text.Tone"]


def test_fixture_reads_like_an_export() -> None:
    records = load_export(FIXTURE)
    assert len(records) == 200
    task = resolve_task(records, "topic")
    assert task.attribute is None and task.manual == "__topic__MANUAL"
    assert all(isinstance(r["running_id"], str) for r in records)
    assert sum(r["__topic__MANUAL"] is not None for r in records) == 61
    confs = [r["__topic__WEAK_SUPERVISION__confidence"] for r in records if r["__topic__WEAK_SUPERVISION__confidence"]]
    assert confs and all(re.fullmatch(r"[01]\.\d{4}", c) for c in confs)
    assert {r["__topic__MANUAL"] for r in records} <= {None, "world", "sports", "business", "sci_tech"}
    assert list(records[0])[:2] == ["running_id", "headline"]


def test_real_snapshot() -> None:
    snap = read_snapshot(shared_file("data/refinery_snapshots/ag_news.zip"))
    assert len(snap.records) == 3000
    assert sum(r["__topic__MANUAL"] is not None for r in snap.records) == 123
    assert sum(r["__topic__WEAK_SUPERVISION"] is not None for r in snap.records) == 2818


def test_write_snapshot_adds_custom_embedding_and_reads_back(tmp_path: Path) -> None:
    snap = read_snapshot(FIXTURE)
    ids = [r["running_id"] for r in snap.records][::-1]  # any order
    vec = np.random.default_rng(0).normal(size=(len(ids), 16)).astype(np.float32) * 3
    out = write_snapshot(FIXTURE, tmp_path / "out.zip", name="headline-classification-kern-finetune-m", ids=ids, vectors=vec,
                         model="m")
    assert out.path == tmp_path / "out.zip"
    info = out.embeddings["headline-classification-kern-finetune-m"]
    assert info["custom"] is True and info["type"] == "ON_ATTRIBUTE" and info["count"] == 200 and info["dimension"] == 16
    assert "headline-classification-distilbert-base-uncased" in out.embeddings  # the stock one stays
    got_ids, got = out.embedding_vectors("headline-classification-kern-finetune-m")
    want = {i: v / np.linalg.norm(v) for i, v in zip(ids, vec.astype(np.float64))}
    assert np.allclose(got, np.array([want[i] for i in got_ids]), atol=1e-6)
    assert out.records == snap.records  # labels and attributes untouched
    # same name again: replaced, not duplicated
    again = write_snapshot(tmp_path / "out.zip", tmp_path / "out.zip", name="headline-classification-kern-finetune-m", ids=ids,
                           vectors=vec[:, :8], model="m")
    assert len(again.embeddings) == 2 and again.embeddings["headline-classification-kern-finetune-m"]["dimension"] == 8
    assert len(again.data["embedding_tensors_data"]) == 400


def test_write_snapshot_refuses_incomplete_and_leaves_dst_alone(tmp_path: Path) -> None:
    dst = tmp_path / "out.zip"
    dst.write_bytes(b"previous")
    ids = [r["running_id"] for r in read_snapshot(FIXTURE).records]
    vec = np.ones((len(ids), 4))
    with pytest.raises(DoorError, match="no vector"):
        write_snapshot(FIXTURE, dst, name="e", model="m", ids=ids[:-1], vectors=vec[:-1])
    with pytest.raises(DoorError, match="not in the snapshot"):
        write_snapshot(FIXTURE, dst, name="e", model="m", ids=ids[:-1] + ["nope"], vectors=vec)
    bad = vec.copy()
    bad[0, 0] = np.inf
    with pytest.raises(DoorError):
        write_snapshot(FIXTURE, dst, name="e", model="m", ids=ids, vectors=bad)
    assert dst.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["out.zip"]


def test_malformed_snapshots_raise_export_error(tmp_path: Path) -> None:
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    with pytest.raises(ExportError, match="not a zip"):
        read_snapshot(tmp_path / "junk.zip")
    with zipfile.ZipFile(tmp_path / "bad.zip", "w") as zf:
        zf.writestr("x.json", "{broken")
    with pytest.raises(ExportError, match="malformed"):
        read_snapshot(tmp_path / "bad.zip")
    with pytest.raises(ExportError, match="records_data"):
        read_snapshot(_zip(tmp_path / "nolist.zip", {"records_data": {}}))
    with pytest.raises(ExportError, match="not found"):
        load_export(tmp_path / "missing.zip")


def test_default_named_embedding_row_carries_its_attribute_id(tmp_path: Path) -> None:
    """The embedding row as written in the zip (read here with zipfile, not through the reader or the import
    replay) names its attribute by ``attribute_id``. With the default name an import could also recover the
    attribute from the name; refinery's import uses the id when it is there, so the id itself must be right:
    the chosen attribute's, also when it is not the first TEXT attribute."""
    tables = _tiny_tables()
    tables["attributes_data"].append({"id": "a-txt2", "name": "summary", "data_type": "TEXT", "relative_position": 4})
    for r in tables["records_data"]:
        r["data"]["summary"] = f"summary {r['data']['running_id']}"
    src = _zip(tmp_path / "two-texts.zip", tables)
    ids = ["0", "1", "2"]
    vec = np.random.default_rng(3).normal(size=(3, 4))
    for attribute, want in ((None, "a-txt"), ("summary", "a-txt2")):
        dst = tmp_path / f"out-{want}.zip"
        write_snapshot(src, dst, ids=ids, vectors=vec, model="org/some-model", attribute=attribute)
        with zipfile.ZipFile(dst) as zf:
            written = json.loads(zf.read(zf.namelist()[0]))
        name = f"{'text' if attribute is None else attribute}-classification-kern-finetune-some-model"  # the default
        [row] = [e for e in written["embeddings_data"] if e["name"] == name]
        assert row.get("attribute_id") == want, row
        assert {t["embedding_id"] for t in written["embedding_tensors_data"]} == {row["id"]}
