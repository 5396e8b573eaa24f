"""Property-based tests over what a user or a stranger can hand to the readers.

Property: loading an export or snapshot, resolving its task and selecting labels returns a result or
raises a :class:`KernFinetuneError`, never another exception. Seeds and example counts are fixed
(``derandomize=True``), so CI runs the same cases every time.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from kern_finetune.errors import KernFinetuneError
from kern_finetune.refinery.export import parse_export_payload, resolve_task
from kern_finetune.labels.select import default_text_attributes, select_labels
from kern_finetune.refinery.snapshot import read_snapshot, write_snapshot

FIXTURE = Path(__file__).parent / "data" / "ag_news_snapshot_small.zip"
FUZZ = settings(derandomize=True, deadline=None, database=None, suppress_health_check=list(HealthCheck))

_text = st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=12)  # includes lone surrogates
_scalar = st.one_of(st.none(), _text, st.integers(-3, 10**20), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
                    st.sampled_from(["A", "B", "A, B", "0.9", "1.5", "-1", "", "OUTSIDE", "nan"]))
_json = st.recursive(_scalar, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                      st.dictionaries(_text, inner, max_size=3)), max_leaves=8)
_COLUMNS = ["running_id", "T", "Gold", "__Topic__MANUAL", "__Topic__WEAK_SUPERVISION",
            "__Topic__WEAK_SUPERVISION__confidence", "T__Spans__MANUAL", "T__Spans__WEAK_SUPERVISION", "__x", "x__"]
_record = st.dictionaries(st.one_of(st.sampled_from(_COLUMNS), _text), _json, max_size=8)


def _pipeline_front(records: list[dict[str, Any]], task: str | None, gold: str | None) -> None:
    """Resolve the task and select labels, as ``run``/``sync`` do before encoding."""
    t = resolve_task(records, task)
    attrs = default_text_attributes(records, id_attribute="running_id", gold_attribute=gold) or ["T"]
    sel = select_labels(records, t, text_attributes=attrs, gold_attribute=gold, known_labels=None)
    assert len(sel.ids) == len(records) and len(sel.y) == len(records)
    for text in sel.texts:
        text.encode("utf-8")  # what the cache key and the tokenizer need


def _expect_result_or_our_error(fn: Any, *args: Any) -> None:
    try:
        fn(*args)
    except KernFinetuneError as exc:
        assert str(exc) and "\n" not in str(exc)


@seed(20261129)
@settings(FUZZ, max_examples=100)
@given(records=st.lists(_record, max_size=12), task=st.sampled_from([None, "Topic", "Spans", "T.Spans"]),
       gold=st.sampled_from([None, "Gold"]), wrap=st.integers(0, 2))
def test_fuzz_export_records(records: list[dict[str, Any]], task: str | None, gold: str | None, wrap: int) -> None:
    body: Any = json.dumps(records)
    for _ in range(wrap):  # the host sends the list as a JSON string; try it raw, once and twice encoded
        body = json.dumps(body)

    def go() -> None:
        _pipeline_front(parse_export_payload(body.encode("utf-8", "surrogatepass")), task, gold)

    _expect_result_or_our_error(go)


@seed(20261129)
@settings(FUZZ, max_examples=100)
@given(raw=st.one_of(st.binary(max_size=64), st.sampled_from([b"[" * 5000, b'"\\ud800"', b"\xef\xbb\xbf[{}]", b'[{"a": 1e999}]'])))
def test_fuzz_export_bytes(raw: bytes) -> None:
    _expect_result_or_our_error(lambda: _pipeline_front(parse_export_payload(raw), None, None))


def _tables() -> dict[str, Any]:
    return {
        "project_details_data": {"name": "fuzz"},
        "attributes_data": [{"id": "a1", "name": "running_id", "data_type": "INTEGER", "relative_position": 1},
                            {"id": "a2", "name": "T", "data_type": "TEXT", "relative_position": 2}],
        "labeling_tasks_data": [{"id": "t1", "attribute_id": "None", "name": "Topic", "task_target": "ON_WHOLE_RECORD",
                                 "task_type": "MULTICLASS_CLASSIFICATION"}],
        "labeling_task_labels_data": [{"id": "lA", "labeling_task_id": "t1", "name": "A"},
                                      {"id": "lB", "labeling_task_id": "t1", "name": "B"}],
        "records_data": [{"id": f"r{i}", "data": {"running_id": i, "T": f"text {i}"}, "category": "SCALE"} for i in range(12)],
        "record_label_associations_data": [
            {"id": f"x{i}", "record_id": f"r{i}", "labeling_task_label_id": "lA" if i % 2 else "lB",
             "source_type": "WEAK_SUPERVISION", "confidence": 0.9, "is_valid_manual_label": None} for i in range(12)
        ],
        "embeddings_data": [],
        "embedding_tensors_data": [],
    }


_TABLE_KEYS = ["attributes_data", "labeling_tasks_data", "labeling_task_labels_data", "records_data",
               "record_label_associations_data", "embeddings_data", "embedding_tensors_data", "project_details_data"]


@st.composite
def _mutated_tables(draw: st.DrawFn) -> Any:
    data = _tables()
    for _ in range(draw(st.integers(1, 4))):
        key = draw(st.sampled_from(_TABLE_KEYS))
        table = data[key]
        how = draw(st.integers(0, 3))
        if how == 0 or not isinstance(table, list) or not table:
            data[key] = draw(_json)  # the whole table replaced
        elif how == 1:
            row = draw(st.integers(0, len(table) - 1))
            table[row] = draw(_json)  # one row replaced
        else:
            row = table[draw(st.integers(0, len(table) - 1))]
            if isinstance(row, dict) and row:
                field = draw(st.sampled_from(sorted(row)))
                row[field] = draw(_json)  # one field replaced
    return data if draw(st.integers(0, 9)) else draw(_json)


@seed(20261129)
@settings(FUZZ, max_examples=120)
@given(tables=_mutated_tables(), double=st.booleans(), task=st.sampled_from([None, "Topic"]))
def test_fuzz_snapshot_tables(tmp_path_factory: Any, tables: Any, double: bool, task: str | None) -> None:
    text = json.dumps(tables)
    if double:
        text = json.dumps(text)
    path = tmp_path_factory.mktemp("fz") / "s.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("project_export.json", text.encode("utf-8", "surrogatepass"))

    def go() -> None:
        snap = read_snapshot(path)
        _pipeline_front(snap.records, task, None)
        ids = [r.get("running_id") for r in snap.records]
        write_snapshot(path, path.with_name("out.zip"), ids=ids, vectors=np.ones((len(ids), 3)), model="m")

    _expect_result_or_our_error(go)


@seed(20261129)
@settings(FUZZ, max_examples=100)
@given(edits=st.lists(st.tuples(st.integers(0, 10**9), st.integers(0, 255)), min_size=1, max_size=6),
       cut=st.one_of(st.none(), st.integers(0, 10**9)))
def test_fuzz_snapshot_zip_bytes(tmp_path_factory: Any, edits: list[tuple[int, int]], cut: int | None) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("project_export.json", json.dumps(_tables()))
    raw = bytearray(buf.getvalue())
    for pos, value in edits:
        raw[pos % len(raw)] = value
    if cut is not None:
        raw = raw[: cut % len(raw)]
    path = tmp_path_factory.mktemp("zb") / "s.zip"
    path.write_bytes(bytes(raw))
    _expect_result_or_our_error(lambda: _pipeline_front(read_snapshot(path).records, None, None))
