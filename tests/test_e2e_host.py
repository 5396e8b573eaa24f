"""The client and sync against the product's own host (kern_finetune.host) over HTTP on 127.0.0.1.

Faults are injected on the client side through the swappable transport (a requests.Session that
fails some calls), since the real host does not fake failures.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from kern_finetune.client import RefineryClient
from kern_finetune.config import RunConfig
from kern_finetune.errors import AuthError, HostUnavailableError, ProjectNotFoundError, PushError
from kern_finetune.export import load_export
from kern_finetune.pipeline import RunResult
from kern_finetune.sync import sync_project

host_mod = pytest.importorskip("kern_finetune.host")

ROOT = Path(__file__).resolve().parents[1]
SNAPSHOT = ROOT / "tests" / "data" / "ag_news_snapshot_small.zip"
SAMPLE = ROOT / "samples" / "ag_news" / "export.json.gz"
USER, PASSWORD = "e2e@example.com", "e2e-Pa55-c0ffee"
NAME = "headline-classification-kern-finetune-all-MiniLM-L6-v2"


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Any]:
    with host_mod.serve_in_thread(SNAPSHOT, data_dir=tmp_path / "host", user_name=USER, password=PASSWORD) as running:
        yield running


def _client(host: Any, **kw: Any) -> RefineryClient:
    opts: dict[str, Any] = {"timeout": 10, "retries": 2, "backoff": 0.01, "project_id": host.project_id}
    opts.update(kw)
    return RefineryClient(host.url, USER, PASSWORD, **opts)


class FlakySession(requests.Session):
    """Drops the connection on chosen calls: ``plan[(method, path suffix)] = number of failures``."""

    def __init__(self, plan: dict[tuple[str, str], int], exc: type[Exception] = requests.exceptions.ConnectionError) -> None:
        super().__init__()
        self.plan = dict(plan)
        self.exc = exc
        self.seen: list[tuple[str, str]] = []

    def request(self, method: str, url: str, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        self.seen.append((method, url))
        for (m, suffix), left in self.plan.items():
            if left and m == method and url.split("?")[0].endswith(suffix):
                self.plan[(m, suffix)] = left - 1
                raise self.exc("('Connection aborted.', RemoteDisconnected('Remote end closed connection'))")
        return super().request(method, url, *args, **kwargs)


def _unit(n: int, d: int = 16, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, d))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_login_project_export(host: Any) -> None:
    c = _client(host)
    details = c.get_project()
    assert {a["name"] for a in details["attributes"]} >= {"running_id", "headline"}
    records = c.get_export()
    assert records == load_export(SNAPSHOT)
    assert len(c.get_export(num_samples=7)) == 7


def test_wrong_password_and_unknown_project(host: Any) -> None:
    with pytest.raises(AuthError):
        RefineryClient(host.url, USER, "nope", timeout=5, retries=0).login()
    with pytest.raises(ProjectNotFoundError):
        _client(host).get_project("00000000-0000-0000-0000-000000000000")


def test_push_retries_dropped_chunks_and_serves(host: Any) -> None:
    records = load_export(SNAPSHOT)
    ids = [r["running_id"] for r in records]
    session = FlakySession({("PUT", "/tensors"): 2, ("POST", "/finalize"): 1})
    c = _client(host, session=session)
    res = c.push_embedding(None, NAME, ids, _unit(len(ids)) * 3, attribute="headline", model="all-MiniLM-L6-v2", chunk_size=64)
    assert res.chunks == 4
    served = {e["name"]: e for e in c.list_embeddings()}
    assert served[NAME]["id"] == res.embedding_id
    hits = c.similarity(NAME, ids[0], limit=100)
    assert len(hits) == 100 and ids[0] not in hits
    want = _unit(len(ids))
    expected = [ids[j] for j in np.argsort(np.linalg.norm(want - want[0], axis=1))[1:101]]
    assert hits[:20] == expected[:20]  # the host ranks what we pushed, normalised


def test_compact_b64_tensors(host: Any) -> None:
    ids = [r["running_id"] for r in load_export(SNAPSHOT)]
    c = _client(host)
    v = _unit(len(ids), seed=5)
    res = c.push_embedding(None, NAME, ids, v, attribute="headline", model="m", tensor_format="b64")
    assert res.count == 200
    expected = [ids[j] for j in np.argsort(np.linalg.norm(v - v[7], axis=1))[1:11]]
    assert c.similarity(NAME, ids[7], limit=10) == expected


def test_failed_push_leaves_old_embedding_served(host: Any) -> None:
    records = load_export(SNAPSHOT)
    ids = [r["running_id"] for r in records]
    c = _client(host)
    old = c.push_embedding(None, NAME, ids, _unit(len(ids), seed=1), attribute="headline", model="m")
    before = c.similarity(NAME, ids[3])
    flaky = _client(host, session=FlakySession({("PUT", "/tensors"): 99}), retries=1)
    with pytest.raises(HostUnavailableError):
        flaky.push_embedding(None, NAME, ids, _unit(len(ids), seed=2), attribute="headline", model="m", chunk_size=50)
    with pytest.raises(PushError, match="EMBEDDING_INCOMPLETE"):
        c.push_embedding(None, NAME, ids[:-5], _unit(len(ids) - 5, seed=3), attribute="headline", model="m")
    served = c.list_embeddings()
    assert [e["id"] for e in served] == [old.embedding_id]
    assert c.similarity(NAME, ids[3]) == before
    staged = c._request("GET", f"/api/project/{host.project_id}/embeddings", params={"include_staged": "true"}).json()
    assert [e["id"] for e in staged] == [old.embedding_id]  # nothing half-written left behind


def test_sync_against_real_host_with_small_pipeline(host: Any, tmp_path: Path) -> None:
    calls: list[int] = []

    def tiny(records: list[dict[str, Any]], config: RunConfig, *, out_dir: Path, progress: Any = None) -> RunResult:
        calls.append(len(records))
        ids = [r["running_id"] for r in records]
        return RunResult(ids=ids, vectors=_unit(len(ids)).astype(np.float32), metrics={}, out_dir=out_dir,
                         model_dir=out_dir / "model", embedding_name=NAME)

    config = RunConfig(task="topic", threshold=0.3, cache_dir=tmp_path / "cache")
    c = _client(host)
    first = sync_project(c, None, config, out_dir=tmp_path / "out", pipeline=tiny, progress=None)
    assert first.status == "pushed" and first.push is not None and first.push.count == 200
    again = sync_project(c, None, config, out_dir=tmp_path / "out", pipeline=tiny, progress=None)
    assert again.status == "up-to-date" and calls == [200]


@pytest.mark.slow
def test_demo_json_on_a_small_sample(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """The real pipeline end to end through ``kern-finetune demo --json`` on 240 sample records."""
    import torch

    from kern_finetune import cli

    torch.set_num_threads(1)
    monkeypatch.setenv("KERN_FINETUNE_CACHE", str(tmp_path / "cache"))
    rc = cli.main(["demo", "--json", "--sample", "240", "--queries", "10", "--epochs", "3",
                   "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache")])
    assert rc == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("top_1k_raw", "top_1k_finetuned", "search_same_class_raw", "search_same_class_finetuned", "embedding"):
        assert line[key] is not None, key
    assert line["embedding"] == "Title-classification-kern-finetune-all-MiniLM-L6-v2"
    assert 0 <= line["search_same_class_raw"] <= 100 and 0 <= line["search_same_class_finetuned"] <= 100
