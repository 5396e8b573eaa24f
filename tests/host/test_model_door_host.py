"""The local host replays the model door's side of refinery over real HTTP on 127.0.0.1: the Kratos browser flow
with CSRF, oathkeeper's cookie-only gateway rule (302 to the login page), the gateway's organisation check, the
silent drop of a duplicate embedding name, and the embedder computing a model folder from a mounted volume.

The expected answers are read from refinery's sources (cited per test), not from the host's code. The model is the
real small one the package ships (all-MiniLM-L6-v2), copied into the "volume".
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from kern_finetune.vectors.encode import default_model_path, load_sentence_transformer
from kern_finetune.errors import AuthError
from kern_finetune.host import RunningHost, serve_in_thread
from kern_finetune.refinery.api import RefineryClient
from kern_finetune.refinery.embedder import reduce_like_embedder
from kern_finetune.refinery.gateway import BROWSER_LOGIN_PATH, GATEWAY_API, Gateway, huggingface_config

USER, PASSWORD = "door@example.org", "door-pw-5e1f"
N = 70  # >= 64: the embedder's PCA-64 applies


def _records(n: int = N) -> list[dict[str, Any]]:
    topics = ["football match score", "stock market shares", "new phone chip", "election vote parliament"]
    return [{"running_id": str(i), "Title": f"{topics[i % 4]} story {i}", "Class Index": str(i % 4)}
            for i in range(n)]


@pytest.fixture(scope="module")
def volume(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models volume holding the base model as ``base``."""
    models = tmp_path_factory.mktemp("models")
    shutil.copytree(default_model_path(), models / "base")
    return models


@pytest.fixture()
def host(tmp_path: Path, volume: Path) -> Iterator[RunningHost]:
    export = tmp_path / "export.json"
    export.write_text(json.dumps(_records()))
    with serve_in_thread(export, data_dir=tmp_path / "host", user_name=USER, password=PASSWORD,
                         models_volumes=[(volume, "/models")]) as running:
        yield running


def _gateway(host: RunningHost, password: str = PASSWORD) -> Gateway:
    return Gateway(RefineryClient(host.url, USER, password, project_id=host.project_id, retries=0))


def _url(host: RunningHost, tail: str) -> str:
    return f"{host.url}{GATEWAY_API}/embedding/{host.project_id}/{tail}"


def test_browser_flow_needs_the_csrf_token_in_body_and_cookie(host: RunningHost) -> None:
    """Kratos's browser flow: the flow JSON carries a hidden ``csrf_token`` node and the same token in a cookie;
    a submission without either is refused 403 ``security_csrf_violation``; a good one sets ``ory_kratos_session``
    and answers no session token (that is the API flow's)."""
    s = requests.Session()
    flow = s.get(host.url + BROWSER_LOGIN_PATH, headers={"Accept": "application/json"}, timeout=10)
    assert flow.status_code == 200 and flow.json()["type"] == "browser"
    [csrf] = [n["attributes"]["value"] for n in flow.json()["ui"]["nodes"] if n["attributes"]["name"] == "csrf_token"]
    assert [c.value for c in s.cookies if c.name.startswith("csrf_token")] == [csrf]
    action = flow.json()["ui"]["action"]
    body = {"method": "password", "identifier": USER, "password": PASSWORD}
    no_token = s.post(action, json=body, timeout=10)
    no_cookie = requests.post(action, json={**body, "csrf_token": csrf}, timeout=10)
    for refused in (no_token, no_cookie):
        assert refused.status_code == 403 and refused.json()["error"]["id"] == "security_csrf_violation"
    wrong = s.post(action, json={**body, "password": "nope", "csrf_token": csrf}, timeout=10)
    assert wrong.status_code == 400 and "ory_kratos_session" not in s.cookies
    ok = s.post(action, json={**body, "csrf_token": csrf}, timeout=10)
    assert ok.status_code == 200 and "session_token" not in ok.json() and s.cookies.get("ory_kratos_session")
    # Kratos refuses a second flow while the session cookie is sent
    assert s.get(host.url + BROWSER_LOGIN_PATH, headers={"Accept": "application/json"}, timeout=10).status_code == 400


def test_gateway_takes_the_session_cookie_only(host: RunningHost) -> None:
    """refinery ``oathkeeper/access-rules.yml`` ``kernai:refinery-gateway:fastapi``: ``cookie_session`` only, errors
    by ``redirect`` to ``http://localhost:4455/auth/login``; a bearer token from the API flow does not count."""
    token = requests.post(
        requests.get(host.url + "/.ory/kratos/public/self-service/login/api", timeout=10).json()["ui"]["action"],
        json={"method": "password", "identifier": USER, "password": PASSWORD}, timeout=10).json()["session_token"]
    url = _url(host, "embeddings-by-project")
    for headers, cookies in (({"Authorization": f"Bearer {token}", "identifier": token}, {}), ({}, {}),
                             ({}, {"ory_kratos_session": "forged"}), ({}, {"some_other_cookie": token})):
        resp = requests.get(url, headers=headers, cookies=cookies, allow_redirects=False, timeout=10)
        assert resp.status_code == 302 and resp.headers["location"].endswith("/auth/login"), (headers, cookies)
    g = _gateway(host)
    assert g.embeddings(host.project_id) == []
    # the client says so in one line when even a fresh session is refused
    host.store.users.configure_user(USER, "changed-pw")  # revokes every session
    with pytest.raises(AuthError) as info:
        g.embeddings(host.project_id)
    assert "\n" not in str(info.value) and "changed-pw" not in str(info.value)


def test_project_outside_the_organisation_is_the_gateways_500(host: RunningHost) -> None:
    """``check_project_access_dep``: not 36 characters, or no project of the user's organisation, raises inside the
    gateway; ``middleware/database_session.py`` answers ``500`` ``An error occurred``."""
    g = _gateway(host)
    g.login()
    for pid in ("short", "00000000-0000-4000-8000-000000000000"):
        for method, tail in (("GET", "embeddings-by-project"), ("POST", "create-embedding"),
                             ("DELETE", "x/delete-embedding")):
            resp = g.t.session.request(method, f"{host.url}{GATEWAY_API}/embedding/{pid}/{tail}",
                                       json={"attribute_id": "a", "config": "{}"}, allow_redirects=False, timeout=10)
            assert (resp.status_code, resp.text) == (500, "An error occurred"), (pid, tail)


def test_create_queues_computes_and_drops_a_duplicate_name(host: RunningHost, volume: Path) -> None:
    """``create-embedding`` queues; the task makes ``<attribute>-classification-huggingface-<model>``
    (``get_embedding_name``); a second task of that name is dropped without a word (``__start_task``); the
    embedder computes ``SentenceTransformer(path).encode`` in batches of 128 and, with >= 64 records, the PCA-64
    (refinery-embedder ``util/embedders.py``); a path outside the volume does not exist there: FAILED."""
    g = _gateway(host)
    pid = host.project_id
    [attr] = [a["id"] for a in g.attributes(pid) if a["name"] == "Title"]
    g.create_embedding(pid, attr, "/models/base")
    g.create_embedding(pid, attr, "/models/base")  # same name: dropped silently, still answered ok
    g.create_embedding(pid, attr, "/opt/models/base")  # not inside any volume
    assert host.store.models.wait_idle(120)
    nodes = {n["name"]: n for n in g.embeddings(pid)}
    assert set(nodes) == {"Title-classification-huggingface-/models/base", "Title-classification-huggingface-/opt/models/base"}
    done, failed = nodes["Title-classification-huggingface-/models/base"], nodes["Title-classification-huggingface-/opt/models/base"]
    assert (done["state"], done["count"], done["dimension"], done["attributeId"]) == ("FINISHED", N, 64, attr)
    assert failed["state"] == "FAILED" and failed["count"] == 0
    events = host.store.models.events
    # the second create is queued while the first task runs (whether before or after its ENCODING is a race
    # between the HTTP call and the model load) and dropped when it reaches the one slot
    seen = [e for e, n in events if n == done["name"]]
    assert [e for e in seen if e != "queued"] == ["INITIALIZING", "ENCODING", "FINISHED", "dropped"]
    assert seen[0] == "queued" and seen.count("queued") == 2 and seen.index("dropped") == len(seen) - 1
    # the vectors: the model's, PCA-64 as the embedder fits it
    texts = [r["Title"] for r in _records()]
    want = reduce_like_embedder(load_sentence_transformer(volume / "base").encode(texts, batch_size=128))
    got = host.store.search._load_index(done["id"]).matrix
    assert np.allclose(np.abs(got), np.abs(want), atol=2e-3)  # PCA components are defined up to sign
    # searchable with the host's similarity search (cookie session, the data browser's route)
    search = f"{host.url}{GATEWAY_API}/data-browser/{pid}/search-records-by-similarity"
    query = host.store.project.uuids[0]
    found = g.t.session.post(search, json={"embeddingId": done["id"], "recordId": query}, timeout=30)
    assert found.status_code == 200 and found.json()["data"]["searchRecordsBySimilarity"]["fullCount"] >= 1
    # delete: gone from the list; an unknown id is answered ok as the gateway does
    g.delete_embedding(pid, done["id"])
    g.delete_embedding(pid, "no-such-embedding")
    assert [n["name"] for n in g.embeddings(pid)] == [failed["name"]]
    assert host.store.models.events[-1] == ("deleted", done["name"])


def test_create_body_is_checked_as_the_gateway_checks_it(host: RunningHost) -> None:
    """``CreateEmbeddingBody``: ``attribute_id`` and ``config`` StrictStr (422); then the route's own steps raise
    (500): config not JSON, no ``embeddingType``, another type, an unknown attribute."""
    g = _gateway(host)
    g.login()
    pid = host.project_id
    [attr] = [a["id"] for a in g.attributes(pid) if a["name"] == "Title"]
    url = _url(host, "create-embedding")
    for body in ({"attribute_id": attr}, {"attribute_id": attr, "config": {"embeddingType": "ON_ATTRIBUTE"}}, [], {}):
        assert g.t.session.post(url, json=body, timeout=10).status_code == 422
    for config in ("not json", "{}", json.dumps({"embeddingType": "ON_RECORD"}), "[]"):
        resp = g.t.session.post(url, json={"attribute_id": attr, "config": config}, timeout=10)
        assert (resp.status_code, resp.text) == (500, "An error occurred"), config
    resp = g.t.session.post(url, json={"attribute_id": "nope", "config": huggingface_config("/models/base")}, timeout=10)
    assert resp.status_code == 500
    assert host.store.models.events == []  # nothing was queued
