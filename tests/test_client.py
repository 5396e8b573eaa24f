"""RefineryClient and push_embedding over real HTTP against tests/fakehost.py on 127.0.0.1."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import numpy as np
import pytest
import requests

from fakehost import FakeHost, Running
from kern_finetune.client import RefineryClient, client_from_options, default_embedding_name
from kern_finetune.errors import (
    AuthError,
    ConfigError,
    ExportError,
    HostUnavailableError,
    ProjectNotFoundError,
    PushError,
)

USER = "labeler@example.com"
PASSWORD = "pw-s3cr3t-7f2a9c"  # a string that must never leak
PID = "proj-1"
NAME = "Title-classification-kern-finetune-all-MiniLM-L6-v2"


def make_records(n: int = 30) -> list[dict[str, str | None]]:
    labels = ["World", "Sports", "Business"]
    return [
        {
            "running_id": str(i),
            "Title": f"headline {i}",
            "__Topic__MANUAL": labels[i % 3] if i % 5 == 0 else None,
            "__Topic__WEAK_SUPERVISION": labels[i % 3],
            "__Topic__WEAK_SUPERVISION__confidence": f"{0.5 + (i % 5) / 10:.4f}",
        }
        for i in range(n)
    ]


@pytest.fixture
def host() -> Iterator[Running]:
    fake = FakeHost(users={USER: PASSWORD})
    fake.add_project(PID, make_records())
    running = Running(fake)
    yield running
    running.stop()


def client_for(running: Running, **kw: object) -> RefineryClient:
    opts: dict[str, object] = {"timeout": 2.0, "retries": 2, "backoff": 0.01}
    opts.update(kw)
    c = RefineryClient(running.url, USER, PASSWORD, **opts)  # type: ignore[arg-type]
    return c


def vectors(n: int = 30, d: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


def ids(n: int = 30) -> list[str]:
    return [str(i) for i in range(n)]


# ---- login, reading ----------------------------------------------------------------------------


def test_login_sends_kratos_flow_and_bearer_headers(host: Running) -> None:
    c = client_for(host)
    details = c.get_project(PID)
    assert details["name"] == "Test project"
    flow, action, api = host.host.log[:3]
    assert (flow.method, flow.path) == ("GET", "/.ory/kratos/public/self-service/login/api")
    assert flow.headers["accept"] == "application/json"
    assert (action.method, action.path) == ("POST", "/.ory/kratos/public/self-service/login")
    assert json.loads(action.body) == {"method": "password", "password": PASSWORD, "password_identifier": USER}
    token = next(iter(host.host.tokens))
    assert api.headers["authorization"] == f"Bearer {token}"
    assert api.headers["identifier"] == token
    assert api.headers["content-type"] == "application/json"


def test_export_is_decoded_twice_and_num_samples_passed(host: Running) -> None:
    c = client_for(host)
    records = c.get_export(PID)
    assert len(records) == 30 and records[0]["running_id"] == "0"
    assert len(c.get_export(PID, num_samples=5)) == 5
    assert host.host.requests_to("GET", "/export$")[-1].query == {"num_samples": ["5"]}


def test_bad_credentials_raise_auth_error(host: Running) -> None:
    c = RefineryClient(host.url, USER, "wrong-password", timeout=2, retries=0)
    with pytest.raises(AuthError, match="login refused"):
        c.get_project(PID)


def test_forbidden_user_and_unknown_project(host: Running) -> None:
    c = client_for(host)
    with pytest.raises(ProjectNotFoundError):
        c.get_project("nope")
    host.host.forbidden.add(USER)
    with pytest.raises(AuthError, match="FORBIDDEN_USER"):
        c.get_export(PID)


def test_one_relogin_on_401(host: Running) -> None:
    c = client_for(host)
    c.get_project(PID)
    host.host.expire_tokens()
    assert c.get_project(PID)["name"] == "Test project"
    assert len(host.host.requests_to("POST", "login$")) == 2
    host.host.fail("GET", f"^/api/project/{PID}$", "401", times=5)
    with pytest.raises(AuthError):
        c.get_project(PID)


def test_retries_on_500_then_succeeds(host: Running) -> None:
    c = client_for(host)
    host.host.fail("GET", "/export$", "500", times=2)
    assert len(c.get_export(PID)) == 30
    assert len(host.host.requests_to("GET", "/export$")) == 3


def test_exhausted_retries_raise_host_unavailable(host: Running) -> None:
    c = client_for(host, retries=1)
    host.host.fail("GET", "/export$", "500", times=5)
    with pytest.raises(HostUnavailableError, match="after 2 attempt"):
        c.get_export(PID)


def test_timeout_is_retried(host: Running) -> None:
    c = client_for(host, timeout=0.3)
    host.host.fail("GET", f"^/api/project/{PID}$", "sleep:0.8", times=1)
    assert c.get_project(PID)["name"] == "Test project"


def test_connection_refused_is_host_unavailable() -> None:
    sock_port = _free_port()
    c = RefineryClient(f"http://127.0.0.1:{sock_port}", USER, PASSWORD, timeout=1, retries=1, backoff=0.01)
    with pytest.raises(HostUnavailableError, match="connection refused"):
        c.get_project(PID)


def test_malformed_export_raises_export_error(host: Running) -> None:
    c = client_for(host)
    host.host.export_override[PID] = b'"[{\\"running_id\\": \\"0\\", truncated'
    with pytest.raises(ExportError, match="malformed"):
        c.get_export(PID)
    host.host.export_override[PID] = json.dumps(json.dumps({"not": "a list"})).encode()
    with pytest.raises(ExportError):
        c.get_export(PID)


def test_transport_is_swappable(host: Running) -> None:
    class CountingSession(requests.Session):
        calls = 0

        def request(self, *a, **kw):  # type: ignore[no-untyped-def,override]
            CountingSession.calls += 1
            assert kw["timeout"] is not None  # a timeout on every call
            return super().request(*a, **kw)

    c = client_for(host, session=CountingSession())
    c.get_project(PID)
    assert CountingSession.calls == 3


# ---- secrets / env ------------------------------------------------------------------------------


def test_from_secrets_and_env(tmp_path, monkeypatch, host: Running) -> None:
    p = tmp_path / "secrets.json"
    p.write_text(json.dumps({"user_name": USER, "password": PASSWORD, "project_id": PID, "uri": host.url}))
    c = RefineryClient.from_secrets(p, timeout=2)
    assert c.project_id == PID and c.uri == host.url
    assert c.get_project()["name"] == "Test project"
    monkeypatch.setenv("KERN_FINETUNE_USER", USER)
    monkeypatch.setenv("KERN_FINETUNE_PASSWORD", PASSWORD)
    monkeypatch.setenv("KERN_FINETUNE_URI", host.url)
    c2 = client_from_options()
    assert c2.uri == host.url and c2.project_id is None
    monkeypatch.delenv("KERN_FINETUNE_PASSWORD")
    with pytest.raises(ConfigError, match="KERN_FINETUNE_PASSWORD"):
        client_from_options()
    p.write_text('{"user_name": "x", "password": "' + PASSWORD + '", broken')
    with pytest.raises(ConfigError) as info:
        RefineryClient.from_secrets(p)
    assert PASSWORD not in str(info.value)


def test_secrets_never_in_logs_messages_or_repr(host: Running, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    c = client_for(host, retries=1)
    c.get_project(PID)
    token = next(iter(host.host.tokens))
    texts: list[str] = [repr(c), str(c)]
    host.host.fail("GET", "/export$", "500", times=5)
    for exc_type, call in (
        (HostUnavailableError, lambda: c.get_export(PID)),
        (ProjectNotFoundError, lambda: c.get_project("nope")),
        (PushError, lambda: c.push_embedding(PID, NAME, ids(3), vectors(3), attribute="Title", model="m")),
    ):
        with pytest.raises(exc_type) as info:
            call()
        texts.append(str(info.value))
    bad = RefineryClient(host.url, USER, "Wr0ng-" + PASSWORD, timeout=2, retries=0)
    with pytest.raises(AuthError) as info:
        bad.login()
    texts.append(str(info.value))
    texts += [r.getMessage() for r in caplog.records]
    blob = "\n".join(texts)
    assert PASSWORD not in blob
    assert token not in blob
    assert "Wr0ng-" not in blob


# ---- push ---------------------------------------------------------------------------------------


def test_push_happy_path_normalises_and_serves(host: Running) -> None:
    c = client_for(host)
    v = vectors() * 7.0
    msgs: list[str] = []
    res = c.push_embedding(PID, NAME, ids(), v, attribute="Title", model="all-MiniLM-L6-v2", chunk_size=7, progress=msgs.append)
    assert res.count == 30 and res.chunks == 5 and res.dimension == 8
    stored = host.host.served_vectors(PID, NAME)
    assert stored is not None and len(stored) == 30
    got = np.array([stored[str(i)] for i in range(30)])
    want = v / np.linalg.norm(v, axis=1, keepdims=True)
    assert np.allclose(got, want, atol=1e-6)
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)
    assert any("chunk 5/5" in m for m in msgs)
    create = json.loads(host.host.requests_to("POST", "/embeddings$")[0].body)
    assert create["custom"] is True and create["type"] == "ON_ATTRIBUTE" and create["platform"] == "kern-finetune"
    assert not host.host.staged


def test_default_name() -> None:
    assert default_embedding_name("Title", "/models/all-MiniLM-L6-v2/") == NAME



@pytest.mark.parametrize("fault", ["500", "drop", "sleep:0.6"])
def test_transient_chunk_failure_is_retried(host: Running, fault: str) -> None:
    c = client_for(host, timeout=0.4)
    host.host.fail("PUT", "/tensors$", fault, times=1)
    res = c.push_embedding(PID, NAME, ids(), vectors(), attribute="Title", model="m", chunk_size=10)
    assert host.host.served[PID][NAME]["id"] == res.embedding_id
    assert len(host.host.requests_to("PUT", "/tensors$")) == 4  # 3 chunks + 1 repeat
    assert not host.host.staged


@pytest.mark.parametrize("fault", ["500", "drop", "sleep:0.6"])
def test_persistent_failure_keeps_old_embedding_and_drops_staged(host: Running, fault: str) -> None:
    c = client_for(host, timeout=0.4, retries=1)
    old = c.push_embedding(PID, NAME, ids(), vectors(seed=1), attribute="Title", model="m")
    old_vectors = dict(host.host.served_vectors(PID, NAME) or {})
    host.host.fail("PUT", "/tensors$", fault, times=10)
    with pytest.raises(HostUnavailableError, match="previous embedding stays served"):
        c.push_embedding(PID, NAME, ids(), vectors(seed=2), attribute="Title", model="m", chunk_size=10)
    assert host.host.served[PID][NAME]["id"] == old.embedding_id
    assert host.host.served_vectors(PID, NAME) == old_vectors
    assert not host.host.staged  # nothing half-written left
    assert len(host.host.requests_to("DELETE", "/embeddings/")) == 1
    assert [e["id"] for e in c.list_embeddings(PID)] == [old.embedding_id]


def test_refused_chunk_is_push_error_and_nothing_visible(host: Running) -> None:
    c = client_for(host)
    with pytest.raises(PushError, match="UNKNOWN_RECORD"):
        c.push_embedding(PID, NAME, ids(29) + ["999"], vectors(), attribute="Title", model="m")
    assert not host.host.staged and not host.host.served[PID]


def test_incomplete_push_is_refused_at_finalize(host: Running) -> None:
    c = client_for(host)
    with pytest.raises(PushError, match="EMBEDDING_INCOMPLETE"):
        c.push_embedding(PID, NAME, ids(20), vectors(20), attribute="Title", model="m")
    assert not host.host.staged and not host.host.served[PID]


def test_finalize_answer_lost_is_retried_idempotently(host: Running) -> None:
    c = client_for(host)
    host.host.fail("POST", "/finalize$", "drop-after", times=1)
    res = c.push_embedding(PID, NAME, ids(), vectors(), attribute="Title", model="m")
    assert host.host.served[PID][NAME]["id"] == res.embedding_id
    assert len(host.host.requests_to("POST", "/finalize$")) == 2


def test_finalize_answer_lost_for_good_still_detects_success(host: Running) -> None:
    c = client_for(host, retries=1)
    host.host.fail("POST", "/finalize$", "drop-after", times=1)
    host.host.fail("POST", "/finalize$", "drop", times=5)
    res = c.push_embedding(PID, NAME, ids(), vectors(), attribute="Title", model="m")
    assert host.host.served[PID][NAME]["id"] == res.embedding_id
    assert not host.host.requests_to("DELETE", "/embeddings/")


def test_create_is_not_retried_after_reaching_the_host(host: Running) -> None:
    c = client_for(host)
    host.host.fail("POST", "/embeddings$", "drop-after", times=1)
    with pytest.raises(HostUnavailableError):
        c.push_embedding(PID, NAME, ids(), vectors(), attribute="Title", model="m")
    assert len(host.host.requests_to("POST", "/embeddings$")) == 1
    assert not host.host.served[PID]


def test_bad_vectors_are_refused_before_any_request(host: Running) -> None:
    c = client_for(host)
    bad = vectors()
    bad[3, 0] = np.nan
    for args in ((ids(), bad), (ids(29), vectors()), (ids(29) + ["0"], vectors()), (ids(), np.zeros((30, 8)))):
        with pytest.raises(PushError):
            c.push_embedding(PID, NAME, args[0], args[1], attribute="Title", model="m")
    assert not host.host.requests_to("POST", "/embeddings$")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
