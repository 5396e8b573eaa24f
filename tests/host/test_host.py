"""The local refinery-compatible host over real HTTP on 127.0.0.1 (requests, no TestClient).

A tiny export (40 records, random vectors) is generated per test; no model is involved. Where the host
mimics refinery (oathkeeper, the gateway proxy, the data browser's similarity search), the expected
answers are re-derived here from refinery's sources, independently of the host's code.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from kern_finetune.errors import ConfigError
from kern_finetune.host import DEMO_PASSWORD, DEMO_USER, RunningHost, check_bind, serve_in_thread

USER = "labeler@example.org"
PASSWORD = "correct horse battery staple"
N = 40
DIM = 8
LABELS = ["World", "Sports", "Business", "Sci/Tech"]


def _make_export(path: Path, n: int = N) -> Path:
    rng = np.random.default_rng(7)
    records = []
    for i in range(n):
        records.append(
            {
                "running_id": i,  # a number on purpose: the host must serve it as a string
                "Title": f"title {i}",
                "Description": f"description of record {i}",
                "Class Index": str(1 + i % 4),
                "__Topic__MANUAL": LABELS[i % 4] if i < 5 else None,
                "__Topic__WEAK_SUPERVISION": LABELS[(i + 1) % 4],
                "__Topic__WEAK_SUPERVISION__confidence": round(float(rng.uniform(0.3, 1.0)), 6),
            }
        )
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


def _vectors(seed: int, n: int = N, dim: int = DIM) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _start(tmp_path: Path, export: Path | None) -> RunningHost:
    return serve_in_thread(export, data_dir=tmp_path / "state", user_name=USER, password=PASSWORD)


def _login(url: str, password: str = PASSWORD, user: str = USER, key: str = "password_identifier") -> requests.Response:
    flow = requests.get(url + "/.ory/kratos/public/self-service/login/api", headers={"Accept": "application/json"}, timeout=10)
    assert flow.status_code == 200
    action = flow.json()["ui"]["action"]
    assert action.startswith(url)
    return requests.post(action, json={"method": "password", "password": password, key: user}, timeout=10)


def _browser_login(session: requests.Session, url: str) -> None:
    """Kratos's browser flow (refinery's login page): the ``ory_kratos_session`` cookie lands in ``session``."""
    flow = session.get(url + "/.ory/kratos/public/self-service/login/browser", headers={"Accept": "application/json"},
                       timeout=10).json()
    [csrf] = [n["attributes"]["value"] for n in flow["ui"]["nodes"] if n["attributes"]["name"] == "csrf_token"]
    resp = session.post(flow["ui"]["action"], json={"method": "password", "identifier": USER, "password": PASSWORD,
                                                    "csrf_token": csrf}, timeout=10)
    assert resp.status_code == 200 and session.cookies.get("ory_kratos_session"), resp.text


class _Api:
    """A logged-in session against one project."""

    def __init__(self, host: RunningHost) -> None:
        self.host = host
        resp = _login(host.url)
        assert resp.status_code == 200, resp.text
        self.token = resp.json()["session_token"]
        self.s = requests.Session()
        self.s.headers.update({"Authorization": f"Bearer {self.token}", "identifier": self.token})
        _browser_login(self.s, host.url)  # the gateway's routes take the browser session cookie only
        self.base = f"{host.url}/api/project/{host.project_id}"

    def get(self, path: str = "", **kw: Any) -> requests.Response:
        return self.s.get(self.base + path, timeout=30, **kw)

    def post(self, path: str, body: Any) -> requests.Response:
        return self.s.post(self.base + path, json=body, timeout=30)

    def put(self, path: str, body: Any) -> requests.Response:
        # json.dumps writes NaN/Infinity as a lenient client would; the host must refuse them
        return self.s.put(self.base + path, data=json.dumps(body), headers={"content-type": "application/json"},
                          timeout=30)

    def delete(self, path: str, **kw: Any) -> requests.Response:
        return self.s.delete(self.base + path, timeout=30, **kw)

    def export(self, **params: Any) -> list[dict[str, Any]]:
        resp = self.get("/export", params=params)
        assert resp.status_code == 200
        body = resp.json()
        assert isinstance(body, str), "the export must be double-encoded (a JSON string)"
        return json.loads(body)

    def create(self, name: str = "Title-classification-kern-finetune-test", dim: int = DIM) -> str:
        resp = self.post("/embeddings", {"name": name, "attribute": "Title", "type": "ON_ATTRIBUTE", "custom": True,
                                         "dimension": dim, "platform": "kern-finetune", "model": "test", "count": N})
        assert resp.status_code == 201, resp.text
        assert resp.json()["state"] == "INITIALIZING"
        return resp.json()["id"]

    def upload(self, eid: str, vectors: np.ndarray, ids: range, chunk: int = 0) -> requests.Response:
        tensors = [{"record_id": str(i), "data": vectors[i].tolist()} for i in ids]
        return self.put(f"/embeddings/{eid}/tensors", {"chunk": chunk, "tensors": tensors})

    def push(self, vectors: np.ndarray, name: str = "Title-classification-kern-finetune-test") -> str:
        eid = self.create(name)
        assert self.upload(eid, vectors, range(0, 25), 0).status_code == 200
        assert self.upload(eid, vectors, range(25, N), 1).status_code == 200
        resp = self.post(f"/embeddings/{eid}/finalize", {"count": N})
        assert resp.status_code == 200, resp.text
        assert resp.json()["state"] == "FINISHED"
        return eid

    def similar(self, embedding: str, record_id: str = "3", limit: int = 10) -> requests.Response:
        return self.post("/similarity", {"embedding": embedding, "record_id": record_id, "limit": limit})


def _threshold(vectors: np.ndarray) -> float:
    """refinery-neural-search ``similarity_threshold.py``: 5th percentile of the pairwise Euclidean distances
    (``cdist`` upper triangle) of the sample; with fewer than 500 records the sample is all of them."""
    assert len(vectors) < 500
    v = vectors.astype(np.float64)
    d = np.sqrt(((v[:, None, :] - v[None, :, :]) ** 2).sum(-1))
    return float(np.percentile(d[np.triu_indices(len(v), 1)], 5))


def _expected_search(vectors: np.ndarray, q: int, limit: int = 100) -> list[str]:
    """The data browser's search: records within the threshold, nearest first, the query record included."""
    d = np.linalg.norm(vectors.astype(np.float64) - vectors[q].astype(np.float64), axis=1)
    within = [i for i in range(len(d)) if d[i] <= _threshold(vectors)]
    within.sort(key=lambda i: (d[i], i != q, i))
    return [str(i) for i in within[:limit]]


@pytest.fixture()
def export(tmp_path: Path) -> Path:
    return _make_export(tmp_path / "export.json")


@pytest.fixture()
def host(tmp_path: Path, export: Path) -> Any:
    with _start(tmp_path, export) as running:
        yield running


@pytest.fixture()
def api(host: RunningHost) -> _Api:
    return _Api(host)


# ------------------------------------------------------------------------------------------------
# login and access


def test_login_ok_with_both_identifier_keys(host: RunningHost) -> None:
    for key in ("password_identifier", "identifier"):
        resp = _login(host.url, key=key)
        assert resp.status_code == 200
        body = resp.json()
        assert isinstance(body["session_token"], str) and len(body["session_token"]) >= 32
        assert body["session"]["identity"]["traits"]["email"] == USER
        assert body["session"]["active"] is True


def test_login_refused(host: RunningHost) -> None:
    for password, user in (("wrong", USER), (PASSWORD, "nobody@example.org"), ("", USER)):
        resp = _login(host.url, password=password, user=user)
        assert resp.status_code in (400, 401)
        body = resp.json()
        assert "session_token" not in body
        assert body["ui"]["messages"][0]["type"] == "error"
        assert PASSWORD not in resp.text
    bad_flow = requests.post(host.url + "/.ory/kratos/public/self-service/login?flow=nope",
                             json={"method": "password", "password": PASSWORD, "identifier": USER}, timeout=10)
    assert bad_flow.status_code in (400, 404) and "session_token" not in bad_flow.json()


def _is_oathkeeper_401(resp: requests.Response) -> bool:
    """ory/oathkeeper ``helper/errors.go`` ``ErrUnauthorized`` as its JSON error handler writes it."""
    body = resp.json()
    return (resp.status_code == 401 and "error_code" not in body
            and body["error"]["code"] == 401 and body["error"]["message"] == "Access credentials are invalid")


def test_api_requires_both_token_headers(host: RunningHost) -> None:
    url = f"{host.url}/api/project/{host.project_id}"
    token = _login(host.url).json()["session_token"]
    other = _login(host.url).json()["session_token"]
    # oathkeeper checks the bearer token first: missing, unknown or expired -> its own 401, not the proxy's
    expired, _, _ = host.store.users.create_session(USER, ttl_s=-1)
    for headers in ({}, {"identifier": token}, {"Authorization": "Bearer not-a-token", "identifier": token},
                    {"Authorization": f"Bearer {expired}", "identifier": expired}, {"Authorization": token}):
        resp = requests.get(url + "/export", headers=headers, timeout=10)
        assert _is_oathkeeper_401(resp), (headers, resp.text)
    # then the proxy: the identifier header names the user (refinery-gateway-proxy get_user_id_from_request)
    for headers in ({"Authorization": f"Bearer {token}"}, {"Authorization": f"Bearer {token}", "identifier": "nope"}):
        resp = requests.get(url + "/export", headers=headers, timeout=10)
        assert resp.status_code == 401 and resp.json() == {"error_code": "UNRECOGNIZED_USER"}
    both = {"Authorization": f"Bearer {token}", "identifier": token}
    assert requests.get(url, headers=both, timeout=10).status_code == 200
    assert requests.get(url, headers={"Authorization": f"Bearer {token}", "identifier": other}, timeout=10).status_code == 200
    whoami = requests.get(host.url + "/.ory/kratos/public/sessions/whoami", headers={"X-Session-Token": token}, timeout=10)
    assert whoami.status_code == 200 and whoami.json()["identity"]["traits"]["email"] == USER


def test_unknown_project_is_404(api: _Api) -> None:
    resp = api.s.get(f"{api.host.url}/api/project/00000000-0000-0000-0000-000000000000/export", timeout=10)
    assert resp.status_code == 404
    assert resp.json()["error_code"] == "PROJECT_NOT_FOUND"


# ------------------------------------------------------------------------------------------------
# project and export


def test_project_details(api: _Api) -> None:
    body = api.get().json()
    assert {"name", "description", "tokenizer", "attributes", "knowledge_base_ids"} <= set(body)
    assert body["knowledge_base_ids"] == [] and body["max_running_id"] == N - 1
    attrs = {a["name"]: a for a in body["attributes"]}
    assert list(attrs) == ["running_id", "Title", "Description", "Class Index"]
    assert attrs["running_id"]["is_primary_key"] is True and attrs["Title"]["is_primary_key"] is False
    assert attrs["Title"]["data_type"] == "TEXT"
    assert all(set(a) >= {"name", "data_type", "is_primary_key"} for a in body["attributes"])


def test_export_is_double_encoded_with_string_values(api: _Api) -> None:
    records = api.export()
    assert len(records) == N
    first = records[0]
    assert list(first) == ["running_id", "Title", "Description", "Class Index", "__Topic__MANUAL",
                           "__Topic__WEAK_SUPERVISION", "__Topic__WEAK_SUPERVISION__confidence"]
    assert first["running_id"] == "0" and first["__Topic__MANUAL"] == "World"
    assert records[10]["__Topic__MANUAL"] is None
    for rec in records:
        assert all(v is None or isinstance(v, str) for v in rec.values())
        conf = rec["__Topic__WEAK_SUPERVISION__confidence"]
        assert len(conf.split(".")[1]) == 4 and 0.3 <= float(conf) <= 1.0
    # num_samples as the gateway applies it: sql_df.head(int(num_samples)) (a slice [:n], also n < 0 or huge)
    assert [r["running_id"] for r in api.export(num_samples=3)] == ["0", "1", "2"]
    assert api.export(num_samples=0) == []
    assert [r["running_id"] for r in api.export(num_samples=-(N - 2))] == ["0", "1"]
    assert len(api.export(num_samples=10**23)) == N
    # not an integer: the proxy's own validation (FastAPI, pydantic 1), before the gateway
    for bad in ("abc", "1.5", ""):
        resp = api.get("/export", params={"num_samples": bad})
        assert resp.status_code == 422 and resp.json()["detail"][0]["loc"] == ["query", "num_samples"]


# ------------------------------------------------------------------------------------------------
# labels


def test_labels_show_in_export(api: _Api) -> None:
    resp = api.post("/labels", {"task": "Topic", "labels": [{"record_id": "10", "label": "Sports"},
                                                            {"record_id": "11", "label": "World"}]})
    assert resp.status_code == 200 and resp.json()["stored"] == 2
    resp = api.post("/labels", {"task": "Topic", "source_type": "model_callback",
                                "labels": [{"record_id": "13", "label": "Sports", "confidence": 0.61234}]})
    assert resp.status_code == 200
    assert api.post("/labels", {"task": "Topic", "labels": [{"record_id": "0", "label": "Sci/Tech"}]}).status_code == 200
    records = {r["running_id"]: r for r in api.export()}
    assert records["10"]["__Topic__MANUAL"] == "Sports"
    assert records["11"]["__Topic__MANUAL"] == "World"
    assert records["0"]["__Topic__MANUAL"] == "Sci/Tech"  # replaces the imported manual label
    assert records["13"]["__Topic__MANUAL"] is None
    assert records["13"]["__Topic__WEAK_SUPERVISION"] == "Sports"
    assert records["13"]["__Topic__WEAK_SUPERVISION__confidence"] == "0.6123"
    # removing a manual label
    assert api.post("/labels", {"task": "Topic", "labels": [{"record_id": "10", "label": None}]}).status_code == 200
    assert {r["running_id"]: r for r in api.export()}["10"]["__Topic__MANUAL"] is None
    # record ids are strings, as the export carries them
    assert api.post("/labels", {"task": "Topic", "labels": [{"record_id": 12, "label": "World"}]}).status_code == 422


def test_associations_as_refinery_stores_them(api: _Api) -> None:
    """refinery-gateway v1.15.1 ``import_associations``: MODEL_CALLBACK votes of a heuristic source, not labels;
    whatever fails in the gateway reaches the client as the proxy's ``200 null``."""
    before = api.export()
    body = {"associations": [["Business", 0.9], ["Sci/Tech", 1.0]], "indices": [{"running_id": "12"}, {"running_id": 0}],
            "name": "my-model", "label_task_name": "Topic", "source_type": "heuristic"}
    resp = api.post("/associations", body)
    assert resp.status_code == 200 and resp.json() == 2
    assert api.export() == before  # votes are not in the record export
    assert api.post("/associations", dict(body, source_type="MANUAL")).json() == 2  # the source exists now
    for bad in ({"label_task_name": "Nope"}, {"name": "new-model", "source_type": "MANUAL"},
                {"associations": [["NotALabel", 0.5]]}, {"indices": []}):
        resp = api.post("/associations", dict(body, **bad))
        assert resp.status_code == 200 and resp.content == b"null", bad
    resp = api.post("/associations", {"associations": []})  # a KeyError in the proxy: here a 422, never a 500
    assert resp.status_code == 422


def test_bad_labels_are_refused_and_store_nothing(api: _Api) -> None:
    resp = api.post("/labels", {"task": "Nope", "labels": [{"record_id": "1", "label": "Sports"}]})
    assert resp.status_code == 404 and resp.json()["error_code"] == "LABELING_TASK_NOT_FOUND"
    resp = api.post("/labels", {"task": "Topic", "labels": [{"record_id": "20", "label": "Sports"},
                                                            {"record_id": "999", "label": "Sports"}]})
    assert resp.status_code == 422
    assert {r["running_id"]: r for r in api.export()}["20"]["__Topic__MANUAL"] is None


# ------------------------------------------------------------------------------------------------
# push contract, search, sessions


def test_push_search_and_session(api: _Api) -> None:
    vectors = _vectors(1)
    eid = api.push(vectors)
    listed = api.get("/embeddings").json()
    assert [(e["id"], e["state"], e["dimension"]) for e in listed] == [(eid, "FINISHED", DIM)]
    resp = api.post("/similarity", {"embedding": "Title-classification-kern-finetune-test", "record_id": "3"})
    assert resp.status_code == 200
    body = resp.json()
    assert set(body) == {"record_ids", "scores", "embedding", "embedding_id", "record_id", "threshold"}
    assert body["record_ids"] == _expected_search(vectors, 3)
    assert body["record_ids"][0] == "3" and body["scores"][0] == 0.0  # the query record, first
    assert body["threshold"] == pytest.approx(_threshold(vectors), abs=1e-5)
    assert all(s <= body["threshold"] + 1e-6 for s in body["scores"]) and body["scores"] == sorted(body["scores"])
    assert (body["embedding"], body["embedding_id"], body["record_id"]) == ("Title-classification-kern-finetune-test", eid, "3")
    assert api.similar(eid, "3", 2).json()["record_ids"] == body["record_ids"][:2]  # by id too, and limit
    for limit in (0, 101, "5", True):
        assert api.similar(eid, "3", limit).status_code == 422  # type: ignore[arg-type]
    session = api.post("/labeling-sessions", {"embedding": eid, "record_id": "3"})
    assert session.status_code == 201
    sid = session.json()["id"]
    assert session.json()["record_ids"] == body["record_ids"]  # the ordered search result is the session
    again = api.get(f"/labeling-sessions/{sid}")
    assert again.status_code == 200 and again.json()["record_ids"] == session.json()["record_ids"]
    assert api.get("/labeling-sessions/nope").status_code == 404
    assert api.similar(eid, "999").status_code == 404
    assert api.similar("no-such-embedding").status_code == 404


def test_threshold_keeps_a_cluster_and_is_computed_once(tmp_path: Path, export: Path) -> None:
    """Four tight clusters of 10: the threshold (5th percentile of pairwise distances) lies inside a cluster."""
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(4, DIM)) * 5
    vectors = np.concatenate([c + rng.normal(size=(10, DIM)) * 0.3 for c in centres]).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    with _start(tmp_path, export) as host:
        api = _Api(host)
        eid = api.push(vectors)
        for q in (0, 17, 39):
            got = api.post("/similarity", {"embedding": eid, "record_id": str(q)}).json()
            assert got["record_ids"] == _expected_search(vectors, q)
            assert all(int(r) // 10 == q // 10 for r in got["record_ids"])
        threshold = got["threshold"]
    with _start(tmp_path, None) as again:  # stored with the embedding: the same after a restart
        assert _Api(again).post("/similarity", {"embedding": eid, "record_id": "5"}).json()["threshold"] == threshold


def test_both_search_routes_return_at_most_100_within_the_threshold(tmp_path: Path) -> None:
    """A query with far more than 100 records within the threshold: 150 near-duplicates among 1,000 records
    (their pairs are about 2% of all, so the 5th-percentile threshold lies well outside the duplicates).
    The push extension's search (default limit) and the data browser's route both give exactly 100."""
    n, dup, dim = 1000, 150, DIM
    rng = np.random.default_rng(5)
    vectors = rng.normal(size=(n, dim))
    vectors[:dup] = vectors[0] + rng.normal(size=(dup, dim)) * 0.01
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    with _start(tmp_path, _make_export(tmp_path / "big.json", n)) as host:
        api = _Api(host)
        name = "Title-classification-kern-finetune-many"
        resp = api.post("/embeddings", {"name": name, "attribute": "Title", "type": "ON_ATTRIBUTE", "custom": True,
                                        "dimension": dim, "platform": "kern-finetune", "model": "test", "count": n})
        assert resp.status_code == 201, resp.text
        eid = resp.json()["id"]
        assert api.upload(eid, vectors, range(n)).status_code == 200
        assert api.post(f"/embeddings/{eid}/finalize", {"count": n}).json()["state"] == "FINISHED"
        body = api.post("/similarity", {"embedding": name, "record_id": "0"}).json()
        d = np.linalg.norm(vectors.astype(np.float64) - vectors[0].astype(np.float64), axis=1)
        within = int((d <= body["threshold"]).sum())
        assert within >= dup > 100  # the precondition: the limit, not the threshold, decides
        assert len(body["record_ids"]) == 100 and body["record_ids"][0] == "0"
        got = [int(r) for r in body["record_ids"]]
        rest = np.delete(d, got)
        assert d[got].max() <= rest.min() + 1e-5  # the 100 nearest (float32 ties aside)
        url = f"{host.url}/refinery-gateway/api/v1/data-browser/{host.project_id}/search-records-by-similarity"
        found = api.s.post(url, json={"embeddingId": eid, "recordId": host.store.project.record_uuid("0"),
                                      "attFilter": None, "recordSubKey": None}, timeout=30).json()
        found = found["data"]["searchRecordsBySimilarity"]
        assert found["fullCount"] == len(found["recordList"]) == 100 and found["queryLimit"] == 100
        rows = [json.loads(item["recordData"])["data"]["running_id"] for item in found["recordList"]]
        assert rows == body["record_ids"]
        assert len(api.get(f"/labeling-sessions/{found['sessionId']}").json()["record_ids"]) == 100


def test_data_browser_similarity_route(api: _Api) -> None:
    """refinery-gateway ``fast_api/routes/data_browser.py`` ``get_search_records_by_similarity``: record UUIDs in,
    the ExtendedSearch shape out, and the ordered result stored as the session ``sessionId``."""
    vectors = _vectors(11)
    eid = api.push(vectors)
    url = f"{api.host.url}/refinery-gateway/api/v1/data-browser/{api.host.project_id}/search-records-by-similarity"
    uuid7 = api.host.store.project.record_uuid("7")
    resp = api.s.post(url, json={"embeddingId": eid, "recordId": uuid7, "attFilter": None, "recordSubKey": None},
                      timeout=30)
    assert resp.status_code == 200, resp.text
    found = resp.json()["data"]["searchRecordsBySimilarity"]
    assert set(found) == {"recordList", "queryLimit", "queryOffset", "fullCount", "sessionId"}
    assert (found["queryLimit"], found["queryOffset"]) == (100, 0)
    rows = [json.loads(item["recordData"]) for item in found["recordList"]]
    assert all(item["typename"] == "ExtendedRecord" for item in found["recordList"])
    expected = _expected_search(vectors, 7)
    assert [r["data"]["running_id"] for r in rows] == expected and found["fullCount"] == len(expected)
    assert rows[0]["id"] == uuid7 and all(r["id"] == api.host.store.project.record_uuid(r["data"]["running_id"]) for r in rows)
    session = api.get(f"/labeling-sessions/{found['sessionId']}").json()
    assert session["record_ids"] == expected
    # an attribute filter: this host's embeddings have no filter attributes, so the query record alone
    alone = api.s.post(url, json={"embeddingId": eid, "recordId": uuid7, "attFilter": '[{"key": "Title", "value": "x"}]'},
                       timeout=30).json()["data"]["searchRecordsBySimilarity"]
    assert [json.loads(i["recordData"])["id"] for i in alone["recordList"]] == [uuid7]
    # pydantic StrictStr fields; unknown ids
    for bad in ({"embeddingId": eid}, {"embeddingId": eid, "recordId": 7}, {"embeddingId": 1, "recordId": uuid7}, []):
        assert api.s.post(url, json=bad, timeout=30).status_code == 422
    assert api.s.post(url, json={"embeddingId": "nope", "recordId": uuid7}, timeout=30).status_code == 404
    assert api.s.post(url, json={"embeddingId": eid, "recordId": "7"}, timeout=30).status_code == 404
    # oathkeeper's gateway rule takes the browser session cookie only: the bearer token is refused by the redirect
    # to the login page (refinery oathkeeper/access-rules.yml, kernai:refinery-gateway:fastapi)
    for headers in ({}, {"Authorization": f"Bearer {api.token}", "identifier": api.token}):
        refused = requests.post(url, json={"embeddingId": eid, "recordId": uuid7}, headers=headers, timeout=30,
                                allow_redirects=False)
        assert refused.status_code == 302 and refused.headers["location"].endswith("/auth/login")


def test_resent_chunk_is_harmless(api: _Api) -> None:
    vectors = _vectors(2)
    eid = api.create()
    first = api.upload(eid, vectors, range(0, 25))
    assert first.json() == {"chunk": 0, "received": 25, "stored": 25, "total": 25}
    again = api.upload(eid, vectors, range(0, 25))
    assert again.status_code == 200 and again.json()["total"] == 25
    assert api.upload(eid, vectors, range(25, N), 1).json()["total"] == N
    assert api.post(f"/embeddings/{eid}/finalize", {"count": N}).status_code == 200
    # finalize is idempotent
    repeat = api.post(f"/embeddings/{eid}/finalize", {"count": N})
    assert repeat.status_code == 200 and repeat.json()["state"] == "FINISHED" and repeat.json()["id"] == eid
    assert api.similar(eid, "0", 5).json()["record_ids"] == _expected_search(vectors, 0, 5)
    # a served version takes no more vectors
    assert api.upload(eid, vectors, range(0, 5)).status_code == 409


def test_invalid_chunks_are_refused(api: _Api) -> None:
    eid = api.create()
    vectors = _vectors(3)
    cases = [
        [{"record_id": "0", "data": [0.1] * (DIM - 1)}],  # wrong dimension
        [{"record_id": "0", "data": vectors[0].tolist()}, {"record_id": "4711", "data": vectors[1].tolist()}],
        [{"record_id": "0", "data": [float("nan")] + [0.0] * (DIM - 1)}],
        [{"record_id": "0", "data": [float("inf")] + [0.0] * (DIM - 1)}],
        [{"record_id": "0", "data": [1e39] + [0.0] * (DIM - 1)}],  # overflows float32
        [{"record_id": "0", "data": ["x"] * DIM}],
        [{"record_id": "0", "data": ["0.5"] * DIM}],  # numbers as strings
        [{"record_id": "0", "data": [True] * DIM}],  # bools
        [{"record_id": "0", "data": [10**400] * DIM}],  # an integer beyond float range
        [{"record_id": "0", "data": 5}],
        [{"record_id": "0", "data": 5, "data_b64": "AAAA"}],
        [{"record_id": "0", "data": vectors[0].tolist(), "data_b64": "AAAA"}],  # both forms at once
        [{"record_id": 0, "data": vectors[0].tolist()}],  # record ids are strings
        [{"record_id": "0", "data": [[0.1]] * DIM}],
        [{"record_id": "0"}],
        [{"record_id": "0", "data_b64": "not base64!"}],
        [{"record_id": "0", "data_b64": base64.b64encode(b"\0" * (4 * DIM - 1)).decode()}],
        [{"record_id": "0", "data_b64": base64.b64encode(np.zeros(DIM + 1, "<f4").tobytes()).decode()}],
        [{"record_id": "0", "data_b64": base64.b64encode(np.full(DIM, np.nan, "<f4").tobytes()).decode()}],
    ]
    for tensors in cases:
        resp = api.put(f"/embeddings/{eid}/tensors", {"chunk": 0, "tensors": tensors})
        assert resp.status_code == 422, tensors
        assert resp.json()["error_code"]
    assert api.get(f"/embeddings/{eid}").json()["stored"] == 0  # nothing of a refused chunk was kept
    resp = api.post("/embeddings", {"name": "x", "dimension": 0})
    assert resp.status_code == 422
    for bad in ({"attribute": "NoSuchAttribute"}, {"custom": "yes"}, {"count": 10**30}, {"name": "\ud800"},
                {"type": "ON_TOKEN"}, {"platform": 5}, {"name": "../../../etc/x\n"}, {"name": "x\n"}):
        resp = api.post("/embeddings", {"name": "x", "dimension": DIM, **bad})
        assert resp.status_code == 422 and resp.json()["error_code"] == "INVALID_REQUEST", bad
    assert api.put("/embeddings/not-an-id/tensors", {"chunk": 0, "tensors": []}).status_code == 404


def test_incomplete_finalize_keeps_old_served(api: _Api) -> None:
    old = _vectors(4)
    old_id = api.push(old)
    before = api.similar(old_id, "7", 10).json()["record_ids"]
    new = _vectors(5)
    eid = api.create()
    assert api.upload(eid, new, range(0, 30)).status_code == 200
    resp = api.post(f"/embeddings/{eid}/finalize", {"count": 30})
    assert resp.status_code == 409 and resp.json()["error_code"] == "EMBEDDING_INCOMPLETE"
    assert [e["id"] for e in api.get("/embeddings").json()] == [old_id]
    name = "Title-classification-kern-finetune-test"
    assert api.similar(name, "7", 10).json()["record_ids"] == before
    assert api.similar(eid, "7").status_code == 404  # a staged version is not searchable
    staged = api.get("/embeddings", params={"include_staged": "true"}).json()
    assert {e["id"]: e["served"] for e in staged} == {old_id: True, eid: False}
    # completing it later swaps atomically: the new one replaces the old one
    assert api.upload(eid, new, range(30, N), 1).status_code == 200
    assert api.post(f"/embeddings/{eid}/finalize", {"count": N}).status_code == 200
    assert [e["id"] for e in api.get("/embeddings").json()] == [eid]
    assert api.similar(name, "7", 10).json()["record_ids"] == _expected_search(new, 7, 10)
    assert api.similar(old_id, "7").status_code == 404


def test_aborted_push_is_invisible(api: _Api) -> None:
    old_id = api.push(_vectors(6))
    eid = api.create()
    assert api.upload(eid, _vectors(7), range(0, N)).status_code == 200
    resp = api.delete(f"/embeddings/{eid}")
    assert resp.status_code == 200 and resp.json()["deleted"] is True
    assert api.get(f"/embeddings/{eid}").status_code == 404
    assert api.post(f"/embeddings/{eid}/finalize", {"count": N}).status_code == 404
    assert [e["id"] for e in api.get("/embeddings", params={"include_staged": "true"}).json()] == [old_id]
    assert api.similar("Title-classification-kern-finetune-test").status_code == 200
    # the served version is not dropped by a stray abort
    resp = api.delete(f"/embeddings/{old_id}")
    assert resp.status_code == 409 and resp.json()["error_code"] == "EMBEDDING_SERVED"
    assert api.delete(f"/embeddings/{old_id}", params={"force": "true"}).status_code == 200
    assert api.get("/embeddings").json() == []


# ------------------------------------------------------------------------------------------------
# restart, configuration


def test_restart_keeps_embeddings_labels_and_sessions(tmp_path: Path, export: Path) -> None:
    vectors = _vectors(8)
    with _start(tmp_path, export) as first:
        api = _Api(first)
        eid = api.push(vectors)
        assert api.post("/labels", {"task": "Topic", "labels": [{"record_id": "30", "label": "Business"}]}).status_code == 200
        sid = api.post("/labeling-sessions", {"embedding": eid, "record_id": "1"}).json()["id"]
        project_id, token = first.project_id, api.token
    with _start(tmp_path, None) as second:  # no export needed once imported
        assert second.project_id == project_id
        api2 = _Api(second)
        assert [e["id"] for e in api2.get("/embeddings").json()] == [eid]
        assert api2.similar(eid, "1", 6).json()["record_ids"] == _expected_search(vectors, 1, 6)
        assert {r["running_id"]: r for r in api2.export()}["30"]["__Topic__MANUAL"] == "Business"
        assert api2.get(f"/labeling-sessions/{sid}").json()["record_ids"][0] == "1"
        # the earlier token survives the restart
        old = requests.get(f"{second.url}/api/project/{project_id}", timeout=10,
                           headers={"Authorization": f"Bearer {token}", "identifier": token})
        assert old.status_code == 200
    # same export again: fine; another export into the same data dir: refused
    with _start(tmp_path, export) as third:
        assert third.project_id == project_id
    other = _make_export(tmp_path / "other.json", n=12)
    with pytest.raises(ConfigError):
        _start(tmp_path, other)


def test_changed_password_revokes_sessions(tmp_path: Path, export: Path) -> None:
    with _start(tmp_path, export) as first:
        token = _Api(first).token
    with serve_in_thread(None, data_dir=tmp_path / "state", user_name=USER, password="a new password") as second:
        url = f"{second.url}/api/project/{second.project_id}"
        assert requests.get(url, headers={"Authorization": f"Bearer {token}", "identifier": token}, timeout=10).status_code == 401
        assert _login(second.url).status_code == 400
        assert _login(second.url, password="a new password").status_code == 200


def test_demo_credentials_stay_on_loopback(tmp_path: Path, export: Path) -> None:
    check_bind("127.0.0.1", DEMO_USER, DEMO_PASSWORD)
    check_bind("::1", DEMO_USER, DEMO_PASSWORD)
    with pytest.raises(ConfigError):
        check_bind("0.0.0.0", DEMO_USER, DEMO_PASSWORD)
    check_bind("0.0.0.0", USER, PASSWORD)
    with serve_in_thread(export, data_dir=tmp_path / "demo") as demo:
        assert demo.url.startswith("http://127.0.0.1:")
        assert _login(demo.url, password=DEMO_PASSWORD, user=DEMO_USER).status_code == 200


def test_missing_id_attribute_is_synthesized_as_running_id(tmp_path: Path) -> None:
    path = tmp_path / "noid.json"
    path.write_text(json.dumps([{"text": f"t{i}", "__Topic__MANUAL": None} for i in range(5)]), encoding="utf-8")
    with serve_in_thread(path, data_dir=tmp_path / "s", user_name=USER, password=PASSWORD) as running:
        records = _Api(running).export()
    assert [r["running_id"] for r in records] == ["0", "1", "2", "3", "4"]


def test_compact_base64_vectors(api: _Api) -> None:
    vectors = _vectors(9)
    eid = api.create()
    tensors = [{"record_id": str(i), "data_b64": base64.b64encode(vectors[i].astype("<f4").tobytes()).decode()}
               for i in range(0, 20)]
    assert api.put(f"/embeddings/{eid}/tensors", {"chunk": 0, "tensors": tensors}).json()["total"] == 20
    assert api.upload(eid, vectors, range(20, N), 1).status_code == 200  # plain lists mix freely
    assert api.post(f"/embeddings/{eid}/finalize", {"count": N}).status_code == 200
    assert api.similar(eid, "5", 8).json()["record_ids"] == _expected_search(vectors, 5, 8)


def test_state_files_are_private(tmp_path: Path, export: Path) -> None:
    with _start(tmp_path, export):
        pass
    assert (tmp_path / "state").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "state" / "host.sqlite3").stat().st_mode & 0o777 == 0o600


# ------------------------------------------------------------------------------------------------
# the real-refinery path: no push extension; a snapshot served as refinery serves an imported project

SNAPSHOT = Path(__file__).resolve().parents[1] / "data" / "ag_news_snapshot_small.zip"
_EXTENSION_ROUTES = [("POST", "/embeddings"), ("GET", "/embeddings"), ("GET", "/embeddings/x"),
                     ("POST", "/embeddings/x/finalize"), ("POST", "/similarity"), ("POST", "/labeling-sessions"),
                     ("GET", "/labeling-sessions/x"), ("POST", "/labels")]


def test_no_push_extension_answers_as_refinery(tmp_path: Path, export: Path) -> None:
    with serve_in_thread(export, data_dir=tmp_path / "s", user_name=USER, password=PASSWORD,
                         push_extension=False) as host:
        api = _Api(host)
        for method, path in _EXTENSION_ROUTES:  # the proxy (a FastAPI app) lacks them
            resp = api.s.request(method, api.base + path, json={}, timeout=30)
            assert resp.status_code == 404 and resp.json() == {"detail": "Not Found"}, (method, path)
        for method, path in (("PUT", "/embeddings/x/tensors"), ("DELETE", "/embeddings/x")):
            resp = api.s.request(method, api.base + path, json={}, timeout=30)  # oathkeeper: GET/POST rules only
            assert resp.status_code == 404 and resp.json()["error"]["message"] == "Requested url does not match any rules"
        assert _is_oathkeeper_401(requests.post(api.base + "/embeddings", json={}, timeout=30))  # auth comes first
        assert len(api.export()) == N and api.get().status_code == 200


def _snapshot_tables(path: Path = SNAPSHOT) -> dict[str, Any]:
    import zipfile

    with zipfile.ZipFile(path) as zf:
        return json.loads(zf.read(zf.namelist()[0]))


@pytest.mark.parametrize("which", ["small", "shared"])
def test_snapshot_export_as_the_gateway_builds_it(tmp_path: Path, which: str) -> None:
    """Columns, row order and extraction arrays as refinery-submodule-model ``build_full_record_sql_export`` makes
    them: on the bundled 200-record cut and on the real AG News snapshot (3,000 records, 65 with manual spans)."""
    from conftest import shared_file

    path = SNAPSHOT if which == "small" else shared_file("data/refinery_snapshots/ag_news.zip")
    data = _snapshot_tables(path)
    with serve_in_thread(path, data_dir=tmp_path / "s", user_name=USER, password=PASSWORD) as host:
        api = _Api(host)
        records = api.export()
        tasks = {t["name"]: t["task_type"] for t in api.get().json()["labeling_tasks"]}
    assert list(records[0]) == [
        "running_id", "headline",  # attributes by relative_position
        "__topic__MANUAL", "__topic__WEAK_SUPERVISION", "__topic__WEAK_SUPERVISION__confidence",  # classification
        "headline__indicators__MANUAL", "headline__indicators__WEAK_SUPERVISION",  # extraction, kept
        "headline__indicators__WEAK_SUPERVISION__confidence",
    ]
    assert tasks == {"topic": "MULTICLASS_CLASSIFICATION", "indicators": "INFORMATION_EXTRACTION"}
    assert len(records) == len(data["records_data"])
    ids = [r["running_id"] for r in records]
    assert ids == sorted(ids) and ids[:3] != sorted(ids, key=int)[:3]  # ORDER BY 1: the text, "10" < "2"
    # every valid manual span of the snapshot sits in its record's array as B-/I-<label>; the rest is OUTSIDE
    uuid_of = {str(r["data"]["running_id"]): r["id"] for r in data["records_data"]}
    label_name = {lab["id"]: lab["name"] for lab in data["labeling_task_labels_data"]}
    tokens: dict[str, list[dict[str, Any]]] = {}
    for tok in data["record_label_association_tokens_data"]:
        tokens.setdefault(tok["record_label_association_id"], []).append(tok)
    expected: dict[str, dict[int, str]] = {}
    for rla in data["record_label_associations_data"]:
        if rla["return_type"] == "YIELD" and rla["source_type"] == "MANUAL" and rla["is_valid_manual_label"]:
            for tok in tokens[rla["id"]]:
                tag = ("B-" if tok["is_beginning_token"] else "I-") + label_name[rla["labeling_task_label_id"]]
                expected.setdefault(rla["record_id"], {})[tok["token_index"]] = tag
    assert expected
    for rec in records:
        manual = rec["headline__indicators__MANUAL"]
        assert isinstance(manual, list) and len(manual) == len(rec["headline__indicators__WEAK_SUPERVISION"])
        spans = expected.get(uuid_of[rec["running_id"]], {})
        assert {i: tag for i, tag in enumerate(manual) if tag != "OUTSIDE"} == spans


def test_snapshot_embedding_is_searchable_under_its_import_name(tmp_path: Path) -> None:
    """The snapshot's tensors become a served embedding, renamed as the gateway's import renames one without
    ``platform`` (``__transform_embedding_by_name``), searchable through the data browser's route."""
    data = _snapshot_tables()
    with serve_in_thread(SNAPSHOT, data_dir=tmp_path / "s", user_name=USER, password=PASSWORD,
                         push_extension=False) as host:
        [emb] = host.store.embeddings.list_embeddings()
        assert (emb["name"], emb["platform"], emb["model"], emb["dimension"]) == (
            "headline-classification-huggingface-distilbert-base-uncased", "huggingface", "distilbert-base-uncased", 64)
        api = _Api(host)
        query = data["records_data"][5]["id"]
        url = f"{host.url}/refinery-gateway/api/v1/data-browser/{host.project_id}/search-records-by-similarity"
        resp = api.s.post(url, json={"embeddingId": emb["id"], "recordId": query}, timeout=30)
        assert resp.status_code == 200, resp.text
        got = [json.loads(i["recordData"])["id"] for i in resp.json()["data"]["searchRecordsBySimilarity"]["recordList"]]
    uuids = [t["record_id"] for t in data["embedding_tensors_data"]]
    vectors = np.asarray([t["data"] for t in data["embedding_tensors_data"]], dtype=np.float32)
    want = _expected_search(vectors, uuids.index(query))
    assert got[0] == query and got == [uuids[int(i)] for i in want]


# ------------------------------------------------------------------------------------------------
# fuzz: no body a client sends gives a 5xx, on any route

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_KEYS = ["name", "dimension", "type", "custom", "count", "attribute", "platform", "model", "chunk", "tensors",
         "record_id", "data", "data_b64", "embedding", "limit", "task", "labels", "label", "confidence", "source_type",
         "associations", "indices", "label_task_name", "running_id", "embeddingId", "recordId", "attFilter",
         "recordSubKey", "method", "password", "identifier", "password_identifier"]
_SCALARS = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
            | st.sampled_from(["0", "1", "Topic", "heuristic", "MANUAL", "World", "ON_ATTRIBUTE", "AAAA", "[]", "\ud800"]))
_JSON = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.sampled_from(_KEYS) | st.text(max_size=6), inner, max_size=5), max_leaves=16)
_BODIES = _JSON | st.dictionaries(st.sampled_from(_KEYS), _JSON, max_size=6)


@pytest.fixture(scope="module")
def fuzz_host(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("fuzz")
    with _start(tmp, _make_export(tmp / "export.json")) as running:
        api = _Api(running)
        served = api.push(_vectors(12))
        staged = api.create("Title-classification-kern-finetune-staged")
        yield api, served, staged


def _fuzz_calls(api: _Api, staged: str) -> list[tuple[str, str]]:
    gateway = f"{api.host.url}/refinery-gateway/api/v1/data-browser/{api.host.project_id}/search-records-by-similarity"
    return [
        ("POST", gateway), ("POST", api.base + "/associations"), ("POST", api.base + "/labels"),
        ("POST", api.base + "/embeddings"), ("PUT", f"{api.base}/embeddings/{staged}/tensors"),
        ("POST", f"{api.base}/embeddings/{staged}/finalize"), ("POST", api.base + "/similarity"),
        ("POST", api.base + "/labeling-sessions"), ("GET", api.base + "/export"), ("GET", api.base + "/embeddings"),
        ("POST", api.host.url + "/.ory/kratos/public/self-service/login?flow=x"), ("GET", api.base),
    ]


@settings(max_examples=150, derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=_BODIES, query=st.text(max_size=8), route=st.integers(min_value=0, max_value=11))
def test_fuzzed_bodies_never_give_a_server_error(fuzz_host: Any, body: Any, query: str, route: int) -> None:
    """One route per example, each route about a dozen times; a fresh connection per request."""
    api, served, staged = fuzz_host
    method, url = _fuzz_calls(api, staged)[route]
    payload = json.dumps(body)  # NaN and Infinity included, as a lenient client writes them
    resp = requests.request(method, url, data=payload, params={"num_samples": query, "include_staged": query},
                            headers={**api.s.headers, "content-type": "application/json"}, cookies=api.s.cookies,
                            timeout=30)
    assert resp.status_code < 500, (method, url, payload[:200], resp.text[:300])
    resp.json()  # always a JSON answer


def test_fuzzed_host_still_serves(fuzz_host: Any) -> None:
    api, served, _ = fuzz_host
    assert api.similar(served, "1").status_code == 200
    assert len(api.export()) == N
