"""refinery-gateway's embedding routes behind a Kratos browser session: what the model door speaks.

refinery's oathkeeper lets ``/refinery-gateway/**`` through with the browser cookie ``ory_kratos_session`` only
(``oathkeeper/access-rules.yml``, ``oathkeeper.yml``) and refuses with a 302 to the login page, never a 401, so
:class:`Gateway` logs in through Kratos's browser flow. The routes are refinery-gateway's
``fast_api/routes/embedding.py`` and ``attribute.py``, as refinery-ui calls them; a project outside the user's
organisation answers 500 ``An error occurred`` (``middleware/database_session.py``). Details: the section
"How refinery is spoken to" of ``docs/model-door.md``.
"""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import urljoin

from ..errors import AuthError, HostError
from .columns import HUGGINGFACE
from .transport import SESSION_COOKIE, Transport, json_body, to_login

__all__ = ["Gateway", "GATEWAY_API", "BROWSER_LOGIN_PATH", "huggingface_config"]

log = logging.getLogger(__name__)

BROWSER_LOGIN_PATH = "/.ory/kratos/public/self-service/login/browser"
GATEWAY_API = "/refinery-gateway/api/v1"
_JSON = {"Accept": "application/json", "content-type": "application/json"}


def huggingface_config(model: str) -> str:
    """``create-embedding``'s ``config`` for a huggingface attribute embedding, as refinery's UI builds it
    (refinery-ui ``AddNewEmbeddingModal.tsx`` ``addEmbedding``), as the JSON string the route expects."""
    return json.dumps({
        "platform": HUGGINGFACE, "termsText": None, "termsAccepted": False, "embeddingType": "ON_ATTRIBUTE",
        "filterAttributes": [], "model": model,
    })


def _csrf_token(flow: Any) -> str | None:
    """The value of the flow's hidden ``csrf_token`` form node."""
    try:
        nodes = flow["ui"]["nodes"]
    except (KeyError, TypeError):
        return None
    for node in nodes if isinstance(nodes, list) else []:
        attrs = node.get("attributes", {}) if isinstance(node, dict) else {}
        if isinstance(attrs, dict) and attrs.get("name") == "csrf_token" and isinstance(attrs.get("value"), str):
            return attrs["value"]
    return None


class Gateway:
    """The gateway's embedding routes as one user, authenticated by a Kratos browser session cookie; ``transport``
    (a :class:`~kern_finetune.refinery.api.RefineryClient`, say) gives the host, user, retries and cookie jar."""

    def __init__(self, transport: Transport) -> None:
        self.t = transport
        self._logged_in = False

    def login(self) -> None:
        """Kratos's browser login flow; :class:`AuthError` (one line, secrets masked) when it is refused."""
        t = self.t
        self._logged_in = False
        t.session.cookies.clear()  # Kratos refuses a new browser flow while a session cookie is sent
        what = "model door login (Kratos browser flow)"
        resp = t.send("GET", t.uri + BROWSER_LOGIN_PATH, headers={"Accept": "application/json"}, idempotent=True,
                      what=what, null_ok=True)
        if resp.status_code != 200:
            raise t.error_for(resp, what=what)
        flow = json_body(resp, what=what)
        action = flow.get("ui", {}).get("action") if isinstance(flow, dict) else None
        csrf = _csrf_token(flow)
        if not isinstance(action, str) or not action or csrf is None:
            raise AuthError(f"{what}: {t.uri} answered no form action and CSRF token: is it a refinery host?")
        body = t.password_body(method="password", identifier=t.user_name, csrf_token=csrf)
        resp = t.send("POST", urljoin(t.uri + "/", action), headers=_JSON, data=body, idempotent=True, what=what,
                      null_ok=True)
        if resp.status_code in (400, 401):
            raise AuthError(f"{what}: login refused for user {t.user_name!r} at {t.uri}: check user name and password")
        if resp.status_code == 403:
            raise AuthError(t.scrub(f"{what}: {t.uri} refused the login's CSRF token (HTTP 403); is a proxy in front "
                                    "of refinery dropping cookies?"))
        if resp.status_code != 200:
            raise t.error_for(resp, what=what)
        if not any(c.name == SESSION_COOKIE for c in t.session.cookies):
            raise AuthError(f"{what}: {t.uri} logged user {t.user_name!r} in but set no {SESSION_COOKIE} cookie "
                            f"(reach refinery as http://localhost:4455, the URL its cookies are made for)")
        self._logged_in = True
        log.info("browser session for %s at %s", t.user_name, t.uri)

    def call(self, method: str, path: str, *, body: Any = None, what: str, idempotent: bool | None = None) -> Any:
        """One gateway call with the session cookie; its JSON body. A 302 to the login page renews the session
        once; a second one is an :class:`AuthError`."""
        t = self.t
        if idempotent is None:
            idempotent = method in ("GET", "DELETE")
        data = None if body is None else json.dumps(body)
        for again in (False, True):
            if not self._logged_in:
                self.login()
            resp = t.send(method, t.uri + GATEWAY_API + path, headers=_JSON, data=data, idempotent=idempotent,
                          what=what, null_ok=True)
            if not to_login(resp):
                break
            self._logged_in = False
            if again:
                raise AuthError(t.scrub(
                    f"{what}: refinery's oathkeeper refused the browser session of user {t.user_name!r} "
                    f"(HTTP {resp.status_code} to the login page, twice)"))
        if resp.status_code == 500 and "json" not in resp.headers.get("content-type", ""):
            raise HostError(t.scrub(
                f"{what}: the gateway answered HTTP 500 ({resp.text[:60].strip() or 'no text'}), its answer when "
                f"the project is not in user {t.user_name!r}'s organisation or the request names something it lacks"))
        if resp.status_code != 200:
            raise t.error_for(resp, what=what)
        return json_body(resp, what=what)

    # ------------------------------------------------------------------------------------------
    # routes

    def attributes(self, project_id: str, *, idempotent: bool = True) -> list[dict[str, Any]]:
        """``all-attributes``: the project's attributes (``id``, ``name``, ...)."""
        data = self.call("GET", f"/attribute/{project_id}/all-attributes", what="reading the attributes",
                         idempotent=idempotent)
        try:
            items = data["data"]["attributesByProjectId"]
        except (KeyError, TypeError):
            raise HostError("reading the attributes: the gateway's answer has no attributesByProjectId") from None
        return [a for a in items if isinstance(a, dict)] if isinstance(items, list) else []

    def embeddings(self, project_id: str) -> list[dict[str, Any]]:
        """``embeddings-by-project``: every embedding's node (``id``, ``name``, ``state``, ``model``, ...)."""
        data = self.call("GET", f"/embedding/{project_id}/embeddings-by-project", what="reading the embeddings")
        try:
            edges = data["data"]["projectByProjectId"]["embeddings"]["edges"]
        except (KeyError, TypeError):
            raise HostError("reading the embeddings: the gateway's answer has no embeddings edges") from None
        return [e["node"] for e in edges if isinstance(e, dict) and isinstance(e.get("node"), dict)]

    def create_embedding(self, project_id: str, attribute_id: str, model: str) -> None:
        """``create-embedding`` of a huggingface attribute embedding from ``model`` (a path inside the embedder).
        Not retried once the request may have reached the gateway (a repeat would queue a second task)."""
        body = {"attribute_id": attribute_id, "config": huggingface_config(model)}
        data = self.call("POST", f"/embedding/{project_id}/create-embedding", body=body, what="creating the embedding",
                         idempotent=False)
        if not (isinstance(data, dict) and data.get("data", {}).get("createEmbedding", {}).get("ok")):
            raise HostError("creating the embedding: the gateway did not answer createEmbedding ok")

    def delete_embedding(self, project_id: str, embedding_id: str) -> None:
        """``delete-embedding``."""
        self.call("DELETE", f"/embedding/{project_id}/{embedding_id}/delete-embedding", what="deleting the embedding")

    def search_similar(self, project_id: str, embedding_id: str, record_id: str) -> list[dict[str, Any]]:
        """The data browser's ``search-records-by-similarity`` from the record with refinery id ``record_id``: the
        records it serves (at most 100 within the threshold, the query first), each its ``recordData`` object."""
        body = {"embeddingId": embedding_id, "recordId": record_id, "attFilter": None, "recordSubKey": None}
        data = self.call("POST", f"/data-browser/{project_id}/search-records-by-similarity", body=body,
                         what="similarity search", idempotent=True)
        try:
            found = data["data"]["searchRecordsBySimilarity"]["recordList"]
            return [json.loads(item["recordData"]) for item in found]
        except (KeyError, TypeError, ValueError):
            raise HostError("similarity search: the gateway's answer has no searchRecordsBySimilarity list") from None
