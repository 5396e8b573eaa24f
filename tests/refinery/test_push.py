"""The push streams its chunks: built one at a time, sent as built, a failure names its chunk.

The generator is measured with ``tracemalloc`` (deterministic: it counts allocations, not time); the
whole push runs against the product's own host on 127.0.0.1, its requests seen through ``tests/faults.py``.
"""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from faults import FaultAdapter

from kern_finetune.errors import ConfigError, PushError
from kern_finetune.host import RunningHost, serve_in_thread
from kern_finetune.refinery.api import RefineryClient
from kern_finetune.refinery.push import check_vectors, iter_chunks

USER = "labeler@example.com"
PASSWORD = "pw-push-streams-41"
NAME = "Title-classification-kern-finetune-m"
N = 1000


class RowLog:
    """An array that records which rows were read, to see when the generator reads them."""

    def __init__(self, data: np.ndarray) -> None:
        self.data = data
        self.shape = data.shape
        self.reads: list[tuple[int, int]] = []

    def __getitem__(self, key: slice) -> np.ndarray:
        start, stop, _ = key.indices(self.shape[0])
        self.reads.append((start, stop))
        return self.data[key]


def _vectors(n: int, d: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


def test_chunks_are_built_only_when_asked_for() -> None:
    rows = RowLog(_vectors(100))
    chunks = iter_chunks([str(i) for i in range(100)], rows, chunk_size=30)
    assert rows.reads == []  # a generator: nothing read before the first chunk is asked for
    first = next(chunks)
    assert rows.reads == [(0, 30)]
    assert (first.index, first.total, first.count, first.label) == (0, 4, 30, "chunk 1/4 (vectors 1-30)")
    body = json.loads(first.body)
    assert body["chunk"] == 0 and [t["record_id"] for t in body["tensors"]] == [str(i) for i in range(30)]
    assert np.allclose(np.linalg.norm(np.asarray([t["data"] for t in body["tensors"]]), axis=1), 1.0, atol=1e-6)
    rest = list(chunks)
    assert rows.reads == [(0, 30), (30, 60), (60, 90), (90, 100)]
    assert [c.count for c in rest] == [30, 30, 10] and rest[-1].label == "chunk 4/4 (vectors 91-100)"


def _peak_while_streaming(n: int, d: int, size: int) -> tuple[int, int]:
    """``(peak traced bytes, payload bytes)`` while every chunk of ``n`` vectors is built and dropped."""
    vec = _vectors(n, d)
    ids = [str(i) for i in range(n)]
    total = 0
    tracemalloc.start()
    try:
        for chunk in iter_chunks(ids, vec, chunk_size=size):
            total += len(chunk.body)
        return tracemalloc.get_traced_memory()[1], total
    finally:
        tracemalloc.stop()


def test_streaming_memory_does_not_grow_with_the_project() -> None:
    """Peak memory is that of one chunk: the same for 4,000 and 16,000 records, far below their payload."""
    small, _ = _peak_while_streaming(4_000, 32, 500)
    large, total = _peak_while_streaming(16_000, 32, 500)
    assert total > 4_000_000
    assert large < 1.25 * small, (small, large)
    assert large < total / 4, (large, total)
    vec, ids = _vectors(16_000, 32), [str(i) for i in range(16_000)]
    tracemalloc.start()
    try:
        whole = [c.body for c in iter_chunks(ids, vec, chunk_size=500)]  # what building it all at once costs
        whole_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert sum(map(len, whole)) == total and whole_peak > total


def test_vectors_are_checked_block_by_block() -> None:
    rows = RowLog(_vectors(10_000))
    ids_s, arr = check_vectors(list(range(10_000)), rows)
    assert ids_s[:2] == ["0", "1"] and arr is rows
    assert rows.reads == [(0, 4096), (4096, 8192), (8192, 10_000)]
    bad = _vectors(10_000)
    bad[9_000] = 0.0
    with pytest.raises(PushError, match="1 zero vector"):
        check_vectors(list(range(10_000)), bad)
    with pytest.raises(ConfigError, match="chunk_size"):
        next(iter_chunks(["0"], bad[:1], chunk_size=0))


@pytest.fixture
def host(tmp_path: Path) -> Iterator[RunningHost]:
    records = [{"running_id": str(i), "Title": f"headline {i}", "__Topic__MANUAL": "A" if i % 2 else "B"}
               for i in range(N)]
    export = tmp_path / "export.json"
    export.write_text(json.dumps(records))
    with serve_in_thread(export, data_dir=tmp_path / "host", user_name=USER, password=PASSWORD) as running:
        yield running


def _client(host: RunningHost, faults: FaultAdapter) -> RefineryClient:
    session = requests.Session()
    session.mount("http://", faults)
    return RefineryClient(host.url, USER, PASSWORD, timeout=60.0, retries=1, backoff=0.0,
                          project_id=host.project_id, session=session)


def _staged_and_served(c: RefineryClient) -> list[dict[str, Any]]:
    return c.request("GET", f"/api/project/{c.project_id}/embeddings", params={"include_staged": "true"}).json()


def test_push_sends_each_chunk_as_it_is_built(host: RunningHost, tmp_path: Path) -> None:
    faults = FaultAdapter()
    c = _client(host, faults)
    path = tmp_path / "vectors.f32"
    on_disk = np.memmap(path, dtype=np.float32, mode="w+", shape=(N, 8))
    on_disk[:] = _vectors(N)
    on_disk.flush()
    vec = np.memmap(path, dtype=np.float32, mode="r", shape=(N, 8))  # a lazy array is pushed as it is
    said: list[str] = []
    res = c.push_embedding(None, NAME, [str(i) for i in range(N)], vec, attribute="Title", model="m",
                           chunk_size=64, progress=said.append)
    assert (res.count, res.chunks, res.dimension) == (N, 16, 8)
    sent = [s.json() for s in faults.sent_to("PUT", "/tensors$")]
    assert [b["chunk"] for b in sent] == list(range(16))
    assert [len(b["tensors"]) for b in sent] == [64] * 15 + [N - 15 * 64]
    assert sum("push: chunk" in m for m in said) == 16 and "chunk 16/16 (1000 of 1000 vectors)" in said[-2]
    unit = np.asarray(vec[500], dtype=np.float64)
    assert np.allclose(sent[500 // 64]["tensors"][500 % 64]["data"], unit / np.linalg.norm(unit), atol=1e-6)


def test_a_failure_mid_way_names_its_chunk_and_stops_there(host: RunningHost) -> None:
    faults = FaultAdapter()
    c = _client(host, faults)
    ids = [str(i) for i in range(N)]
    old = c.push_embedding(None, NAME, ids, _vectors(N, seed=1), attribute="Title", model="m", chunk_size=64)
    before = len(faults.sent_to("PUT", "/tensors$"))
    bad = list(ids)
    bad[5 * 64 + 3] = "no-such-record"  # the host refuses chunk 6 of 16 (UNKNOWN_RECORD)
    with pytest.raises(PushError, match=r"chunk 6/16 \(vectors 321-384\).*UNKNOWN_RECORD") as err:
        c.push_embedding(None, NAME, bad, _vectors(N, seed=2), attribute="Title", model="m", chunk_size=64)
    assert "previous embedding stays served" in str(err.value) or "staged version dropped" in str(err.value)
    sent = faults.sent_to("PUT", "/tensors$")[before:]
    assert [s.json()["chunk"] for s in sent] == [0, 1, 2, 3, 4, 5]  # none after the refused one
    assert [e["id"] for e in _staged_and_served(c)] == [old.embedding_id]  # the staged version was dropped
