"""RefineryClient (refinery/api.py, transport.py, push.py) over real HTTP against the product's own host on 127.0.0.1.

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
from kern_finetune.refinery.api import RefineryClient, client_from_options
from kern_finetune.refinery.columns import embedding_name
from kern_finetune.errors import (
    AuthError,
    ConfigError,
    ExportError,
    HostError,
    HostUnavailableError,
    ProjectNotFoundError,
    PushError,
)
from kern_finetune.host import RunningHost, serve_in_thread

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


def ids(n: int = N) -> list[str]:
    return [str(i) for i in range(n)]


def staged_and_served(c: RefineryClient) -> list[dict[str, Any]]:
    resp = c.request("GET", f"/api/project/{c.project_id}/embeddings", params={"include_staged": "true"})
    return resp.json()


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


def test_200_null_on_create_is_not_taken_for_an_id(host: RunningHost, faults: FaultAdapter) -> None:
    c = client_for(host, faults)
    faults.fail("POST", "/embeddings$", "null")
    with pytest.raises(HostUnavailableError, match="gateway"):
        c.push_embedding(None, NAME, ids(), vectors(), attribute="Title", model="m")
    assert not faults.sent_to("PUT", "/tensors$")


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


# ---- doors --------------------------------------------------------------------------------------


def test_push_extension_probe(host: RunningHost, faults: FaultAdapter) -> None:
    c = client_for(host, faults)
    assert c.offers_push_extension() is True
    # what refinery's proxy answers for a route it lacks, and a gateway that lacks it behind the proxy
    faults.respond("GET", "/embeddings$", 404, '{"detail": "Not Found"}')
    assert c.offers_push_extension() is False
    faults.fail("GET", "/embeddings$", "null")
    assert c.offers_push_extension() is False
    with pytest.raises(ProjectNotFoundError):
        c.offers_push_extension("00000000-0000-0000-0000-000000000000")


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
        (PushError, lambda: c.push_embedding(None, NAME, ids(3), vectors(3), attribute="Title", model="m")),
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


# ---- push ---------------------------------------------------------------------------------------


def test_push_happy_path_normalises_and_serves(host: RunningHost, faults: FaultAdapter) -> None:
    c = client_for(host, faults)
    v = vectors() * 7.0
    msgs: list[str] = []
    res = c.push_embedding(None, NAME, ids(), v, attribute="Title", model="all-MiniLM-L6-v2", chunk_size=7,
                           progress=msgs.append)
    assert res.count == N and res.chunks == 5 and res.dimension == 8
    assert [e["id"] for e in c.list_embeddings() if e["name"] == NAME] == [res.embedding_id]
    # the host ranks by Euclidean distance between what it stores: the L2-normalised vectors
    unit = v / np.linalg.norm(v, axis=1, keepdims=True)
    found = c.search_similar(NAME, "4")
    want = {r: float(np.linalg.norm(unit[int(r)] - unit[4])) for r in found.record_ids}
    assert found.record_ids and np.allclose(found.scores, [want[r] for r in found.record_ids], atol=1e-5)
    assert any("chunk 5/5" in m for m in msgs)
    create = faults.sent_to("POST", "/embeddings$")[0].json()
    assert create["custom"] is True and create["type"] == "ON_ATTRIBUTE" and create["platform"] == "kern-finetune"
    assert create["count"] == N and create["dimension"] == 8
    chunk = faults.sent_to("PUT", "/tensors$")[0].json()
    assert chunk["chunk"] == 0 and len(chunk["tensors"]) == 7
    assert [e["id"] for e in staged_and_served(c)] == [res.embedding_id]  # nothing staged left


def test_default_name() -> None:
    assert embedding_name("Title", model="/models/all-MiniLM-L6-v2/") == NAME
    assert embedding_name("Title", model="sentence-transformers/all-MiniLM-L6-v2", platform="huggingface") == (
        "Title-classification-huggingface-all-MiniLM-L6-v2"
    )


@pytest.mark.parametrize("fault", ["500", "drop", "timeout", "null"])
def test_transient_chunk_failure_is_retried(host: RunningHost, faults: FaultAdapter, fault: str) -> None:
    c = client_for(host, faults)
    rule = faults.fail("PUT", "/tensors$", fault)
    res = c.push_embedding(None, NAME, ids(), vectors(), attribute="Title", model="m", chunk_size=10)
    assert rule.hits == 1
    assert [e["id"] for e in staged_and_served(c)] == [res.embedding_id]


@pytest.mark.parametrize("fault", ["500", "drop", "timeout"])
def test_persistent_failure_keeps_old_embedding_and_drops_staged(host: RunningHost, faults: FaultAdapter,
                                                                 fault: str) -> None:
    c = client_for(host, faults, retries=1)
    old = c.push_embedding(None, NAME, ids(), vectors(seed=1), attribute="Title", model="m")
    before = c.search_similar(NAME, "3")
    rule = faults.fail("PUT", "/tensors$", fault, times=10)
    with pytest.raises(HostUnavailableError, match="previous embedding stays served"):
        c.push_embedding(None, NAME, ids(), vectors(seed=2), attribute="Title", model="m", chunk_size=10)
    assert rule.hits == 2  # the first chunk and its one retry; nothing after it was sent
    assert [e["id"] for e in staged_and_served(c)] == [old.embedding_id]  # the staged version is dropped
    assert c.search_similar(NAME, "3") == before
    assert len(faults.sent_to("DELETE", "/embeddings/")) == 1


def test_refused_chunk_is_push_error_and_nothing_visible(host: RunningHost) -> None:
    c = client_for(host)
    with pytest.raises(PushError, match="UNKNOWN_RECORD"):
        c.push_embedding(None, NAME, ids(N - 1) + ["999"], vectors(), attribute="Title", model="m")
    assert staged_and_served(c) == []


def test_incomplete_push_is_refused_at_finalize(host: RunningHost) -> None:
    c = client_for(host)
    with pytest.raises(PushError, match="EMBEDDING_INCOMPLETE"):
        c.push_embedding(None, NAME, ids(20), vectors(20), attribute="Title", model="m")
    assert staged_and_served(c) == []


def test_finalize_answer_lost_is_retried_idempotently(host: RunningHost, faults: FaultAdapter) -> None:
    c = client_for(host, faults)
    lost = faults.fail("POST", "/finalize$", "drop-after")
    res = c.push_embedding(None, NAME, ids(), vectors(), attribute="Title", model="m")
    assert lost.hits == 1
    assert [e["id"] for e in c.list_embeddings()] == [res.embedding_id]
    assert len(faults.sent_to("POST", "/finalize$")) == 2  # the lost one and the idempotent repeat


def test_finalize_answer_lost_for_good_still_detects_success(host: RunningHost, faults: FaultAdapter) -> None:
    c = client_for(host, faults, retries=1)
    faults.fail("POST", "/finalize$", "drop-after")
    faults.fail("POST", "/finalize$", "drop", times=5)
    res = c.push_embedding(None, NAME, ids(), vectors(), attribute="Title", model="m")
    assert [e["id"] for e in c.list_embeddings()] == [res.embedding_id]
    assert not faults.sent_to("DELETE", "/embeddings/")


def test_create_is_not_retried_after_reaching_the_host(host: RunningHost, faults: FaultAdapter) -> None:
    c = client_for(host, faults)
    faults.fail("POST", "/embeddings$", "drop-after")
    with pytest.raises(HostUnavailableError):
        c.push_embedding(None, NAME, ids(), vectors(), attribute="Title", model="m")
    assert len(faults.sent_to("POST", "/embeddings$")) == 1
    assert c.list_embeddings() == []


def test_create_is_retried_when_never_sent(host: RunningHost, faults: FaultAdapter) -> None:
    c = client_for(host, faults)
    refused = faults.fail("POST", "/embeddings$", "refused")
    res = c.push_embedding(None, NAME, ids(), vectors(), attribute="Title", model="m")
    assert refused.hits == 1 and len(faults.sent_to("POST", "/embeddings$")) == 1
    assert [e["id"] for e in c.list_embeddings()] == [res.embedding_id]


def test_bad_vectors_are_refused_before_any_request(host: RunningHost, faults: FaultAdapter) -> None:
    c = client_for(host, faults)
    bad = vectors()
    bad[3, 0] = np.nan
    for args in ((ids(), bad), (ids(N - 1), vectors()), (ids(N - 1) + ["0"], vectors()), (ids(), np.zeros((N, 8)))):
        with pytest.raises(PushError):
            c.push_embedding(None, NAME, args[0], args[1], attribute="Title", model="m")
    assert not faults.sent_to("POST", "/embeddings$")


def test_similarity_search_shape(host: RunningHost) -> None:
    """As refinery's data browser: at most 100 records, nearest first, the query record first.

    Tolerant of today's host, which leaves the query out and applies no threshold (the host helper's
    rewrite adds both); the ranking of the neighbours is checked either way.
    """
    c = client_for(host)
    v = vectors(seed=5)
    c.push_embedding(None, NAME, ids(), v, attribute="Title", model="m")
    found = c.search_similar(NAME, "7")
    assert 1 <= len(found.record_ids) <= 100 and found.record_id == "7"
    if found.query_included:
        assert found.scores[0] == pytest.approx(0.0, abs=1e-6)
    assert found.scores == sorted(found.scores)
    unit = v / np.linalg.norm(v, axis=1, keepdims=True)
    order = [str(j) for j in np.argsort(np.linalg.norm(unit - unit[7], axis=1)) if j != 7]
    assert found.neighbours == order[: len(found.neighbours)]
    if found.threshold is not None:
        assert all(s <= found.threshold + 1e-6 for s in found.scores)
    with pytest.raises(HostError, match="EMBEDDING_NOT_FOUND"):
        c.search_similar("no-such-embedding", "7")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
