"""sync_project and ``kern-finetune sync`` over real HTTP against tests/fakehost.py.

The pipeline is replaced by a tiny fake (random unit vectors) here: what is tested is when a sync
trains and pushes, not the training. tests/test_e2e_host.py runs the real pipeline on the real host.
"""

from __future__ import annotations

import fcntl
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fakehost import FakeHost, Running
from kern_finetune import cli
from kern_finetune import sync as sync_mod
from kern_finetune.client import RefineryClient
from kern_finetune.config import RunConfig
from kern_finetune.errors import ExportError, HostUnavailableError, SyncBusyError
from kern_finetune.pipeline import RunResult
from kern_finetune.sync import LOCK_FILE, STATE_FILE, sync_project

USER, PASSWORD, PID = "labeler@example.com", "sync-pw-91b3", "p-sync"


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
    """Same signature as run_pipeline; counts calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, records: list[dict[str, Any]], config: RunConfig, *, out_dir: Path, progress: Any = None) -> RunResult:
        self.calls += 1
        ids = [r[config.id_attribute] for r in records]
        v = np.random.default_rng(self.calls).normal(size=(len(ids), 6)).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        return RunResult(ids=ids, vectors=v, metrics={"top_k": {"raw": {"1000": 30.0}, "finetuned": {"1000": 60.0}}},
                         out_dir=out_dir, model_dir=out_dir / "model",
                         embedding_name="Title-classification-kern-finetune-all-MiniLM-L6-v2")


@pytest.fixture
def host() -> Iterator[Running]:
    fake = FakeHost(users={USER: PASSWORD})
    fake.add_project(PID, make_records())
    running = Running(fake)
    yield running
    running.stop()


@pytest.fixture
def config(tmp_path: Path) -> RunConfig:
    return RunConfig(task="Topic", text_attributes=["Title"], cache_dir=tmp_path / "cache")


def _client(host: Running) -> RefineryClient:
    return RefineryClient(host.url, USER, PASSWORD, timeout=2, retries=1, backoff=0.01)


def _sync(host: Running, config: RunConfig, tmp_path: Path, fake: FakePipeline, **kw: Any) -> sync_mod.SyncResult:
    return sync_project(_client(host), PID, config, out_dir=tmp_path / "out", pipeline=fake, progress=None, **kw)


def test_first_sync_pushes_then_up_to_date(host: Running, config: RunConfig, tmp_path: Path) -> None:
    fake = FakePipeline()
    msgs: list[str] = []
    first = sync_project(_client(host), PID, config, out_dir=tmp_path / "out", pipeline=fake, progress=msgs.append)
    assert first.status == "pushed" and fake.calls == 1
    assert first.previous_fingerprint is None and first.changed_labels == first.n_labels > 0
    assert set(host.host.served[PID]) == {"Title-classification-kern-finetune-all-MiniLM-L6-v2"}
    assert any(m.startswith("sync 1/4") for m in msgs) and any(m.startswith("sync 4/4") for m in msgs)
    state = json.loads((first.state_dir / STATE_FILE).read_text())
    assert state["fingerprint"] == first.fingerprint and state["embedding"] == first.push.name  # type: ignore[union-attr]
    assert first.state_dir.is_relative_to(config.cache_dir / "sync")

    n_posts = len(host.host.requests_to("POST", "/embeddings$"))
    second = _sync(host, config, tmp_path, fake)
    assert second.status == "up-to-date" and "labels unchanged" in second.message
    assert fake.calls == 1 and len(host.host.requests_to("POST", "/embeddings$")) == n_posts


def test_label_change_triggers_and_min_new_labels_holds_back(host: Running, config: RunConfig, tmp_path: Path) -> None:
    fake = FakePipeline()
    _sync(host, config, tmp_path, fake)
    records = host.host.projects[PID]["records"]
    records[1]["__Topic__MANUAL"] = "World"  # record 1 was weak "Sports" at 0.9 -> now manual "World"
    held = _sync(host, config, tmp_path, fake, min_new_labels=2)
    assert held.status == "up-to-date" and held.changed_labels == 1 and "min-new-labels" in held.message
    assert fake.calls == 1
    done = _sync(host, config, tmp_path, fake)
    assert done.status == "pushed" and done.changed_labels == 1 and fake.calls == 2
    forced = _sync(host, config, tmp_path, fake, force=True)
    assert forced.status == "pushed" and forced.changed_labels == 0 and fake.calls == 3


def test_threshold_change_counts_as_new_state(host: Running, config: RunConfig, tmp_path: Path) -> None:
    fake = FakePipeline()
    _sync(host, config, tmp_path, fake)
    config.threshold = 0.4  # the 0.5-confidence weak labels now count
    res = _sync(host, config, tmp_path, fake)
    assert res.status == "pushed" and res.changed_labels == res.n_labels


def test_failed_push_keeps_old_state_and_old_embedding(host: Running, config: RunConfig, tmp_path: Path) -> None:
    fake = FakePipeline()
    first = _sync(host, config, tmp_path, fake)
    served_id = host.host.served[PID][first.push.name]["id"]  # type: ignore[union-attr]
    state_before = (first.state_dir / STATE_FILE).read_text()
    host.host.projects[PID]["records"][1]["__Topic__MANUAL"] = "World"
    host.host.fail("PUT", "/tensors$", "500", times=10)
    with pytest.raises(HostUnavailableError):
        _sync(host, config, tmp_path, fake)
    assert (first.state_dir / STATE_FILE).read_text() == state_before
    assert host.host.served[PID][first.push.name]["id"] == served_id  # type: ignore[union-attr]
    assert not host.host.staged
    host.host.faults.clear()
    again = _sync(host, config, tmp_path, fake)  # the change is still pending: it retrains and pushes
    assert again.status == "pushed" and again.changed_labels == 1


def test_malformed_export_pushes_nothing(host: Running, config: RunConfig, tmp_path: Path) -> None:
    fake = FakePipeline()
    host.host.export_override[PID] = b'"not json at all'
    with pytest.raises(ExportError):
        _sync(host, config, tmp_path, fake)
    assert fake.calls == 0 and not host.host.requests_to("POST", "/embeddings$")


def test_second_overlapping_sync_is_refused(host: Running, config: RunConfig, tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    with open(state_dir / LOCK_FILE, "a+") as holder:
        fcntl.flock(holder.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(SyncBusyError, match="another sync of project p-sync"):
            _sync(host, config, tmp_path, FakePipeline(), state_dir=state_dir)
        fcntl.flock(holder.fileno(), fcntl.LOCK_UN)
    assert _sync(host, config, tmp_path, FakePipeline(), state_dir=state_dir).status == "pushed"


def test_lock_is_held_during_the_run(host: Running, config: RunConfig, tmp_path: Path) -> None:
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


# ---- the command --------------------------------------------------------------------------------


def _cli(host: Running, tmp_path: Path, *extra: str, secrets: dict[str, str] | None = None) -> list[str]:
    p = tmp_path / "secrets.json"
    p.write_text(json.dumps(secrets or {"user_name": USER, "password": PASSWORD, "project_id": PID, "uri": host.url}))
    return ["sync", "--secrets", str(p), "--task", "Topic", "--text-attributes", "Title", "--timeout", "2",
            "--retries", "0", "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "out"), *extra]


def test_cli_sync_pushes_and_reports_json(host: Running, tmp_path: Path, monkeypatch, capsys) -> None:
    fake = FakePipeline()
    monkeypatch.setattr(sync_mod, "_default_pipeline", lambda: fake)
    assert cli.main(_cli(host, tmp_path, "--json")) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["status"] == "pushed" and line["top_1k_finetuned"] == 60.0
    assert cli.main(_cli(host, tmp_path, "--json")) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["status"] == "up-to-date"


def test_cli_bad_credentials_exit_nonzero_without_leaking(host: Running, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(sync_mod, "_default_pipeline", FakePipeline)
    wrong = "Wr0ng-pass-5e1d"
    rc = cli.main(_cli(host, tmp_path, secrets={"user_name": USER, "password": wrong, "project_id": PID, "uri": host.url}))
    out = capsys.readouterr()
    assert rc == 1 and "login refused" in out.err
    assert wrong not in out.out + out.err


def test_cli_unknown_project_and_env_credentials(host: Running, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setenv("KERN_FINETUNE_USER", USER)
    monkeypatch.setenv("KERN_FINETUNE_PASSWORD", PASSWORD)
    args = ["sync", "--uri", host.url, "--project", "nope", "--task", "Topic", "--retries", "0",
            "--cache-dir", str(tmp_path / "cache"), "--out", str(tmp_path / "out")]
    assert cli.main(args) == 1
    assert "project not found" in capsys.readouterr().err
    monkeypatch.delenv("KERN_FINETUNE_PASSWORD")
    assert cli.main(args) == 2  # no credentials: a ConfigError
