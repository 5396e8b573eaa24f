"""The local refinery-compatible host over real HTTP on 127.0.0.1 (requests, no TestClient).

A tiny export (40 records) is generated per test; where a test needs vectors in the host (search, the
threshold, the 100-result limit, fuzzing), the host imports a snapshot carrying them (``host_snapshot.py``), as
refinery's own snapshot import does; no model is involved. Where the host mimics refinery (oathkeeper, the
gateway proxy, the data browser's similarity search), the expected answers are re-derived here from refinery's
sources, independently of the host's code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from host_snapshot import embedding_name, write_snapshot_zip
from kern_finetune.errors import ConfigError
from kern_finetune.host import DEMO_PASSWORD, DEMO_USER, RunningHost, check_bind, serve_in_thread
from kern_finetune.host.api_errors import ApiError

USER = "labeler@example.org"
PASSWORD = "correct horse battery staple"
N = 40
DIM = 8
LABELS = ["World", "Sports", "Business", "Sci/Tech"]
EMBEDDING = embedding_name("Title", "test-model")


def _rows(n: int = N) -> list[dict[str, Any]]:
    return [{"running_id": i,  # a number on purpose: the host must serve it as a string
             "Title": f"title {i}", "Description": f"description of record {i}", "Class Index": str(1 + i % 4)}
            for i in range(n)]


def _make_export(path: Path, n: int = N) -> Path:
    rng = np.random.default_rng(7)
    records = []
    for row in _rows(n):
        i = row["running_id"]
        records.append(
            {
                **row,
                "__Topic__MANUAL": LABELS[i % 4] if i < 5 else None,
                "__Topic__WEAK_SUPERVISION": LABELS[(i + 1) % 4],
                "__Topic__WEAK_SUPERVISION__confidence": round(float(rng.uniform(0.3, 1.0)), 6),
            }
        )
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


def _make_snapshot(path: Path, vectors: np.ndarray) -> Path:
    """A snapshot of ``len(vectors)`` records like :func:`_make_export`'s (same attributes, the task Topic with
    manual and weak labels) whose Title embedding :data:`EMBEDDING` holds ``vectors`` (row i: running_id i)."""
    n = len(vectors)
    return write_snapshot_zip(path, _rows(n), vectors,
                              manual={i: LABELS[i % 4] for i in range(min(n, 5))},
                              weak={i: (LABELS[(i + 1) % 4], 0.5) for i in range(n)})


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
    """A logged-in session against one project: the proxy's routes (bearer token and identifier header) and the
    gateway's (the browser session cookie)."""

    def __init__(self, host: RunningHost) -> None:
        self.host = host
        resp = _login(host.url)
        assert resp.status_code == 200, resp.text
        self.token = resp.json()["session_token"]
        self.s = requests.Session()
        self.s.headers.update({"Authorization": f"Bearer {self.token}", "identifier": self.token})
        _browser_login(self.s, host.url)  # the gateway's routes take the browser session cookie only
        self.base = f"{host.url}/api/project/{host.project_id}"
        self.gateway = f"{host.url}/refinery-gateway/api/v1"
        self.search_url = f"{self.gateway}/data-browser/{host.project_id}/search-records-by-similarity"

    def get(self, path: str = "", **kw: Any) -> requests.Response:
        return self.s.get(self.base + path, timeout=30, **kw)

    def post(self, path: str, body: Any) -> requests.Response:
        return self.s.post(self.base + path, json=body, timeout=30)

    def export(self, **params: Any) -> list[dict[str, Any]]:
        resp = self.get("/export", params=params)
        assert resp.status_code == 200
        body = resp.json()
        assert isinstance(body, str), "the export must be double-encoded (a JSON string)"
        return json.loads(body)

    def embeddings(self) -> list[dict[str, Any]]:
        """The gateway's ``embeddings-by-project`` nodes."""
        resp = self.s.get(f"{self.gateway}/embedding/{self.host.project_id}/embeddings-by-project", timeout=30)
        assert resp.status_code == 200, resp.text
        return [e["node"] for e in resp.json()["data"]["projectByProjectId"]["embeddings"]["edges"]]

    def embedding_id(self, name: str = EMBEDDING) -> str:
        [eid] = [n["id"] for n in self.embeddings() if n["name"] == name]
        return eid

    def search(self, embedding_id: str, record_id: str) -> requests.Response:
        """The data browser's search from the record whose running_id is ``record_id``."""
        body = {"embeddingId": embedding_id, "recordId": self.host.store.project.record_uuid(record_id),
                "attFilter": None, "recordSubKey": None}
        return self.s.post(self.search_url, json=body, timeout=30)

    def similar(self, embedding_id: str, record_id: str) -> dict[str, Any]:
        """The search's ``searchRecordsBySimilarity`` with ``running_ids`` (each record's, in order) added."""
        resp = self.search(embedding_id, record_id)
        assert resp.status_code == 200, resp.text
        found = resp.json()["data"]["searchRecordsBySimilarity"]
        found["running_ids"] = [json.loads(i["recordData"])["data"]["running_id"] for i in found["recordList"]]
        return found


def _session(host: RunningHost, session_id: str) -> dict[str, Any]:
    """A labeling session as the host stores it (refinery keeps it server-side; no route of its reads it back)."""
    row = host.store.db.one("SELECT embedding_id, query_record_id, record_ids FROM labeling_sessions WHERE id = ?",
                            (session_id,))
    assert row is not None, session_id
    return {"embedding_id": row[0], "query_record_id": row[1], "record_ids": json.loads(row[2])}


def _stored_threshold(host: RunningHost, embedding_id: str) -> float:
    row = host.store.db.one("SELECT value FROM thresholds WHERE embedding_id = ?", (embedding_id,))
    assert row is not None, "the threshold is stored with the embedding on its first search"
    return float(row[0])


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
    """Labels the host's owner writes in-process (``store.labels.set_labels``) are in the next export, though the
    export is cached between label writes."""
    labels = api.host.store.labels
    assert api.export()[10]["__Topic__MANUAL"] is None  # fills the export cache
    stored = labels.set_labels("Topic", [("10", "Sports", None), ("11", "World", None)], source="MANUAL", user_name=USER)
    assert stored == {"stored": 2, "task": "Topic", "source": "MANUAL"}
    labels.set_labels("Topic", [("13", "Sports", 0.61234)], source="WEAK_SUPERVISION", user_name=USER)
    labels.set_labels("Topic", [("0", "Sci/Tech", None)], source="MANUAL", user_name=USER)
    records = {r["running_id"]: r for r in api.export()}
    assert records["10"]["__Topic__MANUAL"] == "Sports"
    assert records["11"]["__Topic__MANUAL"] == "World"
    assert records["0"]["__Topic__MANUAL"] == "Sci/Tech"  # replaces the imported manual label
    assert records["13"]["__Topic__MANUAL"] is None
    assert records["13"]["__Topic__WEAK_SUPERVISION"] == "Sports"
    assert records["13"]["__Topic__WEAK_SUPERVISION__confidence"] == "0.6123"
    # removing a manual label
    labels.set_labels("Topic", [("10", None, None)], source="MANUAL", user_name=USER)
    assert {r["running_id"]: r for r in api.export()}["10"]["__Topic__MANUAL"] is None
    # record ids are strings, as the export carries them
    with pytest.raises(ApiError) as info:
        labels.set_labels("Topic", [(12, "World", None)], source="MANUAL", user_name=USER)
    assert info.value.status == 422


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
    labels = api.host.store.labels
    with pytest.raises(ApiError) as info:
        labels.set_labels("Nope", [("1", "Sports", None)], source="MANUAL", user_name=USER)
    assert (info.value.status, info.value.error_code) == (404, "LABELING_TASK_NOT_FOUND")
    for items in ([("20", "Sports", None), ("999", "Sports", None)], [("20", "Sports", None), ("21", "", None)],
                  [("20", "Sports", None), ("21", "World", 1.5)], [("20", "Sports", None), ("21", "\ud800", None)]):
        with pytest.raises(ApiError) as info:
            labels.set_labels("Topic", items, source="MANUAL", user_name=USER)
        assert info.value.status == 422, items
    with pytest.raises(ApiError):
        labels.set_labels("Topic", [("20", "Sports", None)], source="MODEL_CALLBACK", user_name=USER)
    assert {r["running_id"]: r for r in api.export()}["20"]["__Topic__MANUAL"] is None
    assert api.host.store.db.one("SELECT COUNT(*) FROM label_events")[0] == 0


# ------------------------------------------------------------------------------------------------
# embeddings of an imported snapshot, the data browser's search, sessions


def _snapshot_host(tmp_path: Path, vectors: np.ndarray) -> RunningHost:
    return _start(tmp_path, _make_snapshot(tmp_path / "snapshot.zip", vectors))


def test_data_browser_similarity_route(tmp_path: Path) -> None:
    """refinery-gateway ``fast_api/routes/data_browser.py`` ``get_search_records_by_similarity`` on the embedding a
    snapshot brought: record UUIDs in, the ExtendedSearch shape out, the records within the threshold nearest first
    (the query first), and the ordered result stored as the session ``sessionId``."""
    vectors = _vectors(11)
    with _snapshot_host(tmp_path, vectors) as host:
        api = _Api(host)
        [node] = api.embeddings()
        assert (node["name"], node["state"], node["dimension"], node["count"], node["type"]) == (
            EMBEDDING, "FINISHED", DIM, N, "ON_ATTRIBUTE")
        assert node["attributeId"] == host.store.project.attribute_id("Title")
        eid = node["id"]
        url = api.search_url
        uuid7 = host.store.project.record_uuid("7")
        resp = api.search(eid, "7")
        assert resp.status_code == 200, resp.text
        found = resp.json()["data"]["searchRecordsBySimilarity"]
        assert set(found) == {"recordList", "queryLimit", "queryOffset", "fullCount", "sessionId"}
        assert (found["queryLimit"], found["queryOffset"]) == (100, 0)
        rows = [json.loads(item["recordData"]) for item in found["recordList"]]
        assert all(item["typename"] == "ExtendedRecord" for item in found["recordList"])
        expected = _expected_search(vectors, 7)
        assert len(expected) > 1  # neighbours within the threshold, not the query alone
        assert [r["data"]["running_id"] for r in rows] == expected and found["fullCount"] == len(expected)
        assert rows[0]["id"] == uuid7 and all(r["id"] == host.store.project.record_uuid(r["data"]["running_id"])
                                              for r in rows)
        assert _stored_threshold(host, eid) == pytest.approx(_threshold(vectors), abs=1e-5)
        session = _session(host, found["sessionId"])
        assert session == {"embedding_id": eid, "query_record_id": "7", "record_ids": expected}
        # each search is a session of its own
        again = api.similar(eid, "7")
        assert again["running_ids"] == expected and again["sessionId"] != found["sessionId"]
        # an attribute filter: this host's embeddings have no filter attributes, so the query record alone
        alone = api.s.post(url, json={"embeddingId": eid, "recordId": uuid7,
                                      "attFilter": '[{"key": "Title", "value": "x"}]'},
                           timeout=30).json()["data"]["searchRecordsBySimilarity"]
        assert [json.loads(i["recordData"])["id"] for i in alone["recordList"]] == [uuid7]
        # pydantic StrictStr fields: FastAPI's {"detail": [errors]}; unknown ids
        for bad in ({"embeddingId": eid}, {"embeddingId": eid, "recordId": 7}, {"embeddingId": 1, "recordId": uuid7}, []):
            refused = api.s.post(url, json=bad, timeout=30)
            assert refused.status_code == 422 and refused.json()["detail"][0]["loc"][0] == "body", bad
        assert api.s.post(url, json={"embeddingId": "nope", "recordId": uuid7}, timeout=30).status_code == 404
        assert api.s.post(url, json={"embeddingId": eid, "recordId": "7"}, timeout=30).status_code == 404
        # oathkeeper's gateway rule takes the browser session cookie only: the bearer token is refused by the
        # redirect to the login page (refinery oathkeeper/access-rules.yml, kernai:refinery-gateway:fastapi)
        for headers in ({}, {"Authorization": f"Bearer {api.token}", "identifier": api.token}):
            refused = requests.post(url, json={"embeddingId": eid, "recordId": uuid7}, headers=headers, timeout=30,
                                    allow_redirects=False)
            assert refused.status_code == 302 and refused.headers["location"].endswith("/auth/login")


def test_threshold_keeps_a_cluster_and_is_computed_once(tmp_path: Path) -> None:
    """Four tight clusters of 10: the threshold (5th percentile of pairwise distances) lies inside a cluster."""
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(4, DIM)) * 5
    vectors = np.concatenate([c + rng.normal(size=(10, DIM)) * 0.3 for c in centres]).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    with _snapshot_host(tmp_path, vectors) as host:
        api = _Api(host)
        eid = api.embedding_id()
        for q in (0, 17, 39):
            got = api.similar(eid, str(q))["running_ids"]
            assert got == _expected_search(vectors, q)
            assert all(int(r) // 10 == q // 10 for r in got)
        threshold = _stored_threshold(host, eid)
        assert threshold == pytest.approx(_threshold(vectors), abs=1e-5)
    with _start(tmp_path, None) as again:  # stored with the embedding: the same after a restart
        assert _Api(again).similar(eid, "5")["running_ids"] == _expected_search(vectors, 5)
        assert _stored_threshold(again, eid) == threshold


def test_search_returns_at_most_100_within_the_threshold(tmp_path: Path) -> None:
    """refinery's ``get_records_by_similarity_search`` asks for 100 records: a query with far more than 100 records
    within the threshold gets exactly 100, the nearest. 150 near-duplicates among 1,000 records (their pairs are
    about 2% of all, so the 5th-percentile threshold lies well outside the duplicates); a host that returned up to
    1,000 (or every record within the threshold) would give 150 or more."""
    n, dup = 1000, 150
    rng = np.random.default_rng(5)
    vectors = rng.normal(size=(n, DIM))
    vectors[:dup] = vectors[0] + rng.normal(size=(dup, DIM)) * 0.01
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    with _snapshot_host(tmp_path, vectors) as host:
        api = _Api(host)
        eid = api.embedding_id()
        for q in (0, 77):
            found = api.similar(eid, str(q))
            d = np.linalg.norm(vectors.astype(np.float64) - vectors[q].astype(np.float64), axis=1)
            within = int((d <= _stored_threshold(host, eid)).sum())
            assert within >= dup > 100  # the precondition: the limit, not the threshold, decides
            assert found["fullCount"] == len(found["recordList"]) == 100 and found["queryLimit"] == 100
            got = [int(r) for r in found["running_ids"]]
            assert got[0] == q and len(set(got)) == 100 and set(got) <= set(range(dup))
            assert d[got].max() <= np.delete(d, got).min() + 1e-5  # the 100 nearest (float32 ties aside)
            assert np.all(np.diff(d[got]) >= -1e-5)  # nearest first
            assert _session(host, found["sessionId"])["record_ids"] == found["running_ids"]


# ------------------------------------------------------------------------------------------------
# restart, configuration


def test_restart_keeps_embeddings_labels_and_sessions(tmp_path: Path) -> None:
    vectors = _vectors(8)
    snapshot = _make_snapshot(tmp_path / "snapshot.zip", vectors)
    with _start(tmp_path, snapshot) as first:
        api = _Api(first)
        eid = api.embedding_id()
        first.store.labels.set_labels("Topic", [("30", "Business", None)], source="MANUAL", user_name=USER)
        sid = api.similar(eid, "1")["sessionId"]
        project_id, token = first.project_id, api.token
    with _start(tmp_path, None) as second:  # no export needed once imported
        assert second.project_id == project_id
        api2 = _Api(second)
        assert [n["id"] for n in api2.embeddings()] == [eid]
        assert api2.similar(eid, "1")["running_ids"] == _expected_search(vectors, 1)
        assert {r["running_id"]: r for r in api2.export()}["30"]["__Topic__MANUAL"] == "Business"
        assert _session(second, sid)["record_ids"] == _expected_search(vectors, 1)
        # the earlier token survives the restart
        old = requests.get(f"{second.url}/api/project/{project_id}", timeout=10,
                           headers={"Authorization": f"Bearer {token}", "identifier": token})
        assert old.status_code == 200
    # same snapshot again: fine; another export into the same data dir: refused
    with _start(tmp_path, snapshot) as third:
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


def test_state_files_are_private(tmp_path: Path, export: Path) -> None:
    with _start(tmp_path, export):
        pass
    assert (tmp_path / "state").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "state" / "host.sqlite3").stat().st_mode & 0o777 == 0o600


# ------------------------------------------------------------------------------------------------
# what a real refinery answers; a snapshot served as refinery serves an imported project

SNAPSHOT = Path(__file__).resolve().parents[1] / "data" / "ag_news_snapshot_small.zip"
_EXTENSION_ROUTES = [("POST", "/embeddings"), ("GET", "/embeddings"), ("GET", "/embeddings/x"),
                     ("POST", "/embeddings/x/finalize"), ("POST", "/similarity"), ("POST", "/labeling-sessions"),
                     ("GET", "/labeling-sessions/x"), ("POST", "/labels")]
"""The routes of the push extension the host once served besides refinery's."""


def test_routes_refinery_lacks_answer_as_refinery(api: _Api) -> None:
    """The proxy (a FastAPI app) answers 404 ``{"detail": "Not Found"}`` for a route it lacks; oathkeeper's access
    rules match GET and POST under ``/api/`` only, so any other method is its 404, and its 401 comes before the
    proxy's 404; validation errors are FastAPI's ``{"detail": [errors]}`` everywhere."""
    for method, path in _EXTENSION_ROUTES:
        resp = api.s.request(method, api.base + path, json={}, timeout=30)
        assert resp.status_code == 404 and resp.json() == {"detail": "Not Found"}, (method, path)
    for method, path in (("PUT", "/embeddings/x/tensors"), ("DELETE", "/embeddings/x"), ("PUT", "/export"),
                         ("PATCH", ""), ("DELETE", "")):
        for headers in (api.s.headers, {}):
            resp = requests.request(method, api.base + path, json={}, headers=headers, timeout=30)
            assert resp.status_code == 404 and resp.json()["error"]["message"] == "Requested url does not match any rules"
    assert _is_oathkeeper_401(requests.post(api.base + "/embeddings", json={}, timeout=30))  # auth comes first
    for url in (api.base + "/associations", api.search_url):
        resp = api.s.post(url, data="{not json", headers={"content-type": "application/json"}, timeout=30)
        assert resp.status_code == 422 and list(resp.json()) == ["detail"], (url, resp.text)
        assert all({"loc", "msg", "type"} <= set(e) for e in resp.json()["detail"]) and resp.json()["detail"]
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
    ``platform`` (``__transform_embedding_by_name``), listed by ``embeddings-by-project`` and searchable through the
    data browser's route."""
    data = _snapshot_tables()
    with serve_in_thread(SNAPSHOT, data_dir=tmp_path / "s", user_name=USER, password=PASSWORD) as host:
        api = _Api(host)
        [emb] = api.embeddings()
        assert (emb["name"], emb["platform"], emb["model"], emb["dimension"], emb["state"]) == (
            "headline-classification-huggingface-distilbert-base-uncased", "huggingface", "distilbert-base-uncased", 64,
            "FINISHED")
        query = data["records_data"][5]["id"]
        resp = api.s.post(api.search_url, json={"embeddingId": emb["id"], "recordId": query}, timeout=30)
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
         "recordSubKey", "method", "password", "identifier", "password_identifier", "attribute_id", "config"]
_SCALARS = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=12)
            | st.sampled_from(["0", "1", "Topic", "heuristic", "MANUAL", "World", "ON_ATTRIBUTE", "AAAA", "[]", "\ud800"]))
_JSON = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.sampled_from(_KEYS) | st.text(max_size=6), inner, max_size=5), max_leaves=16)
_BODIES = _JSON | st.dictionaries(st.sampled_from(_KEYS), _JSON, max_size=6)


@pytest.fixture(scope="module")
def fuzz_host(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("fuzz")
    with _start(tmp, _make_snapshot(tmp / "snapshot.zip", _vectors(12))) as running:
        api = _Api(running)
        yield api, api.embedding_id()


def _fuzz_calls(api: _Api, served: str) -> list[tuple[str, str]]:
    """The routes a client sends a body or query to; the gateway's create-embedding is left out: refinery's gateway
    answers a bad config with its plain 500 (tests/host/test_model_door_host.py)."""
    pid = api.host.project_id
    return [
        ("POST", api.search_url), ("POST", f"{api.host.url}/refinery-gateway/v1/data-browser/{pid}/search-records-by-similarity"),
        ("POST", api.base + "/associations"), ("GET", api.base + "/export"), ("GET", api.base),
        ("POST", api.host.url + "/.ory/kratos/public/self-service/login?flow=x"),
        ("GET", f"{api.gateway}/embedding/{pid}/embeddings-by-project"), ("GET", f"{api.gateway}/attribute/{pid}/all-attributes"),
        ("DELETE", f"{api.gateway}/embedding/{pid}/not-{served}/delete-embedding"),
        ("POST", api.base + "/similarity"),  # a route refinery lacks
        ("PUT", f"{api.base}/embeddings/{served}/tensors"),  # a method oathkeeper's rules lack
    ]


@settings(max_examples=150, derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=_BODIES, query=st.text(max_size=8), route=st.integers(min_value=0, max_value=10))
def test_fuzzed_bodies_never_give_a_server_error(fuzz_host: Any, body: Any, query: str, route: int) -> None:
    """One route per example, each route about a dozen times; a fresh connection per request."""
    api, served = fuzz_host
    method, url = _fuzz_calls(api, served)[route]
    payload = json.dumps(body)  # NaN and Infinity included, as a lenient client writes them
    resp = requests.request(method, url, data=payload, params={"num_samples": query},
                            headers={**api.s.headers, "content-type": "application/json"}, cookies=api.s.cookies,
                            timeout=30)
    assert resp.status_code < 500, (method, url, payload[:200], resp.text[:300])
    resp.json()  # always a JSON answer


def test_fuzzed_host_still_serves(fuzz_host: Any) -> None:
    api, served = fuzz_host
    assert [n["id"] for n in api.embeddings()] == [served]
    assert api.similar(served, "1")["running_ids"] == _expected_search(_vectors(12), 1)
    assert len(api.export()) == N
