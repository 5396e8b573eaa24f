"""sync_project and ``kern-finetune sync`` over real HTTP against the product's own host on 127.0.0.1.

The pipeline is replaced by a tiny fake (random unit vectors) here: what is tested is when a sync
trains and where it writes, not the training (tests/test_e2e_host.py runs the real pipeline). Label
changes and failures are injected on the client's side (tests/faults.py): a changed export is served
to the client as the host would serve it, and the host itself stays the product's (it answers as a real
refinery does: it takes no vectors).

Most tests sync through the default door (auto -> model without a target: the run's model folder is written
and nothing goes to the host). Where a write to the host must succeed or fail, the sync goes through the model
door with a :class:`ModelDoorTarget` against a host whose embedder mounts a models volume; there the fake's model
folder is the small base model the package ships, so the host's embedder can compute it.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
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
from kern_finetune.refinery.gateway import GATEWAY_API, Gateway
from kern_finetune.refinery.model_door import ModelDoorTarget
from kern_finetune.commands import sync as sync_cmd
from kern_finetune.config import RunConfig
from kern_finetune.errors import AuthError, ConfigError, ExportError, HostUnavailableError, DoorError, SyncBusyError
from kern_finetune.host import RunningHost, serve_in_thread
from kern_finetune.pipeline import RunResult
from kern_finetune.sync import LOCK_FILE, STATE_FILE, choose_door, sync_project, sync_state_dir
from kern_finetune.vectors.encode import default_model_path

USER, PASSWORD = "labeler@example.com", "sync-pw-91b3"
NAME = "Title-classification-kern-finetune-all-MiniLM-L6-v2"
MOUNT = "/models"


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
    """Same signature as run_pipeline; counts calls; writes a stand-in model folder (``loadable``: the base model
    the package ships, linked file by file, so that the host's embedder can compute it through the model door)."""

    def __init__(self, *, loadable: bool = False) -> None:
        self.calls = 0
        self.loadable = loadable

    def __call__(self, records: list[dict[str, Any]], config: RunConfig, *, out_dir: Path, progress: Any = None,
                 prepared: Any = None, door: str = "vectors", current: Any = None) -> RunResult:
        self.door, self.current = door, current
        self.prepared = prepared
        self.config = config
        self.calls += 1
        ids = [r[config.id_attribute] for r in records]
        v = np.random.default_rng(self.calls).normal(size=(len(ids), 6)).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        model = out_dir / "model"
        shutil.rmtree(model, ignore_errors=True)
        if self.loadable:  # links: the model door copies the files themselves into the models volume
            shutil.copytree(default_model_path(), model, copy_function=os.symlink)
        else:
            model.mkdir(parents=True)
            (model / "modules.json").write_text("[]")
        (model / "run.txt").write_text(f"run {self.calls}")  # which run wrote the folder
        return RunResult(ids=ids, vectors=v, metrics={"top_k": {"raw": {"1000": 30.0}, "finetuned": {"1000": 60.0}}},
                         out_dir=out_dir, model_dir=model, embedding_name=NAME,
                         label_fingerprint=prepared.fingerprint, base_model="all-MiniLM-L6-v2")


class MustNotTrain(FakePipeline):
    def __call__(self, *a: Any, **kw: Any) -> RunResult:
        raise AssertionError("the sync encoded/trained although it should have stopped before")


def _serve(tmp_path: Path, records: list[dict[str, Any]] | None = None, **kw: Any) -> RunningHost:
    export = tmp_path / "export.json"
    export.write_text(json.dumps(records or make_records()))
    return serve_in_thread(export, data_dir=tmp_path / "host", user_name=USER, password=PASSWORD, **kw)


@pytest.fixture
def host(tmp_path: Path) -> Iterator[RunningHost]:
    with _serve(tmp_path) as running:
        yield running


@pytest.fixture
def models(tmp_path: Path) -> Path:
    """The folder refinery's embedder mounts at /models (docs/model-door.md)."""
    path = tmp_path / "refinery-models"
    path.mkdir()
    return path


@pytest.fixture
def door_host(tmp_path: Path, models: Path) -> Iterator[RunningHost]:
    """A host whose embedder sees ``models`` at /models: the model door's create / wait / delete loop works."""
    with _serve(tmp_path, models_volumes=[(models, MOUNT)]) as running:
        yield running


@pytest.fixture
def faults() -> FaultAdapter:
    return FaultAdapter()


@pytest.fixture
def config(tmp_path: Path) -> RunConfig:
    return RunConfig(mode="head", task="Topic", text_attributes=["Title"], cache_dir=tmp_path / "cache")


def _client(host: RunningHost, faults: FaultAdapter | None = None, *, uri: str | None = None) -> RefineryClient:
    session = requests.Session()
    if faults is not None:
        session.mount("http://", faults)
    return RefineryClient(uri or host.url, USER, PASSWORD, timeout=30, retries=1, backoff=0, session=session,
                          project_id=host.project_id)


def _target(models: Path) -> ModelDoorTarget:
    return ModelDoorTarget(models, MOUNT, wait_s=120, poll_s=0.1)


def _sync(host: RunningHost, config: RunConfig, tmp_path: Path, fake: FakePipeline, faults: FaultAdapter | None = None,
          **kw: Any) -> sync_mod.SyncResult:
    return sync_project(_client(host, faults), None, config, out_dir=tmp_path / "out", pipeline=fake, progress=None, **kw)


def _serve_export(faults: FaultAdapter, records: list[dict[str, Any]]) -> None:
    """The client reads ``records`` as the project's export (double-encoded, as the host sends it)."""
    faults.respond("GET", "/export$", 200, json.dumps(json.dumps(records)), times=1)


def _names(host: RunningHost) -> list[str]:
    """The project's embeddings as refinery's gateway lists them."""
    return [n["name"] for n in Gateway(_client(host)).embeddings(host.project_id)]


def _wrote_to_refinery(faults: FaultAdapter) -> list[str]:
    """Requests that went to refinery's gateway (where an embedding is created or deleted)."""
    return [f"{s.method} {s.path}" for s in faults.sent if s.path.startswith(GATEWAY_API)]


def test_first_sync_writes_the_model_folder_then_up_to_date(host: RunningHost, config: RunConfig, tmp_path: Path,
                                                            faults: FaultAdapter) -> None:
    fake = FakePipeline()
    msgs: list[str] = []
    first = sync_project(_client(host, faults), None, config, out_dir=tmp_path / "out", pipeline=fake,
                         progress=msgs.append)
    assert first.status == "written" and first.door == "model" and fake.calls == 1
    assert first.written == tmp_path / "out" / "model" and (first.written / "run.txt").read_text() == "run 1"
    assert first.attribute == "Title" and first.embedding == NAME and first.embedding_id is None
    assert first.previous_fingerprint is None and first.changed_labels == first.n_labels > 0
    assert not _wrote_to_refinery(faults)  # no target: nothing goes to the host but the pull
    assert any(m.startswith("sync: door model") for m in msgs)
    assert any(m.startswith("sync 1/4") for m in msgs) and any(m.startswith("sync 4/4") for m in msgs)
    state = json.loads((first.state_dir / STATE_FILE).read_text())
    assert state["fingerprint"] == first.fingerprint and state["embedding"] == NAME and state["door"] == "model"
    assert state["written"] == str(first.written) and state["model_door"] is None
    assert state["host"] == host_identity(host.url)
    assert first.state_dir.is_relative_to(config.cache_dir / "sync")
    # selected once: the pipeline was handed the sync's own selection, fingerprinted as the state says
    assert fake.prepared is not None and fake.prepared.fingerprint == first.fingerprint
    assert fake.prepared.labels == state["labels"] and fake.prepared.attribute == first.attribute

    second = _sync(host, config, tmp_path, fake, faults)
    assert second.status == "up-to-date" and "labels unchanged" in second.message and second.embedding == NAME
    assert second.door == "model" and fake.calls == 1 and not _wrote_to_refinery(faults)


def test_a_removed_model_folder_is_written_again(host: RunningHost, config: RunConfig, tmp_path: Path) -> None:
    """Up to date only while the folder the last sync wrote is still where this sync would write it."""
    fake = FakePipeline()
    first = _sync(host, config, tmp_path, fake)
    shutil.rmtree(first.written)
    again = _sync(host, config, tmp_path, fake)
    assert again.status == "written" and fake.calls == 2 and again.written.is_dir()
    assert again.changed_labels == 0


UP_TO_DATE_SCRIPT = """
import json, sys
from pathlib import Path
from types import SimpleNamespace
import numpy as np
from kern_finetune.refinery.api import RefineryClient
from kern_finetune.config import RunConfig
from kern_finetune.sync import sync_project

tmp, url, user, password, project = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]

def stand_in(records, config, *, out_dir, progress=None, prepared=None, door="vectors"):  # RunResult's fields, no torch
    ids = [r[config.id_attribute] for r in records]
    vectors = np.random.default_rng(0).normal(size=(len(ids), 6)).astype(np.float32)
    (out_dir / "model").mkdir(parents=True, exist_ok=True)
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
    assert json.loads(out.stdout.strip().splitlines()[-1]) == ["written", "up-to-date", []]


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
    assert done.status == "written" and done.changed_labels == 1 and fake.calls == 2
    assert (done.written / "run.txt").read_text() == "run 2"
    _serve_export(faults, records)
    forced = _sync(host, config, tmp_path, fake, faults, force=True)
    assert forced.status == "written" and forced.changed_labels == 0 and fake.calls == 3


def test_manual_labels_set_on_the_host_retrain(host: RunningHost, config: RunConfig, tmp_path: Path) -> None:
    """The host's own export changes (no client-side stand-in): labels set in the project retrain once."""
    fake = FakePipeline()
    first = _sync(host, config, tmp_path, fake)
    # records 2 and 4 carry only a weak label at 0.5 (not selected): two new manual labels
    host.store.labels.set_labels("Topic", [("2", "World", None), ("4", "Sports", None)], source="MANUAL",
                                 user_name=USER)
    res = _sync(host, config, tmp_path, fake)
    assert res.status == "written" and fake.calls == 2
    assert res.changed_labels == 2 and res.n_labels == first.n_labels + 2
    assert _sync(host, config, tmp_path, fake).status == "up-to-date" and fake.calls == 2


def test_threshold_change_counts_as_new_state(host: RunningHost, config: RunConfig, tmp_path: Path) -> None:
    fake = FakePipeline()
    _sync(host, config, tmp_path, fake)
    config.threshold = 0.4  # the 0.5-confidence weak labels now count
    res = _sync(host, config, tmp_path, fake)
    assert res.status == "written" and res.changed_labels == res.n_labels and fake.calls == 2


def test_turning_weak_labels_off_counts_as_new_state(host: RunningHost, config: RunConfig, tmp_path: Path) -> None:
    fake = FakePipeline()
    first = _sync(host, config, tmp_path, fake)
    config.weak_labels = False  # manual labels only: every third record of make_records()
    res = _sync(host, config, tmp_path, fake)
    assert res.status == "written" and fake.calls == 2
    assert res.n_labels == 14 < first.n_labels


def test_a_changed_or_new_weak_label_alone_retrains(host: RunningHost, config: RunConfig, tmp_path: Path,
                                                    faults: FaultAdapter) -> None:
    """Between two syncs only a weak-supervision label above the threshold changes (no manual label, no
    option): the sync is not up to date, it trains and writes. First a weak label's value changes, then a
    record gets a new weak label (its confidence rises above --threshold 0.7)."""
    fake = FakePipeline()
    first = _sync(host, config, tmp_path, fake, faults)
    records = make_records()
    assert records[1]["__Topic__MANUAL"] is None and records[1]["__Topic__WEAK_SUPERVISION__confidence"] == "0.9000"
    records[1]["__Topic__WEAK_SUPERVISION"] = "World"  # weak "Sports" at 0.9 -> weak "World" at 0.9
    _serve_export(faults, records)
    changed = _sync(host, config, tmp_path, fake, faults)
    assert changed.status == "written" and fake.calls == 2
    assert changed.changed_labels == 1 and changed.n_labels == first.n_labels
    assert changed.fingerprint != first.fingerprint
    assert records[2]["__Topic__MANUAL"] is None and records[2]["__Topic__WEAK_SUPERVISION__confidence"] == "0.5000"
    records[2]["__Topic__WEAK_SUPERVISION__confidence"] = "0.9500"  # below the threshold before: a new label
    _serve_export(faults, records)
    added = _sync(host, config, tmp_path, fake, faults)
    assert added.status == "written" and fake.calls == 3
    assert added.changed_labels == 1 and added.n_labels == first.n_labels + 1
    _serve_export(faults, records)
    assert _sync(host, config, tmp_path, fake, faults).status == "up-to-date" and fake.calls == 3


def test_weak_labels_set_on_the_host_alone_retrain(host: RunningHost, config: RunConfig, tmp_path: Path) -> None:
    """The same through the host's own labels (what a labeling function run in refinery does): a new weak label
    above the threshold, then a changed weak label, each retrains once; a weak label at or below the threshold
    changes nothing that is trained on."""
    fake = FakePipeline()
    first = _sync(host, config, tmp_path, fake)
    labels = host.store.labels
    labels.set_labels("Topic", [("2", "Business", 0.95)], source="WEAK_SUPERVISION", user_name=USER)  # was 0.5
    added = _sync(host, config, tmp_path, fake)
    assert added.status == "written" and fake.calls == 2
    assert added.changed_labels == 1 and added.n_labels == first.n_labels + 1
    labels.set_labels("Topic", [("5", "World", 0.9)], source="WEAK_SUPERVISION", user_name=USER)  # was "Sports"
    changed = _sync(host, config, tmp_path, fake)
    assert changed.status == "written" and fake.calls == 3
    assert changed.changed_labels == 1 and changed.n_labels == added.n_labels
    assert len({first.fingerprint, added.fingerprint, changed.fingerprint}) == 3
    labels.set_labels("Topic", [("8", "World", 0.6)], source="WEAK_SUPERVISION", user_name=USER)  # below 0.7
    same = _sync(host, config, tmp_path, fake)
    assert same.status == "up-to-date" and fake.calls == 3 and same.fingerprint == changed.fingerprint


def test_failed_create_keeps_old_state_and_old_embedding(door_host: RunningHost, models: Path, config: RunConfig,
                                                         tmp_path: Path, faults: FaultAdapter) -> None:
    """Model door with a target: refinery refuses to create the new embedding -> one line naming the step, the
    state and refinery's embedding stay the last sync's; the change is still pending, the next sync writes it
    and deletes the previous embedding only once the new one is FINISHED."""
    fake = FakePipeline(loadable=True)
    on_disk = _sync(door_host, config, tmp_path, fake, faults)
    assert on_disk.status == "written" and _names(door_host) == []
    target = _target(models)
    first = _sync(door_host, config, tmp_path, fake, faults, door="model", model_target=target)
    # the labels did not change, but a folder left on disk is no embedding in refinery: trained and created
    assert first.status == "created" and first.door == "model" and fake.calls == 2 and first.changed_labels > 0
    assert first.embedding == f"Title-classification-huggingface-{MOUNT}/kern-finetune-Title-v1"
    assert first.written == models / "kern-finetune-Title-v1" and (first.written / "run.txt").read_text() == "run 2"
    assert _names(door_host) == [first.embedding] and first.embedding_id
    state_before = (first.state_dir / STATE_FILE).read_text()
    assert json.loads(state_before)["model_door"]["embedding_id"] == first.embedding_id

    records = make_records()
    records[1]["__Topic__MANUAL"] = "World"
    _serve_export(faults, records)
    failing = faults.respond("POST", "/create-embedding$", 500, "An error occurred", times=10)
    with pytest.raises(DoorError) as info:
        _sync(door_host, config, tmp_path, fake, faults, door="model", model_target=target)
    message = str(info.value)
    assert "\n" not in message and "step create" in message and first.embedding in message
    assert failing.hits == 1  # a create is never retried: a lost answer must not make two embeddings
    assert (first.state_dir / STATE_FILE).read_text() == state_before
    assert _names(door_host) == [first.embedding] and (models / "kern-finetune-Title-v1").is_dir()

    failing.times = 0
    _serve_export(faults, records)
    again = _sync(door_host, config, tmp_path, fake, faults, door="model", model_target=target)
    assert again.status == "created" and again.changed_labels == 1 and fake.calls == 4
    assert again.embedding != first.embedding and _names(door_host) == [again.embedding]
    events = door_host.store.models.events
    assert events.index(("FINISHED", again.embedding)) < events.index(("deleted", first.embedding))
    assert first.embedding_id in again.message
    _serve_export(faults, records)
    assert _sync(door_host, config, tmp_path, MustNotTrain(), faults, door="model",
                 model_target=target).status == "up-to-date"


def test_malformed_export_writes_nothing(host: RunningHost, config: RunConfig, tmp_path: Path,
                                         faults: FaultAdapter) -> None:
    fake = FakePipeline()
    faults.respond("GET", "/export$", 200, b'"not json at all')
    with pytest.raises(ExportError):
        _sync(host, config, tmp_path, fake, faults)
    assert fake.calls == 0 and not (tmp_path / "out" / "model").exists()
    assert not list((config.cache_dir / "sync").rglob(STATE_FILE))


def test_gateway_failure_writes_nothing(host: RunningHost, config: RunConfig, tmp_path: Path,
                                       faults: FaultAdapter) -> None:
    fake = FakePipeline()
    faults.fail("GET", "/export$", "null", times=5)
    with pytest.raises(HostUnavailableError, match="gateway"):
        _sync(host, config, tmp_path, fake, faults)
    assert fake.calls == 0 and not (tmp_path / "out" / "model").exists()
    assert not list((config.cache_dir / "sync").rglob(STATE_FILE))


def test_second_overlapping_sync_is_refused(host: RunningHost, config: RunConfig, tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    with open(state_dir / LOCK_FILE, "a+") as holder:
        fcntl.flock(holder.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(SyncBusyError, match=f"another sync of project {host.project_id}"):
            _sync(host, config, tmp_path, FakePipeline(), state_dir=state_dir)
        fcntl.flock(holder.fileno(), fcntl.LOCK_UN)
    assert _sync(host, config, tmp_path, FakePipeline(), state_dir=state_dir).status == "written"


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
                sync_project(_client(host, uri=other), None, config, out_dir=tmp_path / "out", pipeline=FakePipeline(),
                             progress=None)
            except SyncBusyError as exc:
                seen.append(str(exc))
            return super().__call__(*a, **kw)

    first = sync_project(_client(host), None, config, out_dir=tmp_path / "out", pipeline=Nested(), progress=None)
    assert first.status == "written" and seen  # the second spelling waited for the first: no double training
    again = sync_project(_client(host, uri=other), None, config, out_dir=tmp_path / "out", pipeline=MustNotTrain(),
                         progress=None)
    assert again.status == "up-to-date"


def test_userinfo_is_never_printed_or_stored(host: RunningHost, config: RunConfig, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    secret = "Uri-pa55-6a1e"
    uri = host.url.replace("http://", f"http://admin:{secret}@")
    msgs: list[str] = []
    res = sync_project(_client(host, uri=uri), None, config, out_dir=tmp_path / "out", pipeline=FakePipeline(),
                       progress=msgs.append)
    assert res.status == "written"
    stored = "".join(p.read_text() for p in res.state_dir.rglob("*") if p.is_file())
    assert secret not in "\n".join(msgs) + stored + capsys.readouterr().err
    assert any(host.url in m for m in msgs)  # the URI is shown, without its userinfo


# ---- doors --------------------------------------------------------------------------------------


def test_the_host_takes_no_vectors(host: RunningHost) -> None:
    """The product's host answers as every real refinery does: no route takes or serves pushed vectors (the api
    door is gone), so a sync has only the model and snapshot doors."""
    c = _client(host)
    for method, tail in (("GET", "embeddings"), ("POST", "embeddings"), ("POST", "similarity"),
                         ("GET", "labeling-sessions"), ("POST", "labels")):
        resp = c.request(method, f"/api/project/{host.project_id}/{tail}", body={}, ok=(404,), idempotent=True)
        assert resp.status_code == 404, (method, tail, resp.status_code)  # a logged-in call: the route is not there


def test_model_door_writes_the_folder_and_says_how_refinery_gets_it(host: RunningHost, config: RunConfig,
                                                                    tmp_path: Path, faults: FaultAdapter) -> None:
    msgs: list[str] = []
    fake = FakePipeline()
    res = sync_project(_client(host, faults), None, config, out_dir=tmp_path / "out", pipeline=fake,
                       progress=msgs.append, door="model")
    assert res.status == "written" and res.door == "model" and res.written == tmp_path / "out" / "model"
    assert fake.door == "model"  # the verdict judges the folder as refinery's embedder computes it
    assert config.smooth == "auto" and fake.config.smooth == "0"  # the model folder cannot carry smoothed vectors
    assert config.spread == "auto" and fake.config.spread == "0"  # nor spread ones
    assert any("smoothing and search spread off" in m for m in msgs)
    assert res.embedding_id is None and not _wrote_to_refinery(faults)
    text = "\n".join(msgs)
    assert "refinery-embedder" in text and "huggingface" in text.lower() and "create-embedding" in text
    again = sync_project(_client(host, faults), None, config, out_dir=tmp_path / "out", pipeline=MustNotTrain(),
                         progress=None, door="model")
    assert again.status == "up-to-date"
    # auto is the model door here (no --write-snapshot): the same state, still up to date
    auto = sync_project(_client(host, faults), None, config, out_dir=tmp_path / "out", pipeline=MustNotTrain(),
                        progress=None)
    assert auto.status == "up-to-date" and auto.door == "model"


def test_model_door_trains_on_the_embeddings_one_attribute(tmp_path: Path) -> None:
    """refinery's embedder embeds one attribute: with two text attributes, the model door trains on the first."""
    records = make_records()
    for r in records:
        r["Description"] = f"a longer description of story {r['running_id']}"
    config = RunConfig(mode="head", task="Topic", text_attributes=["Title", "Description"], cache_dir=tmp_path / "c")
    fake = FakePipeline()
    msgs: list[str] = []
    with _serve(tmp_path, records) as host:
        res = sync_project(_client(host), None, config, out_dir=tmp_path / "out", pipeline=fake, progress=msgs.append)
    assert res.status == "written" and res.attribute == "Title"
    assert fake.config.text_attributes == ["Title"] and fake.prepared.text_attributes == ["Title"]
    assert any("embeds one attribute" in m for m in msgs)


def test_model_door_check_fails_before_pulling_or_encoding(door_host: RunningHost, models: Path, config: RunConfig,
                                                           tmp_path: Path, faults: FaultAdapter) -> None:
    """With a target, the model door checks the models folder and the browser login before anything is pulled or
    encoded; a target belongs to the model door (auto picks it when no snapshot is written)."""
    with pytest.raises(ConfigError) as info:
        _sync(door_host, config, tmp_path, MustNotTrain(), faults, door="model", model_target=_target(tmp_path / "no"))
    assert "\n" not in str(info.value) and "step models dir" in str(info.value)
    wrong = RefineryClient(door_host.url, USER, "not-the-password", timeout=30, retries=0, session=requests.Session(),
                           project_id=door_host.project_id)
    wrong.session.mount("http://", faults)
    with pytest.raises(AuthError) as info:
        sync_project(wrong, None, config, out_dir=tmp_path / "out", pipeline=MustNotTrain(), progress=None,
                     door="model", model_target=_target(models))
    assert "\n" not in str(info.value) and "step login" in str(info.value) and "not-the-password" not in str(info.value)
    with pytest.raises(ConfigError, match="--door model"):
        _sync(door_host, config, tmp_path, MustNotTrain(), faults, door="snapshot", model_target=_target(models))
    with pytest.raises(ConfigError, match="step models dir"):  # auto with a target is the model door
        _sync(door_host, config, tmp_path, MustNotTrain(), faults, door="auto", model_target=_target(tmp_path / "no"))
    assert not faults.sent_to("GET", "/export$")  # nothing pulled, nothing encoded
    assert not list(models.iterdir()) and _names(door_host) == []


def test_door_options_are_checked_before_anything_runs(host: RunningHost, config: RunConfig, tmp_path: Path,
                                                       faults: FaultAdapter) -> None:
    cases: list[dict[str, Any]] = [
        {"door": "snapshot"},
        {"door": "snapshot", "snapshot": tmp_path / "missing.zip", "write_snapshot": tmp_path / "out.zip"},
        {"door": "model", "write_snapshot": tmp_path / "out.zip"},
        {"door": "model", "snapshot": SNAPSHOT},
        {"door": "api"},  # the api door is gone
        {"door": "sideways"},
    ]
    for kw in cases:
        with pytest.raises(ConfigError):
            _sync(host, config, tmp_path, MustNotTrain(), faults, **kw)
    assert not faults.sent_to("GET", "/export$")


def test_auto_door_is_snapshot_with_an_output_snapshot_else_model(tmp_path: Path) -> None:
    """The door is chosen from the options alone: nothing asks the host."""
    assert sync_mod.DOORS == ("auto", "model", "snapshot")
    assert choose_door() == choose_door("auto") == "model"
    assert choose_door("auto", snapshot=SNAPSHOT, write_snapshot=tmp_path / "o.zip") == "snapshot"
    assert choose_door("snapshot", snapshot=SNAPSHOT, write_snapshot=tmp_path / "o.zip") == "snapshot"
    assert choose_door("model") == "model"
    with pytest.raises(ConfigError):
        choose_door("auto", write_snapshot=tmp_path / "o.zip")  # the snapshot door needs its source too
    with pytest.raises(ConfigError, match="--door must be one of auto, model, snapshot"):
        choose_door("api")


SNAPSHOT = Path(__file__).resolve().parent / "data" / "ag_news_snapshot_small.zip"


def test_snapshot_door_writes_a_snapshot_refinery_imports_and_switching_door_is_a_new_state(tmp_path: Path) -> None:
    """auto picks the snapshot door when --write-snapshot is given; the labels did not change since the model
    door's sync, but the snapshot door never got them: it trains again."""
    from kern_finetune.refinery.snapshot import read_snapshot

    src = read_snapshot(SNAPSHOT)
    config = RunConfig(mode="head", task="topic", threshold=0.3, cache_dir=tmp_path / "cache")
    fake = FakePipeline()
    with serve_in_thread(SNAPSHOT, data_dir=tmp_path / "host", user_name=USER, password=PASSWORD) as host:
        folder = sync_project(_client(host), None, config, out_dir=tmp_path / "out", pipeline=fake, progress=None)
        assert folder.status == "written" and folder.door == "model" and fake.calls == 1
        res = sync_project(_client(host), None, config, out_dir=tmp_path / "out", pipeline=fake,
                           progress=None, snapshot=SNAPSHOT, write_snapshot=tmp_path / "new.zip")
        assert res.status == "written" and res.door == "snapshot" and res.written == tmp_path / "new.zip"
        assert fake.calls == 2 and res.changed_labels == res.n_labels
        again = sync_project(_client(host), None, config, out_dir=tmp_path / "out", pipeline=MustNotTrain(),
                             progress=None, snapshot=SNAPSHOT, write_snapshot=tmp_path / "new.zip")
        assert again.status == "up-to-date" and again.door == "snapshot"
    # the verdict judges against the project's current embedding, which the source snapshot carries
    assert fake.current is not None and fake.current.name == "headline-classification-distilbert-base-uncased"
    assert fake.current.vectors.shape == (len(src.records), 64) and fake.door == "vectors"
    out = read_snapshot(tmp_path / "new.zip")
    name = f"{res.attribute}-classification-kern-finetune-all-MiniLM-L6-v2"
    assert res.embedding == name and out.embeddings[name]["count"] == len(src.records)
    assert set(out.embeddings) == set(src.embeddings) | {name}


class JudgedPipeline(FakePipeline):
    """A fake whose run carries a verdict (what the real pipeline's metrics.json holds)."""

    def __init__(self, outcome: str, *, loadable: bool = False) -> None:
        super().__init__(loadable=loadable)
        self.outcome = outcome

    def __call__(self, *a: Any, **kw: Any) -> RunResult:
        result = super().__call__(*a, **kw)
        result.metrics["verdict"] = {
            "verdict": self.outcome, "reference": "raw", "n_heldout": 12, "n_queries": 40, "judged_per_query": 3.0,
            "conclusion": f"{self.outcome} than the raw embedding (worse on same class over the list): same class over "
                          "a session 40% (raw 60%)", "new": {"same_class": 40.0}, "raw": {"same_class": 60.0}}
        return result


def test_a_worse_verdict_keeps_the_embedding_in_use_and_force_writes_it(door_host: RunningHost, models: Path,
                                                                        config: RunConfig, tmp_path: Path) -> None:
    """Through the model door with a target: a worse run creates nothing in refinery and the embedding in use
    stays; the same labels then stay up to date; --force creates the new one and deletes the old."""
    msgs: list[str] = []
    target = _target(models)
    first = _sync(door_host, config, tmp_path, JudgedPipeline("better", loadable=True), door="model",
                  model_target=target)
    assert first.status == "created" and first.verdict["verdict"] == "better"
    changed = make_records()
    changed[0]["__Topic__MANUAL"] = "Sports"  # a label changed: the next sync trains again
    faults = FaultAdapter()
    _serve_export(faults, changed)
    worse = JudgedPipeline("worse", loadable=True)
    kept = sync_project(_client(door_host, faults), None, config, out_dir=tmp_path / "out", pipeline=worse,
                        progress=msgs.append, door="model", model_target=target)
    assert kept.status == "kept" and worse.calls == 1 and kept.written is None
    assert kept.embedding == first.embedding and kept.embedding_id == first.embedding_id
    assert _names(door_host) == [first.embedding] and not faults.sent_to("POST", "/create-embedding$")
    assert sorted(p.name for p in models.iterdir()) == ["kern-finetune-Title-v1"]  # nothing copied either
    assert msgs[-1] == f"sync: {kept.message}"
    assert kept.message.startswith(f"kept {first.embedding!r}: the new embedding is worse")
    state = json.loads((kept.state_dir / STATE_FILE).read_text())
    assert [v["outcome"] for v in state["verdicts"]] == ["written", "kept"]
    assert state["fingerprint"] == first.fingerprint and state["kept"]["fingerprint"] == kept.fingerprint
    _serve_export(faults, changed)
    again = sync_project(_client(door_host, faults), None, config, out_dir=tmp_path / "out", pipeline=MustNotTrain(),
                         progress=None, door="model", model_target=target)
    assert again.status == "up-to-date" and "kept" in again.message
    _serve_export(faults, changed)
    forced = sync_project(_client(door_host, faults), None, config, out_dir=tmp_path / "out",
                          pipeline=JudgedPipeline("worse", loadable=True), progress=None, force=True, door="model",
                          model_target=target)
    assert forced.status == "created" and _names(door_host) == [forced.embedding] != [first.embedding]
    state = json.loads((forced.state_dir / STATE_FILE).read_text())
    assert [v["outcome"] for v in state["verdicts"]] == ["written", "kept", "forced"] and "kept" not in state
    assert state["fingerprint"] == forced.fingerprint and state["embedding_id"] == forced.embedding_id


def test_a_worse_verdict_through_the_default_door_keeps_the_state(host: RunningHost, config: RunConfig,
                                                                  tmp_path: Path) -> None:
    first = _sync(host, config, tmp_path, JudgedPipeline("better"))
    assert first.status == "written"
    config.threshold = 0.4  # a new state: the next sync trains again
    kept = _sync(host, config, tmp_path, JudgedPipeline("worse"))
    assert kept.status == "kept" and kept.embedding == NAME and kept.written is None
    state = json.loads((kept.state_dir / STATE_FILE).read_text())
    assert state["fingerprint"] == first.fingerprint and [v["outcome"] for v in state["verdicts"]] == ["written", "kept"]
    assert _sync(host, config, tmp_path, MustNotTrain()).status == "up-to-date"


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


def test_cli_sync_writes_and_reports_json(host: RunningHost, tmp_path: Path, monkeypatch, capsys) -> None:
    fake = FakePipeline()
    monkeypatch.setattr(sync_mod, "_default_pipeline", lambda: fake)
    assert cli.main(_cli(host, tmp_path, "--json")) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["status"] == "written" and line["door"] == "model" and line["top_1k_finetuned"] == 60.0
    assert line["embedding"] == NAME and line["written"] == str(tmp_path / "out" / "model")
    assert line["embedding_id"] is None
    assert cli.main(_cli(host, tmp_path, "--json")) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["status"] == "up-to-date"


def test_cli_model_door_check_exits_in_one_line(host: RunningHost, tmp_path: Path, monkeypatch, capsys) -> None:
    """`kern-finetune sync --door model --models-dir` with a folder that is not there: non-zero, one line naming
    the step, before anything is pulled or encoded; --models-dir with --door snapshot is refused too."""
    adapter = FaultAdapter()
    monkeypatch.setattr(sync_mod, "_default_pipeline", MustNotTrain)
    real = sync_cmd.client_from_args

    def with_transport(args: Any) -> RefineryClient:
        client = real(args)
        client.session.mount("http://", adapter)
        return client

    monkeypatch.setattr(sync_cmd, "client_from_args", with_transport)
    missing = tmp_path / "no-such-models"
    t = time.perf_counter()
    rc = cli.main(_cli(host, tmp_path, "--door", "model", "--models-dir", str(missing)))
    seconds = time.perf_counter() - t
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "step models dir" in err and str(missing) in err
    assert cli.main(_cli(host, tmp_path, "--door", "snapshot", "--models-dir", str(tmp_path))) == 2
    assert "--door model" in capsys.readouterr().err
    assert not adapter.sent_to("GET", "/export$")
    print(f"model-door check exited after {seconds:.2f} s")  # reported, not asserted (no timing in unit tests)


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
