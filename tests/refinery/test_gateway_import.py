"""What we write through the snapshot door, replayed through refinery-gateway v1.17.0's import rules.

The replay (``tests/gateway_import.py``) is a transcription of ``project_transfer_manager.py``; the first
tests show that it fails where the real import fails, so that its passing on our files means something.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import shared_file
from gateway_import import replay_import, replay_import_file, zip_to_json

from kern_finetune.errors import ConfigError, ExportError
from kern_finetune.refinery.columns import PLATFORM, embedding_name
from kern_finetune.refinery.snapshot import read_snapshot, write_snapshot

FIXTURE = Path(__file__).parents[1] / "data" / "ag_news_snapshot_small.zip"
MODEL = "/models/all-MiniLM-L6-v2/"
OURS = "headline-classification-kern-finetune-all-MiniLM-L6-v2"


def _vectors(path: Path, dim: int = 8) -> tuple[list[str], np.ndarray]:
    snap = read_snapshot(path)
    ids = [r["running_id"] for r in snap.records]
    return ids, np.random.default_rng(1).normal(size=(len(ids), dim))


def _rezip(path: Path, data: dict[str, Any], member: str = "project_export.json") -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(member, json.dumps(data))
    return path


def _renamed(tmp_path: Path, new: str = "head-line") -> Path:
    """The fixture with its text attribute renamed to ``new`` everywhere a snapshot names it."""
    data = zip_to_json(FIXTURE)
    for a in data["attributes_data"]:
        if a["name"] == "headline":
            a["name"] = new
    for r in data["records_data"]:
        r["data"][new] = r["data"].pop("headline")
    for e in data["embeddings_data"]:
        e["name"] = e["name"].replace("headline-", f"{new}-", 1)
    return _rezip(tmp_path / "renamed.zip", data)


def test_embedding_name_is_refineries_format() -> None:
    assert PLATFORM == "kern-finetune"
    assert embedding_name("headline", model=MODEL) == OURS
    assert embedding_name("head-line", model="org/m", platform="p") == "head-line-classification-p-m"
    with pytest.raises(ExportError):
        embedding_name("", model="m")


# --- the replay fails where the gateway fails ------------------------------------------------------------

def test_replay_renames_an_entry_without_platform_and_fails_on_bad_names() -> None:
    base = zip_to_json(FIXTURE)

    def with_embedding(entry: dict[str, Any]) -> dict[str, Any]:
        data = json.loads(json.dumps(base))
        data["embeddings_data"].append(entry)
        data["embedding_tensors_data"] = []
        return data

    # what write_snapshot wrote before: name, custom, type only -> renamed on import (issue 14)
    got = replay_import(with_embedding({"id": "x", "name": OURS, "custom": True, "type": "ON_ATTRIBUTE"}))
    assert got.embedding_name_mapping[OURS] == "headline-classification-huggingface-kern-finetune-all-MiniLM-L6-v2"
    with pytest.raises(IndexError):
        replay_import(with_embedding({"id": "x", "name": "nodash", "custom": True, "type": "ON_ATTRIBUTE"}))
    with pytest.raises(AttributeError):
        replay_import(with_embedding({"id": "x", "name": "a-b-c", "custom": True, "type": "ON_ATTRIBUTE"}))


def test_replay_fails_on_an_older_source_whose_attribute_contains_a_dash(tmp_path: Path) -> None:
    with pytest.raises(KeyError):
        replay_import_file(_renamed(tmp_path))


def test_replay_upload_loop_goes_on_past_an_embedding_without_tensors() -> None:
    """The embedder posts to neural-search without checking the answer (``util/request_util.py``): the empty
    embedding stays FINISHED without a collection, and the embeddings after it still upload."""
    data = zip_to_json(FIXTURE)
    data["embeddings_data"].insert(0, {"id": "empty", "name": "headline-classification-huggingface-x",
                                       "attribute_id": data["attributes_data"][0]["id"], "platform": "huggingface",
                                       "model": "x", "custom": False, "type": "ON_ATTRIBUTE"})
    got = replay_import(data)
    assert got.post_processing == "upload_tensors"
    assert got.upload_error and got.upload_error.startswith("headline-classification-huggingface-x")
    assert [e.uploaded for e in got.embeddings] == [False] + [True] * (len(got.embeddings) - 1)


# --- what we write passes ----------------------------------------------------------------------------------

def _check_ours(path: Path, *, attribute: str, n: int, dim: int, name: str = OURS) -> None:
    got = replay_import_file(path)
    assert got.post_processing == "upload_tensors" and got.upload_error is None
    ours = got.by_name(name)  # the name is unchanged
    assert name not in got.embedding_name_mapping
    assert ours.attribute_name == attribute  # attribute_id mapped to the new id of that attribute
    assert ours.custom is True and ours.type == "ON_ATTRIBUTE" and ours.platform == PLATFORM
    assert ours.model == "all-MiniLM-L6-v2"
    assert len(ours.tensors) == n and {len(t[1]) for t in ours.tensors} == {dim}
    assert {t[2] for t in ours.tensors} == {None}  # sub_key: only embedding lists have one
    assert all(e.uploaded for e in got.embeddings)
    assert got.embeddings[0] is ours  # uploaded first


def test_written_fixture_passes_the_import(tmp_path: Path) -> None:
    ids, vec = _vectors(FIXTURE)
    out = write_snapshot(FIXTURE, tmp_path / "out.zip", ids=ids, vectors=vec, model=MODEL)
    _check_ours(out.path, attribute="headline", n=200, dim=8)
    entry = next(e for e in out.data["embeddings_data"] if e["name"] == OURS)
    assert list(entry) == ["id", "attribute_id", "name", "custom", "type", "started_at", "finished_at",
                           "platform", "model", "filter_attributes", "additional_data"]  # as get_project_export_dump
    assert entry["finished_at"][:2] == "20" and len(entry["finished_at"]) == 26  # str(datetime) like the export
    # the stock embedding is kept, completed with what the gateway would infer, under its old name
    stock = replay_import_file(out.path).by_name("headline-classification-distilbert-base-uncased")
    assert stock.platform == "huggingface" and stock.model == "distilbert-base-uncased" and stock.attribute_name == "headline"
    assert any("completed older embedding" in n for n in out.notices)
    with zipfile.ZipFile(out.path) as zf:
        assert zf.namelist() == [read_snapshot(FIXTURE).member]  # the gateway reads namelist()[0]


def test_written_snapshot_passes_when_the_attribute_name_contains_a_dash(tmp_path: Path) -> None:
    src = _renamed(tmp_path)
    ids, vec = _vectors(src)
    out = write_snapshot(src, tmp_path / "out.zip", ids=ids, vectors=vec, model=MODEL)
    name = "head-line-classification-kern-finetune-all-MiniLM-L6-v2"
    assert out.embeddings[name]["count"] == 200
    _check_ours(out.path, attribute="head-line", n=200, dim=8, name=name)
    assert replay_import_file(out.path).by_name("head-line-classification-distilbert-base-uncased").attribute_name == "head-line"


def test_real_snapshot_passes_the_import(tmp_path: Path) -> None:
    real = shared_file("data/refinery_snapshots/ag_news.zip")
    ids, vec = _vectors(real, dim=16)
    out = write_snapshot(real, tmp_path / "out.zip", ids=ids, vectors=vec, model=MODEL)
    _check_ours(out.path, attribute="headline", n=3000, dim=16)
    assert len(out.records) == 3000 and out.records == read_snapshot(real).records


def test_tensorless_source_embeddings_are_dropped_with_a_notice(tmp_path: Path) -> None:
    data = zip_to_json(FIXTURE)
    data["embedding_tensors_data"] = []  # exported without "embedding tensors"
    src = _rezip(tmp_path / "notensors.zip", data)
    assert replay_import_file(src).post_processing == "recreate_embeddings"  # as it was: refinery recomputes
    ids, vec = _vectors(src)
    out = write_snapshot(src, tmp_path / "out.zip", ids=ids, vectors=vec, model=MODEL)
    assert list(out.embeddings) == [OURS]
    assert any("headline-classification-distilbert-base-uncased" in n and "no tensors" in n for n in out.notices)
    _check_ours(out.path, attribute="headline", n=200, dim=8)


def test_attribute_and_name_options(tmp_path: Path) -> None:
    ids, vec = _vectors(FIXTURE)
    out = write_snapshot(FIXTURE, tmp_path / "a.zip", ids=ids, vectors=vec, model="m", attribute="headline",
                         platform="custom-platform", name="my-embedding")
    got = replay_import_file(out.path).by_name("my-embedding")
    assert got.platform == "custom-platform" and got.attribute_name == "headline"
    with pytest.raises(ConfigError, match="not in the snapshot"):
        write_snapshot(FIXTURE, tmp_path / "b.zip", ids=ids, vectors=vec, model="m", attribute="nope")
    with pytest.raises(ConfigError, match="INTEGER"):
        write_snapshot(FIXTURE, tmp_path / "b.zip", ids=ids, vectors=vec, model="m", attribute="running_id")
    assert not (tmp_path / "b.zip").exists()


# --- kern-finetune run --write-snapshot --------------------------------------------------------------------

def test_run_write_snapshot_end_to_end(tmp_path: Path, shared_cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from kern_finetune.cli import main

    out = tmp_path / "with_embedding.zip"
    code = main(["run", "--export", str(FIXTURE), "--task", "topic", "--out", str(tmp_path / "run"),
                 "--cache-dir", str(shared_cache), "--epochs", "3", "--mode", "head", "--spread", "0",
                 "--write-snapshot", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert f"wrote snapshot {out}: embedding {OURS!r} on attribute 'headline' (200 vectors of 384 dimensions)" in printed
    assert 'click "Import snapshot"' in printed and "recreate_embeddings" in printed
    _check_ours(out, attribute="headline", n=200, dim=384)
    from kern_finetune.output.save import load_vectors

    ids, vec = load_vectors(tmp_path / "run" / "vectors.npz")
    got_ids, got = read_snapshot(out).embedding_vectors(OURS)
    want = dict(zip(ids, vec))
    assert np.allclose(got, np.array([want[i] for i in got_ids]), atol=1e-6)


def test_run_write_snapshot_needs_a_snapshot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from kern_finetune.cli import main

    export = tmp_path / "e.json"
    export.write_text("[]")
    assert main(["run", "--export", str(export), "--write-snapshot", str(tmp_path / "o.zip")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--write-snapshot needs --export to be a refinery project snapshot (.zip)" in err
    assert not (tmp_path / "o.zip").exists()
