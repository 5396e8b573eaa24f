"""The FastAPI app of the local refinery-compatible host (see ``docs/host.md``).

It speaks what a refinery host speaks to the SDK (Kratos API login, project details, the double-encoded
record export, the SDK's ``associations`` upload) plus kern-finetune's push contract
(``docs/push-contract.md``), similarity search and labeling sessions. State lives in a
:class:`~kern_finetune.host.store.HostStore`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import threading
import time
import uuid
from datetime import datetime, timezone
from typing import Any

from fastapi import Body, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..body_limit import BodyLimit
from .store import ApiError, HostStore

__all__ = ["create_app", "LOGIN_FLOW_PATH", "LOGIN_SUBMIT_PATH", "MAX_BODY_BYTES"]

log = logging.getLogger(__name__)

LOGIN_FLOW_PATH = "/.ory/kratos/public/self-service/login/api"
LOGIN_SUBMIT_PATH = "/.ory/kratos/public/self-service/login"
WHOAMI_PATH = "/.ory/kratos/public/sessions/whoami"
MAX_BODY_BYTES = 64 * 1024 * 1024
"""Requests announcing a larger body are refused with 413 (a 1000-vector chunk of 384 dims is ~8 MB)."""
_FLOW_TTL_S = 600
_MAX_FLOWS = 1000
_INVALID_CREDENTIALS = (
    "The provided credentials are invalid, check for spelling mistakes in your password or username, "
    "email address, or phone number."
)
_MANUAL_SOURCES = {"manual": "MANUAL"}
_WEAK_SOURCES = {s: "WEAK_SUPERVISION" for s in ("weak_supervision", "model_callback", "information_source")}


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds")


def _error(status: int, code: str, detail: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error_code": code, "detail": detail})


def _token_of(request: Request) -> str | None:
    """The session token: ``Authorization: Bearer``, else the ``identifier`` or ``X-Session-Token`` header."""
    auth = request.headers.get("authorization", "")
    if auth[:7].lower() == "bearer " and auth[7:].strip():
        return auth[7:].strip()
    return request.headers.get("identifier") or request.headers.get("x-session-token") or None


class _LoginFlows:
    """Kratos login flows (id -> expiry), kept in memory: a client fetches one right before posting to it."""

    def __init__(self) -> None:
        self._flows: dict[str, float] = {}
        self._lock = threading.Lock()

    def new(self) -> tuple[str, float, float]:
        now = time.time()
        fid = str(uuid.uuid4())
        with self._lock:
            if len(self._flows) >= _MAX_FLOWS:
                self._flows = {k: v for k, v in self._flows.items() if v > now}
                while len(self._flows) >= _MAX_FLOWS:
                    self._flows.pop(next(iter(self._flows)))
            self._flows[fid] = now + _FLOW_TTL_S
        return fid, now, now + _FLOW_TTL_S

    def state(self, fid: str | None) -> str:
        """``ok``, ``expired`` or ``unknown``."""
        with self._lock:
            expires = self._flows.get(fid or "")
        if expires is None:
            return "unknown"
        return "ok" if expires > time.time() else "expired"


def _flow_json(request: Request, fid: str, issued: float, expires: float, messages: list[dict[str, Any]]) -> dict[str, Any]:
    base = str(request.base_url).rstrip("/")

    def _node(name: str, kind: str, group: str = "password") -> dict[str, Any]:
        return {"type": "input", "group": group, "attributes": {"name": name, "type": kind, "required": True}, "messages": []}

    return {
        "id": fid,
        "type": "api",
        "issued_at": _iso(issued),
        "expires_at": _iso(expires),
        "request_url": f"{base}{LOGIN_FLOW_PATH}",
        "refresh": False,
        "requested_aal": "aal1",
        "ui": {
            "action": f"{base}{LOGIN_SUBMIT_PATH}?flow={fid}",
            "method": "POST",
            "nodes": [
                _node("identifier", "text", "default"),
                _node("password", "password"),
                {"type": "input", "group": "password", "attributes": {"name": "method", "type": "submit", "value": "password"}, "messages": []},
            ],
            "messages": messages,
        },
    }


def create_app(store: HostStore, *, max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    """Build the app serving ``store``'s one project."""
    app = FastAPI(title="kern-finetune local refinery host", docs_url=None, redoc_url=None, openapi_url=None)
    flows = _LoginFlows()
    app.state.store = store

    # ------------------------------------------------------------------------------------------
    # errors: always JSON {"error_code", "detail"}

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.error_code, exc.detail)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        parts = []
        for err in exc.errors()[:3]:
            where = ".".join(str(p) for p in err.get("loc", ()))
            parts.append(f"{where}: {err.get('msg', 'invalid')}")
        return _error(422, "INVALID_REQUEST", "; ".join(parts) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}
        return _error(exc.status_code, codes.get(exc.status_code, "HTTP_ERROR"), str(exc.detail))

    # body size: counted while it streams in, before any route or token check reads it; a request
    # without a valid session token may send 64 KiB (a login; over it: 401), a logged-in one max_body_bytes
    app.add_middleware(
        BodyLimit, max_bytes=max_body_bytes, anonymous_max_bytes=64 * 1024,
        is_authenticated=lambda scope: store.session_user(_token_of(Request(scope))) is not None,
        anonymous_status=401,
        render=lambda status, detail: {"error_code": {401: "UNRECOGNIZED_USER", 413: "PAYLOAD_TOO_LARGE"}.get(
            status, "INVALID_REQUEST"), "detail": detail},
    )

    # ------------------------------------------------------------------------------------------
    # Kratos-style login

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(LOGIN_FLOW_PATH)
    def login_flow(request: Request) -> dict[str, Any]:
        fid, issued, expires = flows.new()
        return _flow_json(request, fid, issued, expires, [])

    @app.post(LOGIN_SUBMIT_PATH)
    def login_submit(request: Request, flow: str | None = Query(None), body: Any = Body(None)) -> JSONResponse:
        state = flows.state(flow)
        if state == "unknown":
            return JSONResponse(
                status_code=400 if flow is None else 404,
                content={"error": {"code": 400 if flow is None else 404, "status": "Bad Request" if flow is None else "Not Found",
                                   "reason": "The login flow is missing or unknown; fetch a new one.",
                                   "message": "The requested resource could not be found"}},
            )
        if state == "expired":
            return JSONResponse(
                status_code=410,
                content={"error": {"id": "self_service_flow_expired", "code": 410, "status": "Gone",
                                   "reason": "The login flow expired; fetch a new one.", "message": "flow expired"}},
            )
        if not isinstance(body, dict) or body.get("method", "password") != "password":
            return JSONResponse(
                status_code=400,
                content={"error": {"code": 400, "status": "Bad Request",
                                   "reason": 'Expected a JSON body {"method": "password", "identifier", "password"}.',
                                   "message": "The request was malformed or contained invalid parameters"}},
            )
        identifier = body.get("password_identifier") or body.get("identifier")
        password = body.get("password")
        if not store.check_password(identifier, password):
            log.info("login refused")
            fid, issued, expires = flows.new()
            content = _flow_json(request, fid, issued, expires, [{"id": 4000006, "text": _INVALID_CREDENTIALS, "type": "error"}])
            return JSONResponse(status_code=400, content=content)
        token, issued, expires = store.create_session(str(identifier))
        log.info("login ok for %s", identifier)
        return JSONResponse(content={"session_token": token, "session": _session_json(token, str(identifier), issued, expires)})

    def _session_json(token: str, user: str, issued: float, expires: float) -> dict[str, Any]:
        sid = str(uuid.UUID(hashlib.sha256(b"session:" + token.encode()).hexdigest()[:32]))
        return {
            "id": sid,
            "active": True,
            "issued_at": _iso(issued),
            "authenticated_at": _iso(issued),
            "expires_at": _iso(expires),
            "authenticator_assurance_level": "aal1",
            "identity": {"id": str(uuid.uuid5(uuid.NAMESPACE_URL, "kern-host:" + user)), "schema_id": "default",
                         "state": "active", "traits": {"email": user}},
        }

    @app.get(WHOAMI_PATH)
    def whoami(request: Request) -> JSONResponse:
        token = _token_of(request)
        found = store.session_user(token)
        if found is None or token is None:
            return JSONResponse(status_code=401, content={"error": {"code": 401, "status": "Unauthorized",
                                                                    "reason": "No valid session credentials found."}})
        return JSONResponse(content=_session_json(token, *found))

    # ------------------------------------------------------------------------------------------
    # project API: token first (401), then project (404)

    def _user(request: Request) -> str:
        found = store.session_user(_token_of(request))
        if found is None:
            raise ApiError(401, "UNRECOGNIZED_USER", "missing, unknown or expired session token; log in again")
        return found[0]

    def _access(project_id: str, user: str = Depends(_user)) -> str:
        if not secrets.compare_digest(project_id.encode(), store.project_id.encode()):
            raise ApiError(404, "PROJECT_NOT_FOUND", "this host serves another project")
        return user

    prefix = "/api/project/{project_id}"

    @app.get(prefix)
    def project(user: str = Depends(_access)) -> dict[str, Any]:
        return store.project_details()

    @app.get(prefix + "/export")
    def export(num_samples: int | None = Query(None), user: str = Depends(_access)) -> Response:
        inner = store.export_json(num_samples)
        return Response(content=json.dumps(inner), media_type="application/json")

    @app.post(prefix + "/labels")
    def post_labels(body: Any = Body(None), user: str = Depends(_access)) -> dict[str, Any]:
        if not isinstance(body, dict) or not isinstance(body.get("labels"), list):
            raise ApiError(422, "INVALID_REQUEST", 'body must be {"task": NAME, "labels": [{"record_id", "label"}]}')
        source = _source(body.get("source_type", "MANUAL"))
        items = []
        for pos, item in enumerate(body["labels"]):
            if not isinstance(item, dict) or "record_id" not in item or "label" not in item:
                raise ApiError(422, "INVALID_REQUEST", f"labels[{pos}] must be an object with record_id and label")
            items.append((item["record_id"], item["label"], item.get("confidence")))
        return store.set_labels(body.get("task"), items, source=source, user_name=user, origin="labels")

    @app.post(prefix + "/associations")
    def post_associations(body: Any = Body(None), user: str = Depends(_access)) -> dict[str, Any]:
        """The SDK's shape: associations (labels or [label, confidence]), indices (primary-key dicts)."""
        if not isinstance(body, dict):
            raise ApiError(422, "INVALID_REQUEST", "body must be a JSON object")
        assoc, indices = body.get("associations"), body.get("indices")
        if not isinstance(assoc, list) or not isinstance(indices, list) or len(assoc) != len(indices):
            raise ApiError(422, "INVALID_REQUEST", "associations and indices must be lists of the same length")
        source = _source(body.get("source_type", "MANUAL"))
        items = []
        for pos, (a, index) in enumerate(zip(assoc, indices)):
            if isinstance(a, (list, tuple)) and len(a) == 2:
                label, confidence = a
            elif isinstance(a, dict):
                label, confidence = a.get("label"), a.get("confidence")
            else:
                label, confidence = a, None
            if isinstance(index, dict):
                if store.id_attribute not in index:
                    raise ApiError(422, "INVALID_REQUEST", f"indices[{pos}] lacks the primary key {store.id_attribute!r}")
                record_id = index[store.id_attribute]
            else:
                record_id = index
            items.append((record_id, label, confidence))
        origin = body.get("name") if isinstance(body.get("name"), str) else "associations"
        return store.set_labels(body.get("label_task_name"), items, source=source, user_name=user, origin=origin)

    def _source(value: Any) -> str:
        key = str(value).lower()
        if key in _MANUAL_SOURCES:
            return _MANUAL_SOURCES[key]
        if key in _WEAK_SOURCES:
            return _WEAK_SOURCES[key]
        raise ApiError(422, "INVALID_REQUEST", f"source_type {value!r}: use MANUAL, WEAK_SUPERVISION or MODEL_CALLBACK")

    # ------------------------------------------------------------------------------------------
    # push contract

    @app.post(prefix + "/embeddings", status_code=201)
    def create_embedding(body: Any = Body(None), user: str = Depends(_access)) -> dict[str, Any]:
        return store.create_embedding(body)

    @app.get(prefix + "/embeddings")
    def list_embeddings(include_staged: bool = Query(False), user: str = Depends(_access)) -> list[dict[str, Any]]:
        return store.list_embeddings(include_staged=include_staged)

    @app.get(prefix + "/embeddings/{embedding_id}")
    def get_embedding(embedding_id: str, user: str = Depends(_access)) -> dict[str, Any]:
        return store.get_embedding(embedding_id)

    @app.put(prefix + "/embeddings/{embedding_id}/tensors")
    def put_tensors(embedding_id: str, body: Any = Body(None), user: str = Depends(_access)) -> dict[str, Any]:
        return store.put_tensors(embedding_id, body)

    @app.post(prefix + "/embeddings/{embedding_id}/finalize")
    def finalize(embedding_id: str, body: Any = Body(None), user: str = Depends(_access)) -> dict[str, Any]:
        return store.finalize_embedding(embedding_id, body)

    @app.delete(prefix + "/embeddings/{embedding_id}")
    def delete_embedding(embedding_id: str, force: bool = Query(False), user: str = Depends(_access)) -> dict[str, Any]:
        return store.delete_embedding(embedding_id, force=force)

    # ------------------------------------------------------------------------------------------
    # similarity search and labeling sessions

    def _search_args(body: Any) -> tuple[Any, Any, Any]:
        if not isinstance(body, dict):
            raise ApiError(422, "INVALID_REQUEST", 'body must be {"embedding", "record_id", "limit"}')
        return body.get("embedding"), body.get("record_id"), body.get("limit", 100)

    @app.post(prefix + "/similarity")
    def similarity(body: Any = Body(None), user: str = Depends(_access)) -> dict[str, Any]:
        return store.similar(*_search_args(body))

    @app.post(prefix + "/labeling-sessions", status_code=201)
    def create_session(body: Any = Body(None), user: str = Depends(_access)) -> dict[str, Any]:
        return store.create_labeling_session(*_search_args(body), user_name=user)

    @app.get(prefix + "/labeling-sessions/{session_id}")
    def get_session(session_id: str, user: str = Depends(_access)) -> dict[str, Any]:
        return store.get_labeling_session(session_id)

    return app
