"""sync_project and ``kern-finetune sync`` over real HTTP against the product's own host on 127.0.0.1.

The pipeline is replaced by a tiny fake (random unit vectors) here: what is tested is when a sync
trains and where it writes, not the training (tests/test_e2e_host.py runs the real pipeline). Label
changes and failures are injected on the client's side (tests/faults.py): a changed export is served
to the client as the host would serve it, and the host itself stays the product's.
"""

from __future__ import annotations

import fcntl
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from faults import FaultAdapter
from kern_finetune import cli
from kern_finetune import sync as sync_mod
from kern_finetune.web.net import host_identity, redact_uri
from kern_finetune.refinery.api import RefineryClient
from kern_finetune.commands import sync as sync_cmd
from kern_finetune.config import RunConfig
from kern_finetune.errors import ConfigError, ExportError, HostUnavailableError, PushError, SyncBusyError
from kern_finetune.host import RunningHost, serve_in_thread
from kern_finetune.pipeline import RunResult
from kern_finetune.sync import LOCK_FILE, STATE_FILE, choose_door, sync_project, sync_state_dir

USER, PASSWORD = "labeler@example.com", "sync-pw-91b3"
NAME = "Title-classification-kern-finetune-all-MiniLM-L6-v2"

# How a host without the push extension (what every real refinery is) is made here. "transport": the
# product's host, with the client's transport answering the extension's routes as refinery's proxy
# answers routes it lacks (404 {"detail": "Not Found"}). "host": `kern-finetune host --no-push-extension`
# (serve_in_thread(..., push_extension=False)) once the host has it. Switching is this one line.
NO_EXTENSION_BY = "host"
_EXTENSION_ROUTES = r"/api/project/[^/]+/(embeddings|similarity|labeling-sessions)(/.*)?$"


def make_records(n: int = 40) -> list[dict[str, Any]]:
    labels = ["World", "Sports", "Business", "Sci/Tech"]
    return [
        {
            "running_id": str(i),
            "Title": f"headline number {i}",
            "Class Index": str(i % 4),
            "__Topic__MANUAL": labels[i % 4] if i % 3 == 0 else None,
            "__Topic__WEAK_SUPERVISION": labels[i % 4],
            "__Topic__WEAK_SUPERVISION__confidence": "0.9000" if i % 2 else "0.5000",
        }
        for i in range(n)
    ]


class FakePipeline:
    """Same signature as run_pipeline; counts calls; writes a stand-in model folder."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, records: list[dict[str, Any]], config: RunConfig, *, out_dir: Path, progress: Any = None,
                 prepared: Any = None, door: str = "vectors", current: Any = None) -> RunResult:
        self.door, self.current = door, current
        self.prepared = prepared
        self.config = config
        self.calls += 1
        ids = [r[config.id_attribute] for r in records]
        v = np.random.default_rng(self.calls).normal(size=(len(ids), 6)).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        (out_dir / "model").mkdir(parents=True, exist_ok=True)
        (out_dir / "model" / "modules.json").write_text("[]")
        return RunResult(ids=ids, vectors=v, metrics={"top_k": {"raw": {"1000": 30.0}, "finetuned": {"1000": 60.0}}},
                         out_dir=out_dir, model_dir=out_dir / "model", embedding_name=NAME,
                         label_fingerprint=prepared.fingerprint, base_model="all-MiniLM-L6-v2")


class MustNotTrain(FakePipeline):
    def __call__(self, *a: Any, **kw: Any) -> RunResult:
        raise AssertionError("the sync encoded/trained although no door could take the vectors")


def _serve(tmp_path: Path, records: list[dict[str, Any]] | None = None, **kw: Any) -> RunningHost:
    export = tmp_path / "export.json"
    export.write_text(json.dumps(records or make_records()))
    return serve_in_thread(export, data_dir=tmp_path / "host", user_name=USER, password=PASSWORD, **kw)


@pytest.fixture
def host(tmp_path: Path) -> Iterator[RunningHost]:
    with _serve(tmp_path) as running:
        yield running


@pytest.fixture
def faults() -> FaultAdapter:
    return FaultAdapter()


@pytest.fixture
def refinery_like(tmp_path: Path) -> Iterator[tuple[RunningHost, FaultAdapter]]:
    """A host that, like every real refinery, has no push extension (see NO_EXTENSION_BY)."""
    adapter = FaultAdapter()
    if NO_EXTENSION_BY == "host":
        with _serve(tmp_path, push_extension=False) as running:
            yield running, adapter
        return
    with _serve(tmp_path) as running:
        for method in ("GET", "POST", "PUT", "DELETE"):
            adapter.respond(method, _EXTENSION_ROUTES, 404, '{"detail": "Not Found"}', times=1000)
        yield running, adapter


@pytest.fixture
def config(tmp_path: Path) -> RunConfig:
    return RunConfig(mode="head", task="Topic", text_attributes=["Title"], cache_dir=tmp_path / "cache")


def _client(host: RunningHost, faults: FaultAdapter | None = None, *, uri: str | None = None) -> RefineryClient:
    session = requests.Session()
    if faults is not None:
        session.mount("http://", faults)
    return RefineryClient(uri or host.url, USER, PASSWORD, timeout=30, retries=1, backoff=0, session=session,
                          project_id=host.project_id)


def _sync(host: RunningHost, config: RunConfig, tmp_path: Path, fake: FakePipeline, faults: FaultAdapter | None = None,
          **kw: Any) -> sync_mod.SyncResult:
    return sync_project(_client(host, faults), None, config, out_dir=tmp_path / "out", pipeline=fake, progress=None, **kw)


def _serve_export(faults: FaultAdapter, records: list[dict[str, Any]]) -> None:
    """The client reads ``records`` as the project's export (double-encoded, as the host sends it)."""
    faults.respond("GET", "/export$", 200, json.dumps(json.dumps(records)), times=1)


def _served(c: RefineryClient) -> dict[str, str]:
    return {e["name"]: e["id"] for e in c.list_embeddings()}


def test_first_sync_pushes_then_up_to_date(host: RunningHost, config: RunConfig, tmp_path: Path) -> None:
    fake = FakePipeline()
    msgs: list[str] = []
    first = sync_project(_client(host), None, config, out_dir=tmp_path / "out", pipeline=fake, progress=msgs.append)
    assert first.status == "pushed" and first.door == "api" and fake.calls == 1
    assert first.attribute == "Title" and first.embedding == NAME
    assert first.previous_fingerprint is None and first.changed_labels == first.n_labels > 0
    assert set(_served(_client(host))) == {NAME}
    assert any(m.startswith("sync: door api") for m in msgs)
    assert any(m.startswith("sync 1/4") for m in msgs) and any(m.startswith("sync 4/4") for m in msgs)
    state = json.loads((first.state_dir / STATE_FILE).read_text())
    assert state["fingerprint"] == first.fingerprint and state["embedding"] == NAME and state["door"] == "api"
    assert state["host"] == host_identity(host.url)
    assert first.state_dir.is_relative_to(config.cache_dir / "sync")
    # selected once: the pipeline was handed the sync's own selection, fingerprinted as the state says
    assert fake.prepared is not None and fake.prepared.fingerprint == first.fingerprint
    assert fake.prepared.labels == state["labels"] and fake.prepared.attribute == first.attribute

    faults = FaultAdapter()
    second = _sync(host, config, tmp_path, fake, faults)
    assert second.status == "up-to-date" and "labels unchanged" in second.message and second.embedding == NAME
    assert fake.calls == 1 and not faults.sent_to("POST", "/embeddings$")


UP_TO_DATE_SCRIPT = """
import json, sys
from pathlib import Path
from types import SimpleNamespace
import numpy as np
from kern_finetune.refinery.api import RefineryClient
from kern_finetune.config import RunConfig
from kern_finetune.sync import sync_project

tmp, url, user, password, project = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]

def stand_in(records, config, *, out_dir, progress=None, prepared=None):  # RunResult's fields, without torch
    ids = [r[config.id_attribute] for r in records]
    vectors = np.random.default_rng(0).normal(size=(len(ids), 6)).astype(np.float32)
    return SimpleNamespace(ids=ids, vectors=vectors, metrics={}, out_dir=out_dir, model_dir=out_dir / "model",
                           embedding_name="Title-classification-x", base_model="all-MiniLM-L6-v2")

config = RunConfig(mode="head", task="Topic", cache_dir=tmp / "cache", device="cpu")  # "auto" asks torch for CUDA
client = RefineryClient(url, user, password, project_id=project)
first = sync_project(client, None, config, out_dir=tmp / "out", pipeline=stand_in, progress=None)
second = sync_project(client, None, config, out_dir=tmp / "out", pipeline=stand_in, progress=None)
print(json.dumps([first.status, second.status, sorted(m for m in ("torch", "sklearn") if m in sys.modules)]))
"""


def test_an_up_to_date_sync_imports_neither_torch_nor_sklearn(host: RunningHost, tmp_path: Path) -> None:
    """Selecting and fingerprinting the labels (kern_finetune.labels.prepare) needs neither, so a sync that finds
    the labels unchanged loads neither (the split is sklearn's, replayed in numpy:
    kern_finetune.labels.select.split_train_val). The sync runs in its own process against the test's host, with
    ``device="cpu"``: ``RunConfig.validate`` resolves ``"auto"`` by asking torch whether CUDA is there."""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", UP_TO_DATE_SCRIPT, str(tmp_path), host.url, USER, PASSWORD,
                          str(host.project_id)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == ["pushed", "up-to-date", []]


def test_label_change_triggers_and_min_new_labels_holds_back(host: RunningHost, config: RunConfig, tmp_path: Path,
                                                             faults: FaultAdapter) -> None:
    fake = FakePipeline()
    _sync(host, config, tmp_path, fake, faults)
    records = make_records()
    records[1]["__Topic__MANUAL"] = "World"  # record 1 was weak "Sports" at 0.9 -> now manual "World"
    _serve_export(faults, records)
    held = _sync(host, config, tmp_path, fake, faults, min_new_labels=2)
    assert held.status == "up-to-date" and held.changed_labels == 1 and "min-new-labels" in held.message
    assert fake.calls == 1
    _serve_export(faults, records)
    done = _sync(host, config, tmp_path, fake, faults)
    assert done.status == "pushed" and done.changed_labels == 1 and fake.calls == 2
    _serve_export(faults, records)
    forced = _sync(host, config, tmp_path, fake, faults, force=True)
    assert forced.status == "pushed" and forced.changed_labels == 0 and fake.calls == 3


def test_threshold_change_counts_as_new_state(host: RunningHost, config: RunConfig, tmp_path: Path) -> None:
    fake = FakePipeline()
    _sync(host, config, tmp_path, fake)
    config.threshold = 0.4  # the 0.5-confidence weak labels now count
    res = _sync(host, config, tmp_path, fake)
    assert res.status == "pushed" and res.changed_labels == res.n_labels


def test_turning_weak_labels_off_counts_as_new_state(host: RunningHost, config: RunConfig, tmp_path: Path) -> None:
    fake = FakePipeline()
    first = _sync(host, config, tmp_path, fake)
    config.weak_labels = False  # manual labels only: every third record of make_records()
    res = _sync(host, config, tmp_path, fake)
    assert res.status == "pushed" and fake.calls == 2
    assert res.n_labels == 14 < first.n_labels


def test_a_changed_or_new_weak_label_alone_retrains(host: RunningHost, config: RunConfig, tmp_path: Path,
                                                    faults: FaultAdapter) -> None:
    """Between two syncs only a weak-supervision label above the threshold changes (no manual label, no
    option): the sync is not up to date, it trains and pushes. First a weak label's value changes, then a
    record gets a new weak label (its confidence rises above --threshold 0.7)."""
    fake = FakePipeline()
    first = _sync(host, config, tmp_path, fake, faults)
    records = make_records()
    assert records[1]["__Topic__MANUAL"] is None and records[1]["__Topic__WEAK_SUPERVISION__confidence"] == "0.9000"
    records[1]["__Topic__WEAK_SUPERVISION"] = "World"  # weak "Sports" at 0.9 -> weak "World" at 0.9
    _serve_export(faults, records)
    changed = _sync(host, config, tmp_path, fake, faults)
    assert changed.status == "pushed" and fake.calls == 2
    assert changed.changed_labels == 1 and changed.n_labels == first.n_labels
    assert changed.fingerprint != first.fingerprint
    assert records[2]["__Topic__MANUAL"] is None and records[2]["__Topic__WEAK_SUPERVISION__confidence"] == "0.5000"
    records[2]["__Topic__WEAK_SUPERVISION__confidence"] = "0.9500"  # below the threshold before: a new label
    _serve_export(faults, records)
    added = _sync(host, config, tmp_path, fake, faults)
    assert added.status == "pushed" and fake.calls == 3
    assert added.changed_labels == 1 and added.n_labels == first.n_labels + 1
    _serve_export(faults, records)
    assert _sync(host, config, tmp_path, fake, faults).status == "up-to-date" and fake.calls == 3


def test_failed_push_keeps_old_state_and_old_embedding(host: RunningHost, config: RunConfig, tmp_path: Path,
                                                        faults: FaultAdapter) -> None:
    fake = FakePipeline()
    first = _sync(host, config, tmp_path, fake, faults)
    served_before = _served(_client(host))
    state_before = (first.state_dir / STATE_FILE).read_text()
    records = make_records()
    records[1]["__Topic__MANUAL"] = "World"
    _serve_export(faults, records)
    failing = faults.fail("PUT", "/tensors$", "500", times=10)
    with pytest.raises(HostUnavailableError):
        _sync(host, config, tmp_path, fake, faults)
    assert failing.hits == 2
    assert (first.state_dir / STATE_FILE).read_text() == state_before
    assert _served(_client(host)) == served_before
    failing.times = 0
    _serve_export(faults, records)
    again = _sync(host, config, tmp_path, fake, faults)  # the change is still pending: it retrains and pushes
    assert again.status == "pushed" and again.changed_labels == 1


def test_malformed_export_pushes_nothing(host: RunningHost, config: RunConfig, tmp_path: Path, faults: FaultAdapter) -> None:
    fake = FakePipeline()
    faults.respond("GET", "/export$", 200, b'"not json at all')
    with pytest.raises(ExportError):
        _sync(host, config, tmp_path, fake, faults)
    assert fake.calls == 0 and not faults.sent_to("POST", "/embeddings$")


def test_gateway_failure_pushes_nothing(host: RunningHost, config: RunConfig, tmp_path: Path, faults: FaultAdapter) -> None:
    fake = FakePipeline()
    faults.fail("GET", "/export$", "null", times=5)
    with pytest.raises(HostUnavailableError, match="gateway"):
        _sync(host, config, tmp_path, fake, faults)
    assert fake.calls == 0 and not faults.sent_to("POST", "/embeddings$")


def test_second_overlapping_sync_is_refused(host: RunningHost, config: RunConfig, tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    with open(state_dir / LOCK_FILE, "a+") as holder:
        fcntl.flock(holder.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(SyncBusyError, match=f"another sync of project {host.project_id}"):
            _sync(host, config, tmp_path, FakePipeline(), state_dir=state_dir)
        fcntl.flock(holder.fileno(), fcntl.LOCK_UN)
    assert _sync(host, config, tmp_path, FakePipeline(), state_dir=state_dir).status == "pushed"


def test_lock_is_held_during_the_run(host: RunningHost, config: RunConfig, tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    seen: list[str] = []

    class Nested(FakePipeline):
        def __call__(self, *a: Any, **kw: Any) -> RunResult:
            try:
                _sync(host, config, tmp_path, FakePipeline(), state_dir=state_dir)
            except SyncBusyError as exc:
                seen.append(str(exc))
            return super().__call__(*a, **kw)

    _sync(host, config, tmp_path, Nested(), state_dir=state_dir)
    assert seen and "wait for it to finish" in seen[0]


# ---- identity and secrets -----------------------------------------------------------------------


def test_host_identity_ignores_spelling() -> None:
    same = ["http://127.0.0.1:4455", "http://localhost:4455/", "http://LOCALHOST:4455", "http://[::1]:4455",
            "http://user:pw@127.0.0.1:4455", "http://127.0.0.2:4455//"]
    assert {host_identity(u) for u in same} == {"http://localhost:4455"}
    assert host_identity("http://example.org") == host_identity("http://Example.org:80/") == "http://example.org:80"
    assert host_identity("https://example.org/") == "https://example.org:443"
    assert len({host_identity(u) for u in ("http://localhost:4455", "http://localhost:4456",
                                           "https://localhost:4455", "http://example.org:4455")}) == 4
    for bad in ("localhost:4455", "ftp://x", "http://host:99999"):
        with pytest.raises(ConfigError):
            host_identity(bad)
    assert redact_uri("http://u:S3cret@host:1/x") == "http://host:1/x"


def test_one_project_under_two_spellings_shares_lock_and_state(host: RunningHost, config: RunConfig,
                                                               tmp_path: Path) -> None:
    other = host.url.replace("127.0.0.1", "localhost") + "/"
    assert sync_state_dir(host.url, host.project_id, config) == sync_state_dir(other, host.project_id, config)
    seen: list[str] = []

    class Nested(FakePipeline):
        def __call__(self, *a: Any, **kw: Any) -> RunResult:
            try:
                sync_project(_client(host, uri=other), None, config, out_dir=tmp_path / "o2", pipeline=FakePipeline(),
                             progress=None)
            except SyncBusyError as exc:
                seen.append(str(exc))
            return super().__call__(*a, **kw)

    first = sync_project(_client(host), None, config, out_dir=tmp_path / "out", pipeline=Nested(), progress=None)
    assert first.status == "pushed" and seen  # the second spelling waited for the first: no double training
    again = sync_project(_client(host, uri=other), None, config, out_dir=tmp_path / "o2", pipeline=MustNotTrain(),
                         progress=None)
    assert again.status == "up-to-date"


def test_userinfo_is_never_printed_or_stored(host: RunningHost, config: RunConfig, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    secret = "Uri-pa55-6a1e"
    uri = host.url.replace("http://", f"http://admin:{secret}@")
    msgs: list[str] = []
    res = sync_project(_client(host, uri=uri), None, config, out_dir=tmp_path / "out", pipeline=FakePipeline(),
                       progress=msgs.append)
    assert res.status == "pushed"
    stored = "".join(p.read_text() for p in res.state_dir.rglob("*") if p.is_file())
    assert secret not in "\n".join(msgs) + stored + capsys.readouterr().err
    assert any(host.url in m for m in msgs)  # the URI is shown, without its userinfo


# ---- doors --------------------------------------------------------------------------------------


def test_no_door_fails_before_pulling_or_encoding(refinery_like: tuple[RunningHost, FaultAdapter], config: RunConfig,
                                                  tmp_path: Path) -> None:
    host, adapter = refinery_like
    for door in ("auto", "api"):
        with pytest.raises(PushError) as info:
            _sync(host, config, tmp_path, MustNotTrain(), adapter, door=door)
        message = str(info.value)
        assert "\n" not in message and "--write-snapshot" in message and "snapshot door" in message
    assert not adapter.sent_to("GET", "/export$")  # nothing pulled, nothing encoded


def test_model_door_writes_the_folder_and_says_how_refinery_gets_it(refinery_like: tuple[RunningHost, FaultAdapter],
                                                                    config: RunConfig, tmp_path: Path) -> None:
    host, adapter = refinery_like
    msgs: list[str] = []
    fake = FakePipeline()
    res = sync_project(_client(host, adapter), None, config, out_dir=tmp_path / "out", pipeline=fake,
                       progress=msgs.append, door="model")
    assert res.status == "written" and res.door == "model" and res.written == tmp_path / "out" / "model"
    assert config.smooth == "auto" and fake.config.smooth == "0"  # the model folder cannot carry smoothed vectors
    assert config.spread == "auto" and fake.config.spread == "0"  # nor spread ones
    assert any("smoothing and search spread off" in m for m in msgs)
    assert res.push is None and not adapter.sent_to("POST", "/embeddings$")
    text = "\n".join(msgs)
    assert "refinery-embedder" in text and "huggingface" in text.lower() and "create-embedding" in text
    again = sync_project(_client(host, adapter), None, config, out_dir=tmp_path / "out", pipeline=MustNotTrain(),
                         progress=None, door="model")
    assert again.status == "up-to-date"


def test_door_options_are_checked_before_anything_runs(host: RunningHost, config: RunConfig, tmp_path: Path,
                                                       faults: FaultAdapter) -> None:
    cases: list[dict[str, Any]] = [
        {"door": "snapshot"},
        {"door": "snapshot", "snapshot": tmp_path / "missing.zip", "write_snapshot": tmp_path / "out.zip"},
        {"door": "api", "write_snapshot": tmp_path / "out.zip"},
        {"door": "sideways"},
    ]
    for kw in cases:
        with pytest.raises(ConfigError):
            _sync(host, config, tmp_path, MustNotTrain(), faults, **kw)
    assert not faults.sent_to("GET", "/export$")


def test_auto_door_prefers_an_explicit_snapshot_output(host: RunningHost, faults: FaultAdapter, tmp_path: Path) -> None:
    c = _client(host, faults)
    assert choose_door(c, host.project_id, "auto") == "api"
    assert len(faults.sent_to("GET", "/embeddings$")) == 1  # one read decides
    assert choose_door(c, host.project_id, "auto", snapshot=SNAPSHOT, write_snapshot=tmp_path / "o.zip") == "snapshot"
    assert choose_door(c, host.project_id, "model") == "model"
    assert len(faults.sent_to("GET", "/embeddings$")) == 1  # neither asked the host


def test_switching_door_is_a_new_state(host: RunningHost, config: RunConfig, tmp_path: Path) -> None:
    fake = FakePipeline()
    assert _sync(host, config, tmp_path, fake).door == "api"
    res = _sync(host, config, tmp_path, fake, door="model")
    assert res.status == "written" and fake.calls == 2  # labels unchanged, but the model door never got them


SNAPSHOT = Path(__file__).resolve().parent / "data" / "ag_news_snapshot_small.zip"


def test_snapshot_door_writes_a_snapshot_refinery_imports(tmp_path: Path) -> None:
    """Against a host without the push extension: auto picks the snapshot door when --write-snapshot is given."""
    from kern_finetune.refinery.snapshot import read_snapshot

    src = read_snapshot(SNAPSHOT)
    adapter = FaultAdapter()
    adapter.respond("GET", _EXTENSION_ROUTES, 404, '{"detail": "Not Found"}', times=1000)
    config = RunConfig(mode="head", task="topic", threshold=0.3, cache_dir=tmp_path / "cache")
    with serve_in_thread(SNAPSHOT, data_dir=tmp_path / "host", user_name=USER, password=PASSWORD) as host:
        fake = FakePipeline()
        res = sync_project(_client(host, adapter), None, config, out_dir=tmp_path / "out", pipeline=fake,
                           progress=None, snapshot=SNAPSHOT, write_snapshot=tmp_path / "new.zip")
    assert res.status == "written" and res.door == "snapshot" and res.written == tmp_path / "new.zip"
    # the verdict judges against the project's current embedding, which the source snapshot carries
    assert fake.current is not None and fake.current.name == "headline-classification-distilbert-base-uncased"
    assert fake.current.vectors.shape == (len(src.records), 64) and fake.door == "vectors"
    out = read_snapshot(tmp_path / "new.zip")
    name = f"{res.attribute}-classification-kern-finetune-all-MiniLM-L6-v2"
    assert res.embedding == name and out.embeddings[name]["count"] == len(src.records)
    assert set(out.embeddings) == set(src.embeddings) | {name}


class JudgedPipeline(FakePipeline):
    """A fake whose run carries a verdict (what the real pipeline's metrics.json holds)."""

    def __init__(self, outcome: str) -> None:
        super().__init__()
        self.outcome = outcome

    def __call__(self, *a: Any, **kw: Any) -> RunResult:
        result = super().__call__(*a, **kw)
        result.metrics["verdict"] = {
            "verdict": self.outcome, "reference": "raw", "n_heldout": 12, "n_queries": 40, "judged_per_query": 3.0,
            "conclusion": f"{self.outcome} than the raw embedding (worse on same class over the list): same class over "
                          "a session 40% (raw 60%)", "new": {"same_class": 40.0}, "raw": {"same_class": 60.0}}
        return result


def test_a_worse_verdict_keeps_the_embedding_in_use_and_force_writes_it(host: RunningHost, config: RunConfig,
                                                                        tmp_path: Path) -> None:
    msgs: list[str] = []
    first = _sync(host, config, tmp_path, JudgedPipeline("better"))
    assert first.status == "pushed" and first.verdict["verdict"] == "better"
    changed = make_records()
    changed[0]["__Topic__MANUAL"] = "Sports"  # a label changed: the next sync trains again
    faults = FaultAdapter()
    _serve_export(faults, changed)
    worse = JudgedPipeline("worse")
    kept = sync_project(_client(host, faults), None, config, out_dir=tmp_path / "out", pipeline=worse,
                        progress=msgs.append)
    assert kept.status == "kept" and kept.push is None and worse.calls == 1
    assert kept.embedding == NAME and set(_served(_client(host))) == {NAME}  # the pushed one stays
    assert msgs[-1] == f"sync: {kept.message}" and kept.message.startswith(f"kept {NAME!r}: the new embedding is worse")
    state = json.loads((kept.state_dir / STATE_FILE).read_text())
    assert [v["outcome"] for v in state["verdicts"]] == ["written", "kept"]
    assert state["fingerprint"] == first.fingerprint and state["kept"]["fingerprint"] == kept.fingerprint
    _serve_export(faults, changed)
    again = sync_project(_client(host, faults), None, config, out_dir=tmp_path / "out", pipeline=MustNotTrain(),
                         progress=None)
    assert again.status == "up-to-date" and "kept" in again.message
    _serve_export(faults, changed)
    forced = sync_project(_client(host, faults), None, config, out_dir=tmp_path / "out", pipeline=JudgedPipeline("worse"),
                          progress=None, force=True)
    assert forced.status == "pushed"
    state = json.loads((forced.state_dir / STATE_FILE).read_text())
    assert [v["outcome"] for v in state["verdicts"]] == ["written", "kept", "forced"] and "kept" not in state
    assert state["fingerprint"] == forced.fingerprint


def test_cli_sync_ends_with_the_report_and_the_next_step(host: RunningHost, tmp_path: Path, monkeypatch,
                                                         capsys) -> None:
    monkeypatch.setattr(sync_mod, "_default_pipeline", lambda: JudgedPipeline("worse"))
    assert cli.main(_cli(host, tmp_path)) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-2].startswith("sync: kept") and printed[-1].startswith("next: the embedding in use stays")


# ---- the command --------------------------------------------------------------------------------


def _cli(host: RunningHost, tmp_path: Path, *extra: str, secrets: dict[str, str] | None = None) -> list[str]:
    p = tmp_path / "secrets.json"
    p.write_text(json.dumps(secrets or {"user_name": USER, "password": PASSWORD, "project_id": host.project_id,
                                        "uri": host.url}))
    return ["sync", "--secrets", str(p), "--task", "Topic", "--text-attributes", "Title", "--timeout", "30",
            "--retries", "0", "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "out"), *extra]


def test_cli_sync_pushes_and_reports_json(host: RunningHost, tmp_path: Path, monkeypatch, capsys) -> None:
    fake = FakePipeline()
    monkeypatch.setattr(sync_mod, "_default_pipeline", lambda: fake)
    assert cli.main(_cli(host, tmp_path, "--json")) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["status"] == "pushed" and line["door"] == "api" and line["top_1k_finetuned"] == 60.0
    assert line["embedding"] == NAME
    assert cli.main(_cli(host, tmp_path, "--json")) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["status"] == "up-to-date"


def test_cli_sync_without_a_door_exits_in_one_line(refinery_like: tuple[RunningHost, FaultAdapter], tmp_path: Path,
                                                   monkeypatch, capsys) -> None:
    """`kern-finetune sync` against a refinery-like host: non-zero, one line naming the snapshot door,
    before anything is pulled or encoded."""
    host, adapter = refinery_like
    monkeypatch.setattr(sync_mod, "_default_pipeline", MustNotTrain)
    real = sync_cmd.client_from_args

    def with_transport(args: Any) -> RefineryClient:
        client = real(args)
        client.session.mount("http://", adapter)
        return client

    monkeypatch.setattr(sync_cmd, "client_from_args", with_transport)
    t = time.perf_counter()
    rc = cli.main(_cli(host, tmp_path))
    seconds = time.perf_counter() - t
    err = capsys.readouterr().err.strip()
    assert rc == 1 and len(err.splitlines()) == 1
    assert "kern-finetune run --export SNAPSHOT.zip --write-snapshot OUT.zip" in err
    assert not adapter.sent_to("GET", "/export$")
    print(f"no-door sync exited after {seconds:.2f} s")  # reported, not asserted (no timing in unit tests)


def test_cli_bad_credentials_exit_nonzero_without_leaking(host: RunningHost, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(sync_mod, "_default_pipeline", FakePipeline)
    wrong = "Wr0ng-pass-5e1d"
    rc = cli.main(_cli(host, tmp_path, secrets={"user_name": USER, "password": wrong, "project_id": host.project_id,
                                                "uri": host.url}))
    out = capsys.readouterr()
    assert rc == 1 and "login refused" in out.err
    assert wrong not in out.out + out.err


def test_cli_unknown_project_and_env_credentials(host: RunningHost, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("KERN_FINETUNE_USER", USER)
    monkeypatch.setenv("KERN_FINETUNE_PASSWORD", PASSWORD)
    args = ["sync", "--uri", host.url, "--project", "nope", "--task", "Topic", "--retries", "0",
            "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "out")]
    assert cli.main(args) == 1
    assert "not found" in capsys.readouterr().err
    monkeypatch.delenv("KERN_FINETUNE_PASSWORD")
    assert cli.main(args) == 2  # no credentials: a ConfigError
