"""The client, sync and demo against the product's own host (kern_finetune.host) over HTTP on 127.0.0.1.

Faults are injected on the client side through the swappable transport (tests/faults.py), since the
real host does not fake failures.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from faults import FaultAdapter
from kern_finetune import host as host_mod
from kern_finetune.refinery.api import RefineryClient
from kern_finetune.config import RunConfig
from kern_finetune.errors import AuthError, HostUnavailableError, ProjectNotFoundError, PushError
from kern_finetune.refinery.export import load_export
from kern_finetune.pipeline import RunResult
from kern_finetune.sync import sync_project

ROOT = Path(__file__).resolve().parents[2]
SNAPSHOT = ROOT / "tests" / "data" / "ag_news_snapshot_small.zip"
SAMPLE = ROOT / "samples" / "ag_news" / "export.json.gz"
USER, PASSWORD = "e2e@example.com", "e2e-Pa55-c0ffee"
NAME = "headline-classification-kern-finetune-all-MiniLM-L6-v2"
MARGIN_PRECISION = 3.0  # points of "share same class" among the host's search results (measured +4.9)
MARGIN_TOP_100 = 2.0  # points of top_100 on the 1,000-record subset (measured +3.0)


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Any]:
    with host_mod.serve_in_thread(SNAPSHOT, data_dir=tmp_path / "host", user_name=USER, password=PASSWORD) as running:
        yield running


def _client(host: Any, **kw: Any) -> RefineryClient:
    opts: dict[str, Any] = {"timeout": 10, "retries": 2, "backoff": 0.01, "project_id": host.project_id}
    opts.update(kw)
    return RefineryClient(host.url, USER, PASSWORD, **opts)


def _flaky(plan: dict[tuple[str, str], int]) -> tuple[requests.Session, FaultAdapter]:
    """A session that drops the connection ``n`` times on ``(method, path suffix)``."""
    adapter = FaultAdapter()
    for (method, suffix), n in plan.items():
        adapter.fail(method, rf"{suffix}$", "drop", times=n)
    session = requests.Session()
    session.mount("http://", adapter)
    return session, adapter


def _unit(n: int, d: int = 16, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, d))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_login_project_export(host: Any) -> None:
    c = _client(host)
    details = c.get_project()
    assert {a["name"] for a in details["attributes"]} >= {"running_id", "headline"}
    records = c.get_export()
    # every column the snapshot reader derives, record by record; the host may serve more columns
    # (extraction tasks, as the real export does) and the gateway's record order
    by_id = {r["running_id"]: r for r in records}
    local = load_export(SNAPSHOT)
    assert len(records) == len(by_id) == len(local)
    for rec in local:
        assert {k: by_id[rec["running_id"]].get(k) for k in rec} == rec
    assert len(c.get_export(num_samples=7)) == 7


def test_wrong_password_and_unknown_project(host: Any) -> None:
    with pytest.raises(AuthError):
        RefineryClient(host.url, USER, "nope", timeout=5, retries=0).login()
    with pytest.raises(ProjectNotFoundError):
        _client(host).get_project("00000000-0000-0000-0000-000000000000")


def test_push_retries_dropped_chunks_and_serves(host: Any) -> None:
    records = load_export(SNAPSHOT)
    ids = [r["running_id"] for r in records]
    session, adapter = _flaky({("PUT", "/tensors"): 2, ("POST", "/finalize"): 1})
    c = _client(host, session=session)
    res = c.push_embedding(None, NAME, ids, _unit(len(ids)) * 3, attribute="headline", model="all-MiniLM-L6-v2", chunk_size=64)
    assert res.chunks == 4 and [r.hits for r in adapter.rules] == [2, 1]
    served = {e["name"]: e for e in c.list_embeddings()}
    assert served[NAME]["id"] == res.embedding_id
    found = c.search_similar(NAME, ids[0])
    assert 1 <= len(found.record_ids) <= 100
    want = _unit(len(ids))
    expected = [ids[j] for j in np.argsort(np.linalg.norm(want - want[0], axis=1))[1:101]]
    # the host ranks what we pushed, normalised. Today's host leaves the query out and applies no
    # threshold; refinery's data browser (and the host being rewritten) puts the query first.
    assert found.neighbours[:20] == expected[: min(20, len(found.neighbours))]


def test_compact_b64_tensors(host: Any) -> None:
    ids = [r["running_id"] for r in load_export(SNAPSHOT)]
    c = _client(host)
    v = _unit(len(ids), seed=5)
    res = c.push_embedding(None, NAME, ids, v, attribute="headline", model="m", tensor_format="b64")
    assert res.count == 200
    expected = [ids[j] for j in np.argsort(np.linalg.norm(v - v[7], axis=1))[1:11]]
    found = c.search_similar(NAME, ids[7], limit=10)
    assert 1 <= len(found.record_ids) <= 10 and found.neighbours == expected[: len(found.neighbours)]


def test_failed_push_leaves_old_embedding_served(host: Any) -> None:
    records = load_export(SNAPSHOT)
    ids = [r["running_id"] for r in records]
    c = _client(host)
    old = c.push_embedding(None, NAME, ids, _unit(len(ids), seed=1), attribute="headline", model="m")
    before = c.similarity(NAME, ids[3])
    flaky = _client(host, session=_flaky({("PUT", "/tensors"): 99})[0], retries=1)
    with pytest.raises(HostUnavailableError):
        flaky.push_embedding(None, NAME, ids, _unit(len(ids), seed=2), attribute="headline", model="m", chunk_size=50)
    with pytest.raises(PushError, match="EMBEDDING_INCOMPLETE"):
        c.push_embedding(None, NAME, ids[:-5], _unit(len(ids) - 5, seed=3), attribute="headline", model="m")
    served = [e for e in c.list_embeddings() if e["name"] == NAME]  # the snapshot may bring its own
    assert [e["id"] for e in served] == [old.embedding_id]
    assert c.similarity(NAME, ids[3]) == before
    staged = c.request("GET", f"/api/project/{host.project_id}/embeddings", params={"include_staged": "true"}).json()
    assert [e["id"] for e in staged if e["name"] == NAME] == [old.embedding_id]  # nothing half-written left behind


def test_sync_against_real_host_with_small_pipeline(host: Any, tmp_path: Path) -> None:
    calls: list[int] = []

    def tiny(records: list[dict[str, Any]], config: RunConfig, *, out_dir: Path, progress: Any = None,
             prepared: Any = None) -> RunResult:
        calls.append(len(records))
        ids = [r["running_id"] for r in records]
        return RunResult(ids=ids, vectors=_unit(len(ids)).astype(np.float32), metrics={}, out_dir=out_dir,
                         model_dir=out_dir / "model", embedding_name=NAME, label_fingerprint=prepared.fingerprint,
                         base_model="all-MiniLM-L6-v2")

    config = RunConfig(mode="head", task="topic", threshold=0.3, cache_dir=tmp_path / "cache")
    c = _client(host)
    first = sync_project(c, None, config, out_dir=tmp_path / "out", pipeline=tiny, progress=None)
    assert first.status == "pushed" and first.push is not None and first.push.count == 200
    again = sync_project(c, None, config, out_dir=tmp_path / "out", pipeline=tiny, progress=None)
    assert again.status == "up-to-date" and calls == [200]


@pytest.mark.slow
def test_demo_fine_tuning_beats_raw_through_the_host_search(
    subset_records: list[dict[str, Any]], shared_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    one_torch_thread: None,
) -> None:
    """The real pipeline end to end through ``kern-finetune demo --json`` on the seeded 1,000-record
    subset: fine-tuning must make the host's own similarity search serve more same-class records.

    Measured (seed 42, 50 queries): share same class among the host's results 52.78% raw -> 57.66%
    fine-tuned against the host before its rewrite (100 nearest, query left out), 59.65% -> 64.17%
    against the rewritten host (refinery's threshold, query first; 48.4 -> 42.2 neighbours returned);
    top_100 45.29% -> 48.33%. top_1k cannot tell them apart on 1,000 records (k is capped at n - 1), so
    it is not asserted.
    """
    from kern_finetune import cli

    export = tmp_path / "subset.json"
    export.write_text(json.dumps(subset_records))
    # the demo's model-door loop has its own test below, on a slice the size the cron re-sync test uses
    rc = cli.main(["demo", "--json", "--export", str(export), "--queries", "50", "--no-model-door",
                   "--out", str(tmp_path / "out"), "--cache-dir", str(shared_cache), "--mode", "head"])
    assert rc == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    print({k: v for k, v in line.items() if k.startswith("search_")}, {k: line["top_k"][k]["100"] for k in line["top_k"]})
    assert line["embedding"] == "Title-classification-kern-finetune-all-MiniLM-L6-v2"
    assert line["raw_embedding"] == "Title-classification-huggingface-all-MiniLM-L6-v2"
    assert line["search_queries"] == 50 and line["n_records"] == 1000
    for kind in ("raw", "finetuned"):
        assert 0 < line[f"search_results_{kind}"] <= 100
    # the direction, by a margin, through the host's own search and at a k the subset tells apart
    assert line["search_precision_finetuned"] >= line["search_precision_raw"] + MARGIN_PRECISION
    top = line["top_k"]
    assert top["finetuned"]["100"] >= top["raw"]["100"] + MARGIN_TOP_100


def test_demo_model_door_loop_creates_v2_before_deleting_v1(
    subset_records: list[dict[str, Any]], shared_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The demo's model-door loop (``demo._model_door_loop``), as ``kern-finetune demo`` runs it after its search
    comparison, on a 120-record slice: a cron sync creates v1 from the folder in the embedder's volume, the demo
    adds manual labels through the host's label route, the next sync creates v2, and v1 is gone."""
    from kern_finetune.commands import demo

    monkeypatch.setattr(demo, "MODEL_DOOR_RECORDS", 120)
    monkeypatch.setattr(demo, "MODEL_DOOR_NEW_LABELS", 15)
    export = tmp_path / "subset.json"
    export.write_text(json.dumps(subset_records))
    config = RunConfig(mode="head", epochs=3, task="Topic", gold_attribute="Class Index", cache_dir=shared_cache)
    work = tmp_path / "work"
    work.mkdir()
    said: list[str] = []
    first, second, volume = demo._model_door_loop(export, config, work, said.append)
    v1, v2 = ("Title-classification-huggingface-/models/kern-finetune-Title-v%d" % v for v in (1, 2))
    assert first == f"model door, first sync: created {v1!r}"
    assert second.startswith(f"model door, after 15 new labels: created {v2!r}")
    assert volume == (f"model folders in the embedder's volume: kern-finetune-Title-v1, kern-finetune-Title-v2; "
                      f"embeddings in the host: {v2} FINISHED")
    assert any("labelers add 15 manual labels" in line for line in said)
