"""Replay the official refinery SDK's exact request shapes against our local host.

``refinery-python-sdk`` cannot be installed here (see docs/refinery-sdk.md), so its requests are
re-stated with plain ``requests``, as read from code-kern-ai/refinery-python-sdk (commit 0591e389):

- ``refinery/authentication.py`` ``create_session_token``: ``GET {uri}/.ory/kratos/public/self-service/login/api``
  with ``Accept: application/json``, take ``ui.action``; ``POST`` it with the same header and
  ``json={"method": "password", "password": PW, "password_identifier": USER}``; take ``session_token``
  (None -> the SDK raises its 401 error).
- ``refinery/api_calls.py`` ``_build_headers``: ``content-type: application/json``,
  ``user-agent: python-sdk-<version>`` (``noversion`` when not installed as a package),
  ``authorization: Bearer TOKEN``, ``identifier: TOKEN``; ``get_request`` passes query params through
  ``requests`` (``None`` values are dropped); ``_handle_response``: status 200 -> ``response.json()``,
  and if that is a ``str`` it is ``json.loads``-ed again; otherwise ``error_code`` /
  ``error_message`` from the JSON body pick the exception (``refinery/exceptions.py``: 401 ->
  UnauthorizedError, 404 + ``PROJECT_NOT_FOUND`` -> UnknownProjectError, 500 -> InternalServerError).
- ``refinery/settings.py``: ``/api/project/{id}`` (project details) and ``/api/project/{id}/export``.
- ``refinery/__init__.py`` ``Client``: ``get_project_details`` reads ``attributes[].data_type`` and
  ``tokenizer``; ``get_lookup_lists`` iterates ``knowledge_base_ids``; ``get_record_export`` sends
  ``num_samples`` and builds ``pd.DataFrame(records)``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

import kern_finetune.host as host_mod

ROOT = Path(__file__).resolve().parents[1]
SNAPSHOT = ROOT / "tests" / "data" / "ag_news_snapshot_small.zip"
USER, PASSWORD = "sdk@example.com", "sdk-Pa55-7d1e"
TIMEOUT = 10


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    data_dir = tmp_path_factory.mktemp("sdk-host")
    with host_mod.serve_in_thread(SNAPSHOT, data_dir=data_dir, user_name=USER, password=PASSWORD) as running:
        yield running


def _sdk_login(uri: str, user: str, password: str) -> str | None:
    headers = {"Accept": "application/json"}
    flow = requests.get(f"{uri}/.ory/kratos/public/self-service/login/api", headers=headers, timeout=TIMEOUT)
    action = flow.json().get("ui").get("action")
    resp = requests.post(
        action, headers=headers, json={"method": "password", "password": password, "password_identifier": user},
        timeout=TIMEOUT,
    )
    return resp.json().get("session_token")


def _sdk_headers(token: str) -> dict[str, str]:
    return {
        "content-type": "application/json",
        "user-agent": "python-sdk-noversion",
        "authorization": f"Bearer {token}",
        "identifier": token,
    }


def _sdk_get(url: str, token: str, **query: Any) -> requests.Response:
    return requests.get(url=url, headers=_sdk_headers(token), params=query, timeout=TIMEOUT)


def _sdk_handle(resp: requests.Response) -> Any:
    """What the SDK's _handle_response returns for a 200."""
    assert resp.status_code == 200, resp.text[:200]
    data = resp.json()
    if type(data) == str:  # noqa: E721 - the SDK's own check
        data = json.loads(data)
    return data


@pytest.fixture(scope="module")
def token(host: Any) -> str:
    tok = _sdk_login(host.url, USER, PASSWORD)
    assert isinstance(tok, str) and tok
    return tok


def test_login_flow_shape(host: Any) -> None:
    flow = requests.get(f"{host.url}/.ory/kratos/public/self-service/login/api", headers={"Accept": "application/json"},
                        timeout=TIMEOUT)
    assert flow.status_code == 200
    assert flow.json()["ui"]["action"].startswith("http")
    assert _sdk_login(host.url, USER, "wrong") is None  # the SDK then raises its 401 error


def test_project_details_as_the_sdk_reads_them(host: Any, token: str) -> None:
    details = _sdk_handle(_sdk_get(f"{host.url}/api/project/{host.project_id}", token))
    assert {"name", "description", "tokenizer", "attributes", "knowledge_base_ids"} <= set(details)
    assert isinstance(details["knowledge_base_ids"], list)
    text = [a["name"] for a in details["attributes"] if a["data_type"] == "TEXT"]
    assert text == ["headline"]


def test_export_as_the_sdk_reads_it(host: Any, token: str) -> None:
    url = f"{host.url}/api/project/{host.project_id}/export"
    resp = _sdk_get(url, token, num_samples=None)
    assert "num_samples" not in resp.url  # requests drops None, as the SDK relies on
    assert isinstance(resp.json(), str)  # double-encoded, as the SDK expects
    records = _sdk_handle(resp)
    assert isinstance(records, list) and len(records) == 200
    keys = set(records[0])
    assert all(set(r) == keys for r in records)  # one DataFrame column per key
    assert {"running_id", "headline", "__topic__MANUAL", "__topic__WEAK_SUPERVISION",
            "__topic__WEAK_SUPERVISION__confidence"} <= keys
    assert all(isinstance(r["running_id"], str) for r in records)
    assert len(_sdk_handle(_sdk_get(url, token, num_samples=5))) == 5


def test_errors_as_the_sdk_maps_them(host: Any, token: str) -> None:
    resp = _sdk_get(f"{host.url}/api/project/00000000-0000-0000-0000-000000000000", token)
    assert resp.status_code == 404 and resp.json().get("error_code") == "PROJECT_NOT_FOUND"
    resp = _sdk_get(f"{host.url}/api/project/{host.project_id}", "not-a-token")
    assert resp.status_code == 401  # UnauthorizedError in the SDK; oathkeeper refuses the bearer token
    assert "error_code" not in resp.json() and resp.json()["error"]["code"] == 401
    headers = dict(_sdk_headers(token), identifier="not-a-token")  # a valid bearer, an unknown identifier
    resp = requests.get(f"{host.url}/api/project/{host.project_id}", headers=headers, timeout=TIMEOUT)
    assert resp.status_code == 401 and resp.json() == {"error_code": "UNRECOGNIZED_USER"}
