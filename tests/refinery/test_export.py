"""Reading record exports as refinery writes them: extraction tasks, joined manual labels, unreadable files.

The record export of the real AG News project is rebuilt from its snapshot the way refinery's export SQL
builds one (``tests/gateway_export.py``), extraction columns with JSON-array values included.
"""

from __future__ import annotations

import gzip
import json
import logging
import zipfile
from pathlib import Path

import pytest
from conftest import shared_file
from gateway_export import record_export
from gateway_import import zip_to_json

from kern_finetune.errors import ExportError, TaskNotFoundError
from kern_finetune.refinery.columns import EXTRACTION
from kern_finetune.refinery.export import discover_tasks, load_export, parse_export_payload, resolve_task
from kern_finetune.refinery.reader import MAX_INPUT_ENV, max_input_bytes
from kern_finetune.labels.select import select_labels, split_manual_labels, task_labels
from kern_finetune.refinery.snapshot import read_snapshot

FIXTURE = Path(__file__).parents[1] / "data" / "ag_news_snapshot_small.zip"


def _as_served(records: list[dict]) -> list[dict]:
    """What the client receives: the proxy's JSON string holding ``df.to_json(orient="records")``."""
    return parse_export_payload(json.dumps(json.dumps(records)).encode())


# --- extraction tasks -----------------------------------------------------------------------------------

def _check_real_shape(data: dict, caplog: pytest.LogCaptureFixture) -> list[dict]:
    records = _as_served(record_export(data))
    ex = records[0]["headline__indicators__MANUAL"]
    assert isinstance(ex, list) and set(ex) <= {"OUTSIDE"} | {f"{p}-{n}" for p in "BI" for n in ("business", "sci_tech", "sports", "world")}
    tasks = {t.label: t for t in discover_tasks(records)}
    assert set(tasks) == {"topic", "headline.indicators"}
    assert tasks["headline.indicators"].kind == EXTRACTION and tasks["topic"].kind == "classification"
    with caplog.at_level(logging.INFO, logger="kern_finetune.refinery.export"):
        task = resolve_task(records, None)
    assert task.label == "topic"
    assert "ignored the information-extraction task(s) headline.indicators" in caplog.text
    with pytest.raises(TaskNotFoundError, match="'indicators' is an information-extraction task"):
        resolve_task(records, "indicators")
    with pytest.raises(TaskNotFoundError, match="'headline.indicators' is an information-extraction task"):
        resolve_task(records, "headline.indicators")
    return records


def test_real_record_export_with_an_extraction_task(caplog: pytest.LogCaptureFixture) -> None:
    data = zip_to_json(shared_file("data/refinery_snapshots/ag_news.zip"))
    records = _check_real_shape(data, caplog)
    assert len(records) == 3000
    assert sum(any(v != "OUTSIDE" for v in r["headline__indicators__MANUAL"]) for r in records) > 0
    # the classification columns equal those read from the snapshot itself (which drops the extraction task)
    snap = {r["running_id"]: r for r in read_snapshot(shared_file("data/refinery_snapshots/ag_news.zip")).records}
    for rec in records:
        want = snap[rec["running_id"]]
        assert {k: v for k, v in rec.items() if "indicators" not in k} == want
    sel = select_labels(records, resolve_task(records, None), text_attributes=["headline"])
    assert sum(1 for s in sel.source if s == "manual") == 123


def test_fixture_record_export_with_an_extraction_task(caplog: pytest.LogCaptureFixture) -> None:
    records = _check_real_shape(zip_to_json(FIXTURE), caplog)
    assert len(records) == 200
    assert list(records[0])[:2] == ["running_id", "headline"]
    assert [r["running_id"] for r in records] == sorted(r["running_id"] for r in records)  # ORDER BY 1, as text


def test_only_extraction_tasks_and_extraction_as_text() -> None:
    rec = {"running_id": "0", "t": "x", "t__spans__MANUAL": '["OUTSIDE", "B-a"]', "t__spans__WEAK_SUPERVISION": None}
    assert discover_tasks([rec])[0].kind == EXTRACTION
    with pytest.raises(TaskNotFoundError, match="only information-extraction tasks"):
        resolve_task([rec], None)
    plain = {"running_id": "0", "t": "x", "__Topic__MANUAL": "[not json]"}
    assert discover_tasks([plain])[0].kind == "classification"


# --- manual labels joined with ", " ---------------------------------------------------------------------

def _rec(i: int, manual: str | None = None, weak: str | None = None) -> dict:
    return {"running_id": str(i), "T": f"text {i}", "__Topic__MANUAL": manual, "__Topic__WEAK_SUPERVISION": weak,
            "__Topic__WEAK_SUPERVISION__confidence": "0.9" if weak else None}


def test_labels_containing_the_join_separator_survive() -> None:
    records = [_rec(i, weak=["Sci, Tech", "World"][i % 2]) for i in range(20)] + [
        _rec(100, manual="Sci, Tech"),  # one label
        _rec(101, manual="World, Sci, Tech"),  # two labelers disagree
        _rec(102, manual="Sci, Tech, Sci, Tech"),  # two labelers agree
        _rec(103, manual="Arts, Culture"),  # a label no record carries in parts
        _rec(104, manual="Arts, Culture"),
        _rec(105, manual="World, Mars"),  # an unknown part: still two labels
    ]
    task = resolve_task(records, "Topic")
    assert task_labels(records, task) == {"Sci, Tech", "World", "Arts, Culture"}
    sel = select_labels(records, task, text_attributes=["T"])
    by_id = dict(zip(sel.ids, range(len(sel.ids))))
    assert sel.classes == ["Arts, Culture", "Sci, Tech", "World"]
    assert sel.classes[sel.y[by_id["100"]]] == "Sci, Tech"
    assert sel.classes[sel.y[by_id["102"]]] == "Sci, Tech"
    assert sel.classes[sel.y[by_id["103"]]] == "Arts, Culture"
    assert sel.y[by_id["101"]] == -1 and sel.y[by_id["105"]] == -1
    assert sel.skipped["manual_conflict"] == 2
    # with the task's labels given
    assert split_manual_labels("World, Sci, Tech", {"World", "Sci, Tech"}) == ["World", "Sci, Tech"]
    assert split_manual_labels("A, B", {"A, B", "A", "B"}) == ["A, B"]
    assert split_manual_labels("A, Z", {"A"}) == ["A", "Z"]
    sel2 = select_labels(records, task, text_attributes=["T"], known_labels=["Sci, Tech", "World", "Arts, Culture"])
    assert sel2.skipped["manual_conflict"] == 2 and sel2.classes[sel2.y[by_id["100"]]] == "Sci, Tech"


# --- one reader: every unreadable file is one ExportError line --------------------------------------------

def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text and text
    return text


def test_invalid_utf8(tmp_path: Path) -> None:
    p = tmp_path / "e.json"
    p.write_bytes(b'[{"running_id": "0", "t": "caf\xe9"}]')
    with pytest.raises(ExportError, match="not valid UTF-8") as exc:
        load_export(p)
    _one_line(exc)


def test_lone_surrogate_becomes_a_replacement_character(tmp_path: Path) -> None:
    import hashlib

    p = tmp_path / "e.json"
    p.write_text('[{"running_id": "0", "t": "a\\ud800b", "\\udfffkey": "ok", "pair": "\\ud83d\\ude00"}]')
    rec = load_export(p)[0]
    assert rec["t"] == "a\ufffdb" and rec["\ufffdkey"] == "ok" and rec["pair"] == "\U0001f600"
    hashlib.sha1(rec["t"].encode("utf-8"))  # the cache key (encode.py) that crashed before
    assert parse_export_payload(json.dumps(json.dumps([{"x": "\ud800"}])))[0]["x"] == "\ufffd"


def test_deep_nesting(tmp_path: Path) -> None:
    p = tmp_path / "e.json"
    p.write_text("[" * 200_000 + "]" * 200_000)
    with pytest.raises(ExportError, match="nests JSON deeper") as exc:
        load_export(p)
    _one_line(exc)


def test_encrypted_zip(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "enc.zip", "w") as zf:
        zf.writestr("project_export.json", "{}")
    raw = bytearray((tmp_path / "enc.zip").read_bytes())
    # set the "encrypted" flag bit in the local header and the central directory, as an encrypting zip tool does
    raw[6] |= 0x1
    cd = raw.rfind(b"PK\x01\x02")
    raw[cd + 8] |= 0x1
    (tmp_path / "enc.zip").write_bytes(bytes(raw))
    with pytest.raises(ExportError, match="password-protected") as exc:
        load_export(tmp_path / "enc.zip")
    _one_line(exc)


def test_zip_compression_method_9(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "d64.zip", "w") as zf:
        zf.writestr("project_export.json", "{}")
    raw = bytearray((tmp_path / "d64.zip").read_bytes())
    raw[8] = 9  # method field of the local header
    cd = raw.rfind(b"PK\x01\x02")
    raw[cd + 10] = 9  # and of the central directory
    (tmp_path / "d64.zip").write_bytes(bytes(raw))
    with pytest.raises(ExportError, match="compression method 9 \\(Deflate64\\)") as exc:
        load_export(tmp_path / "d64.zip")
    _one_line(exc)


def test_double_encoded_snapshot(tmp_path: Path) -> None:
    data = zip_to_json(FIXTURE)
    with zipfile.ZipFile(tmp_path / "dbl.zip", "w") as zf:
        zf.writestr("project_export.json", json.dumps(json.dumps(data)))
    assert len(read_snapshot(tmp_path / "dbl.zip").records) == 200
    with zipfile.ZipFile(tmp_path / "bad.zip", "w") as zf:
        zf.writestr("project_export.json", json.dumps("{broken"))
    with pytest.raises(ExportError, match="double-encoded.*not valid JSON") as exc:
        read_snapshot(tmp_path / "bad.zip")
    _one_line(exc)


def test_decompressed_size_cap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import tracemalloc

    big = b"[" + b" " * (40 << 20) + b"]"  # 40 MiB of JSON whitespace, a few KiB compressed
    with gzip.open(tmp_path / "bomb.json.gz", "wb") as fh:
        fh.write(big)
    with zipfile.ZipFile(tmp_path / "bomb.zip", "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("project_export.json", big)
    assert (tmp_path / "bomb.zip").stat().st_size < 200_000
    monkeypatch.setenv(MAX_INPUT_ENV, "8")
    assert max_input_bytes() == 8 << 20
    del big
    for name in ("bomb.json.gz", "bomb.zip"):
        tracemalloc.start()
        try:
            with pytest.raises(ExportError, match=f"more than 8 MiB once decompressed.*{MAX_INPUT_ENV}") as exc:
                load_export(tmp_path / name)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        _one_line(exc)
        assert peak < 20 << 20, f"{name}: {peak / 2**20:.1f} MiB allocated for a file capped at 8 MiB"
    with pytest.raises(ExportError, match="more than 0 MiB"):
        load_export(tmp_path / "bomb.zip", max_bytes=1000)
    monkeypatch.setenv(MAX_INPUT_ENV, "lots")
    with pytest.raises(ExportError, match="not a number"):
        max_input_bytes()
    monkeypatch.delenv(MAX_INPUT_ENV)
    assert max_input_bytes() == 1024 << 20


def test_other_unreadable_files(tmp_path: Path) -> None:
    (tmp_path / "trunc.json.gz").write_bytes(gzip.compress(b'[{"a": "b"}]')[:-6])
    (tmp_path / "notgz.json.gz").write_bytes(b"plain")
    (tmp_path / "null.json").write_text("null")
    (tmp_path / "dir.json").mkdir()
    # gzip is told by its magic bytes (issue 30 item 17): a plain file named .gz is read as what it is
    for name, pattern in [("trunc.json.gz", "cannot read"), ("notgz.json.gz", "not valid JSON"),
                          ("null.json", "list of records, got null"), ("dir.json", "is a folder"),
                          ("missing.json", "not found")]:
        with pytest.raises(ExportError, match=pattern) as exc:
            load_export(tmp_path / name)
        _one_line(exc)
