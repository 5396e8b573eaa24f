"""RefineryClient (refinery/api.py, transport.py) and the Gateway it carries (refinery/gateway.py) over real HTTP
against the product's own host on 127.0.0.1.

Failures a real refinery and a real network produce (a gateway's ``200 null``, oathkeeper's 401 for an
expired token, 5xx, dropped connections, lost answers, timeouts) are injected on the client side
through its swappable transport (``tests/faults.py``); the host itself is ``kern_finetune.host``, so
these tests cannot drift from what the product serves. Timeouts are generous and faults are raised,
never waited for: the assertions count fault hits, not the wall clock.
"""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from faults import OATHKEEPER_401, FaultAdapter
from host_snapshot import write_snapshot_zip
from kern_finetune.refinery.api import RefineryClient, client_from_options
from kern_finetune.refinery.columns import embedding_name
from kern_finetune.errors import (
    AuthError,
    ConfigError,
    ExportError,
    HostError,
    HostUnavailableError,
    ProjectNotFoundError,
)
from kern_finetune.host import RunningHost, serve_in_thread
from kern_finetune.refinery.gateway import Gateway

USER = "labeler@example.com"
PASSWORD = "pw-s3cr3t-7f2a9c"  # a string that must never leak
NAME = "Title-classification-kern-finetune-all-MiniLM-L6-v2"
N = 30


def make_records(n: int = N) -> list[dict[str, str | None]]:
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
def host(tmp_path: Path) -> Iterator[RunningHost]:
    export = tmp_path / "export.json"
    export.write_text(json.dumps(make_records()))
    with serve_in_thread(export, data_dir=tmp_path / "host", user_name=USER, password=PASSWORD) as running:
        yield running


@pytest.fixture
def snap_host(tmp_path: Path) -> Iterator[RunningHost]:
    """A host that imported a snapshot whose Title embedding holds :func:`vectors` (seed 5), as given."""
    rows = [{"running_id": i, "Title": f"headline {i}"} for i in range(N)]
    snapshot = write_snapshot_zip(tmp_path / "snapshot.zip", rows, vectors(seed=5))
    with serve_in_thread(snapshot, data_dir=tmp_path / "host", user_name=USER, password=PASSWORD) as running:
        yield running


@pytest.fixture
def faults() -> FaultAdapter:
    return FaultAdapter()


def client_for(host: RunningHost, faults: FaultAdapter | None = None, **kw: Any) -> RefineryClient:
    session = requests.Session()
    if faults is not None:
        session.mount("http://", faults)
    opts: dict[str, Any] = {"timeout": 30.0, "retries": 2, "backoff": 0.0, "project_id": host.project_id,
                            "session": session}
    opts.update(kw)
    return RefineryClient(host.url, USER, PASSWORD, **opts)


def vectors(n: int = N, d: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)


def served_embedding(host: RunningHost, c: RefineryClient) -> str:
    [node] = Gateway(c).embeddings(host.project_id)
    return str(node["id"])


# ---- login, reading ----------------------------------------------------------------------------


def test_login_sends_kratos_flow_and_both_token_headers(host: RunningHost, faults: FaultAdapter) -> None:
    c = client_for(host, faults)
    assert c.get_project()["name"]
    flow, action, api = faults.sent[:3]
    assert (flow.method, flow.path) == ("GET", "/.ory/kratos/public/self-service/login/api")
    assert flow.headers["accept"] == "application/json"
    assert action.method == "POST" and action.path.startswith("/.ory/kratos/public/self-service/login")
    assert action.json() == {"method": "password", "password": PASSWORD, "password_identifier": USER}
    token = api.headers["identifier"]
    assert token and api.headers["authorization"] == f"Bearer {token}"
    assert api.headers["content-type"] == "application/json"


def test_export_is_decoded_twice_and_num_samples_passed(host: RunningHost, faults: FaultAdapter) -> None:
    c = client_for(host, faults)
    records = c.get_export()
    assert len(records) == N and records[0]["running_id"] == "0"
    assert len(c.get_export(num_samples=5)) == 5
    assert faults.sent_to("GET", "/export$")[-1].query == "num_samples=5"


def test_bad_credentials_raise_auth_error(host: RunningHost) -> None:
    c = RefineryClient(host.url, USER, "wrong-password", timeout=30, retries=0, project_id=host.project_id)
    with pytest.raises(AuthError, match="login refused"):
        c.get_project()


def test_unknown_project_and_forbidden_user(host: RunningHost, faults: FaultAdapter) -> None:
    c = client_for(host, faults)
    with pytest.raises(ProjectNotFoundError):
        c.get_project("00000000-0000-0000-0000-000000000000")
    faults.fail("GET", "/export$", "403")  # the proxy's FORBIDDEN_USER
    with pytest.raises(AuthError, match="FORBIDDEN_USER"):
        c.get_export()


def test_any_401_logs_in_again_once(host: RunningHost, faults: FaultAdapter) -> None:
    """oathkeeper refuses an expired bearer token with its own body, not the proxy's error_code."""
    c = client_for(host, faults)
    c.get_project()
    expired = faults.fail("GET", f"/api/project/{host.project_id}$", "401")
    assert c.get_project()["name"]
    assert expired.hits == 1
    assert len(faults.sent_to("POST", "/self-service/login$")) == 2  # the first login and one more


def test_a_redirect_to_the_login_page_logs_in_again_once(host: RunningHost, faults: FaultAdapter) -> None:
    """oathkeeper's redirect error handler answers a refused session with 302 to /auth/login."""
    c = client_for(host, faults)
    c.get_project()
    redirected = faults.fail("GET", "/export$", "login-302")
    assert len(c.get_export()) == N
    assert redirected.hits == 1 and len(faults.sent_to("POST", "/self-service/login$")) == 2
    faults.fail("GET", "/export$", "login-302", times=2)
    with pytest.raises(AuthError, match="redirected to the login page"):
        c.get_export()


def test_a_second_401_fails_clearly(host: RunningHost, faults: FaultAdapter) -> None:
    c = client_for(host, faults)
    refused = faults.fail("GET", f"/api/project/{host.project_id}$", "401", times=5)
    with pytest.raises(AuthError, match="refused a fresh session") as info:
        c.get_project()
    assert refused.hits == 2  # the call and its one repeat after a new login
    assert OATHKEEPER_401["error"]["message"] in str(info.value)


def test_retries_on_500_then_succeeds(host: RunningHost, faults: FaultAdapter) -> None:
    c = client_for(host, faults)
    rule = faults.fail("GET", "/export$", "500", times=2)
    assert len(c.get_export()) == N
    assert rule.hits == 2


def test_exhausted_retries_raise_host_unavailable(host: RunningHost, faults: FaultAdapter) -> None:
    c = client_for(host, faults, retries=1)
    rule = faults.fail("GET", "/export$", "500", times=5)
    with pytest.raises(HostUnavailableError, match="after 2 attempt"):
        c.get_export()
    assert rule.hits == 2


def test_timeout_is_retried(host: RunningHost, faults: FaultAdapter) -> None:
    c = client_for(host, faults)
    rule = faults.fail("GET", f"/api/project/{host.project_id}$", "timeout")
    assert c.get_project()["name"]
    assert rule.hits == 1


def test_connection_refused_is_host_unavailable() -> None:
    c = RefineryClient(f"http://127.0.0.1:{_free_port()}", USER, PASSWORD, timeout=30, retries=1, backoff=0,
                       project_id="p")
    with pytest.raises(HostUnavailableError, match="connection refused"):
        c.get_project()


def test_malformed_export_raises_export_error(host: RunningHost, faults: FaultAdapter) -> None:
    c = client_for(host, faults)
    faults.respond("GET", "/export$", 200, b'"[{\\"running_id\\": \\"0\\", truncated')
    with pytest.raises(ExportError, match="malformed"):
        c.get_export()
    faults.respond("GET", "/export$", 200, json.dumps(json.dumps({"not": "a list"})))
    with pytest.raises(ExportError):
        c.get_export()


def test_gateway_error_as_200_null_is_named_as_such(host: RunningHost, faults: FaultAdapter) -> None:
    """refinery's proxy answers 200 null for gateway errors: one line saying so, not a type error."""
    c = client_for(host, faults, retries=1)
    rule = faults.fail("GET", "/export$", "null", times=5)
    with pytest.raises(HostUnavailableError) as info:
        c.get_export()
    message = str(info.value)
    assert "gateway" in message and "200 with body null" in message and "\n" not in message
    assert "NoneType" not in message and "list of records" not in message
    assert rule.hits == 2  # retried like a 5xx
    rule.times = 0
    transient = faults.fail("GET", "/export$", "null")
    assert len(c.get_export()) == N and transient.hits == 1


def test_transport_is_swappable(host: RunningHost) -> None:
    class CountingSession(requests.Session):
        calls = 0

        def request(self, *a, **kw):  # type: ignore[no-untyped-def,override]
            CountingSession.calls += 1
            assert kw["timeout"] is not None  # a timeout on every call
            return super().request(*a, **kw)

    c = client_for(host, session=CountingSession())
    c.get_project()
    assert CountingSession.calls == 3  # login flow, login, the call


# ---- secrets / env / URIs -----------------------------------------------------------------------


def test_from_secrets_and_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, host: RunningHost) -> None:
    p = tmp_path / "secrets.json"
    p.write_text(json.dumps({"user_name": USER, "password": PASSWORD, "project_id": host.project_id, "uri": host.url}))
    c = RefineryClient.from_secrets(p, timeout=30)
    assert c.project_id == host.project_id and c.uri == host.url
    assert c.get_project()["name"]
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


def test_userinfo_in_the_uri_is_never_shown_or_sent(host: RunningHost, faults: FaultAdapter, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "uR1-pa55-d00d"
    with_userinfo = host.url.replace("http://", f"http://someone:{secret}@")
    c = RefineryClient(with_userinfo, USER, PASSWORD, timeout=30, retries=0, project_id=host.project_id,
                       session=client_for(host, faults).session)
    assert c.get_project()["name"]
    assert c.uri == host.url and secret not in repr(c)
    assert all(s.headers["authorization"].startswith("Bearer ") for s in faults.sent_to("GET", "^/api/"))
    dead = RefineryClient(f"http://someone:{secret}@127.0.0.1:{_free_port()}/", USER, PASSWORD, timeout=30,
                          retries=0, project_id="p")
    with pytest.raises(HostUnavailableError) as info:
        dead.get_project()
    assert secret not in str(info.value) + "\n".join(r.getMessage() for r in caplog.records)


def test_secrets_never_in_logs_messages_or_repr(host: RunningHost, faults: FaultAdapter, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    c = client_for(host, faults, retries=1)
    c.get_project()
    token = faults.sent[-1].headers["identifier"]
    texts: list[str] = [repr(c), str(c)]
    faults.fail("GET", "/export$", "500", times=5)
    faults.fail("GET", f"/api/project/{host.project_id}$", "401", times=2)
    for exc_type, call in (
        (HostUnavailableError, lambda: c.get_export()),
        (ProjectNotFoundError, lambda: c.get_project("nope")),
        (AuthError, lambda: c.get_project()),
        (HostError, lambda: Gateway(c).embeddings("short")),  # the gateway's 500: a browser login first
    ):
        with pytest.raises(exc_type) as info:
            call()
        texts.append(str(info.value))
    bad = RefineryClient(host.url, USER, "Wr0ng-" + PASSWORD, timeout=30, retries=0)
    with pytest.raises(AuthError) as info:
        bad.login()
    texts.append(str(info.value))
    texts += [r.getMessage() for r in caplog.records]
    blob = "\n".join(texts)
    assert PASSWORD not in blob
    assert token not in blob
    assert "Wr0ng-" not in blob


# ---- the gateway's similarity search, embedding routes ------------------------------------------


def test_default_name() -> None:
    assert embedding_name("Title", model="/models/all-MiniLM-L6-v2/") == NAME
    assert embedding_name("Title", model="sentence-transformers/all-MiniLM-L6-v2", platform="huggingface") == (
        "Title-classification-huggingface-all-MiniLM-L6-v2"
    )


def _threshold(v: np.ndarray) -> float:
    """refinery-neural-search ``calculate_threshold``: the 5th percentile of the pairwise Euclidean distances (all
    records when there are fewer than 500)."""
    x = v.astype(np.float64)
    d = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
    return float(np.percentile(d[np.triu_indices(len(x), 1)], 5))


def test_similarity_search_shape(snap_host: RunningHost, faults: FaultAdapter) -> None:
    """As refinery's data browser: the body refinery-ui sends, then every record within the threshold (at most 100),
    nearest first by Euclidean distance on the stored vectors, the query record first; each its ``recordData``."""
    c = client_for(snap_host, faults)
    g = Gateway(c)
    pid = snap_host.project_id
    eid = served_embedding(snap_host, c)
    v = vectors(seed=5).astype(np.float64)
    pairs = np.sqrt(((v[:, None, :] - v[None, :, :]) ** 2).sum(-1)) + np.eye(N) * 1e9
    q = int(pairs.min(axis=1).argmin())  # a record with a neighbour within the threshold
    query = snap_host.store.project.record_uuid(str(q))
    found = g.search_similar(pid, eid, query)
    assert faults.sent_to("POST", "/search-records-by-similarity$")[-1].json() == {
        "embeddingId": eid, "recordId": query, "attFilter": None, "recordSubKey": None}
    assert 1 < len(found) <= 100 and found[0]["id"] == query
    d = np.linalg.norm(v - v[q], axis=1)
    within = [str(j) for j in np.argsort(d, kind="stable") if d[j] <= _threshold(v)]
    assert [r["data"]["running_id"] for r in found] == within
    assert all(r["id"] == snap_host.store.project.record_uuid(r["data"]["running_id"]) for r in found)
    with pytest.raises(HostError, match="404"):
        g.search_similar(pid, "no-such-embedding", query)
    with pytest.raises(HostError):  # a project outside the user's organisation
        g.search_similar("00000000-0000-4000-8000-000000000000", eid, query)


@pytest.mark.parametrize("fault", ["500", "drop", "timeout"])
def test_transient_search_failure_is_retried(snap_host: RunningHost, faults: FaultAdapter, fault: str) -> None:
    """A search changes nothing refinery serves (it leaves a labeling session): repeated like a GET."""
    c = client_for(snap_host, faults)
    eid = served_embedding(snap_host, c)
    query = snap_host.store.project.record_uuid("3")
    before = Gateway(c).search_similar(snap_host.project_id, eid, query)
    rule = faults.fail("POST", "/search-records-by-similarity$", fault)
    assert Gateway(c).search_similar(snap_host.project_id, eid, query) == before
    assert rule.hits == 1


def test_search_renews_a_refused_browser_session_once(snap_host: RunningHost, faults: FaultAdapter) -> None:
    """oathkeeper refuses a stale browser session with a 302 to the login page: one new browser login, one repeat."""
    c = client_for(snap_host, faults)
    g = Gateway(c)
    eid = served_embedding(snap_host, c)
    query = snap_host.store.project.record_uuid("3")
    g.search_similar(snap_host.project_id, eid, query)
    redirected = faults.fail("POST", "/search-records-by-similarity$", "login-302")
    logins = len(faults.sent_to("GET", "/login/browser$"))
    assert g.search_similar(snap_host.project_id, eid, query)[0]["id"] == query
    assert redirected.hits == 1 and len(faults.sent_to("GET", "/login/browser$")) == logins + 1


def _create(host: RunningHost, c: RefineryClient) -> None:
    """``create-embedding`` from a model path no models volume holds: queued, then FAILED without loading a model."""
    g = Gateway(c)
    [attr] = [a["id"] for a in g.attributes(host.project_id) if a["name"] == "Title"]
    g.create_embedding(host.project_id, attr, "/models/not-mounted")


@pytest.mark.parametrize("fault", ["drop-after", "timeout"])
def test_create_embedding_is_not_retried_after_reaching_the_host(host: RunningHost, faults: FaultAdapter,
                                                                 fault: str) -> None:
    """A repeated create would queue a second task: once the request may have reached the gateway, it is not sent
    again, and the lost answer is an error."""
    c = client_for(host, faults)
    lost = faults.fail("POST", "/create-embedding$", fault)
    with pytest.raises(HostUnavailableError):
        _create(host, c)
    assert lost.hits == 1 and len(faults.sent_to("POST", "/create-embedding$")) == 1
    assert host.store.models.wait_idle(30)
    assert [e for e, _ in host.store.models.events].count("queued") == 1


@pytest.mark.parametrize("fault", ["refused", "500"])
def test_create_embedding_is_retried_only_when_never_sent(host: RunningHost, faults: FaultAdapter, fault: str) -> None:
    """A connection refused never reached the host: sent again. A 500 may come after the gateway queued the task:
    not repeated, one line."""
    c = client_for(host, faults)
    rule = faults.fail("POST", "/create-embedding$", fault)
    if fault == "500":
        with pytest.raises(HostError) as info:
            _create(host, c)
        assert "\n" not in str(info.value)
    else:
        _create(host, c)
    assert rule.hits == 1
    assert host.store.models.wait_idle(30)
    assert [e for e, _ in host.store.models.events].count("queued") == (0 if fault == "500" else 1)
    assert len(faults.sent_to("POST", "/create-embedding$")) == (0 if fault == "500" else 1)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
