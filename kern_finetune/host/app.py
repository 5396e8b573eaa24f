"""The FastAPI app of the local refinery-compatible host (see ``docs/host.md``).

It answers what a self-hosted refinery answers at ``http://localhost:4455``, read from the public sources:

- Ory Kratos's API login flow and ``sessions/whoami``;
- Ory oathkeeper in front of ``/api/`` (refinery ``oathkeeper/access-rules.yml``, rule
  ``kernai:refinery-gateway-proxy``: GET and POST only, authenticators ``cookie_session`` and
  ``bearer_token``; ``oathkeeper.yml``: JSON errors, verbose): a missing, unknown or expired bearer token is
  refused *there*, with oathkeeper's own 401 body (ory/oathkeeper ``helper/errors.go`` ``ErrUnauthorized``),
  never the proxy's;
- refinery-gateway-proxy ``app.py`` behind it: the ``identifier`` header names the user (missing or
  unknown: ``401 {"error_code": "UNRECOGNIZED_USER"}``); ``handle_response`` passes a gateway 200 through,
  turns 404 into ``{"error_code": "PROJECT_NOT_FOUND"}`` and 403 into ``FORBIDDEN_USER``, and answers every
  other gateway status with ``200`` and body ``null``; a route it lacks is FastAPI's ``404 {"detail": "Not Found"}``;
- the gateway's data-browser similarity search (``/refinery-gateway/v1/data-browser/...``), which the
  host accepts with the bearer token.

On top, unless ``push_extension=False``: kern-finetune's push extension (``docs/push-contract.md``), an
extension a refinery-compatible host may implement (proposed for refinery's issues #24 and #48), never
refinery's API: embeddings, the same similarity search by record id, labeling sessions, labels. State lives
in a :class:`~kern_finetune.host.store.HostStore`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import secrets
import threading
import time
import uuid
from datetime import datetime, timezone
from typing import Any

from fastapi import Body, Depends, FastAPI, Query, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..body_limit import BodyLimit
from .store import ApiError, HostStore
from .values import is_text

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


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds")


class AsciiJSONResponse(JSONResponse):
    """JSON with non-ASCII characters escaped: equal content, and a lone surrogate that a client sent inside
    a JSON string (``"\\ud800"``) cannot break the response's UTF-8 encoding."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def _error(status: int, code: str, detail: str) -> JSONResponse:
    return AsciiJSONResponse(status_code=status, content={"error_code": code, "detail": detail})


def _oathkeeper_error(status: int) -> JSONResponse:
    """Oathkeeper's JSON error (herodot ``DefaultError`` in ``{"error": ...}``; ory/oathkeeper ``helper/errors.go``)."""
    message = {401: "Access credentials are invalid", 404: "Requested url does not match any rules"}[status]
    reason = {401: "Unauthorized", 404: "Not Found"}[status]
    return AsciiJSONResponse(status_code=status, content={"error": {
        "code": status, "status": reason, "request": str(uuid.uuid4()), "message": message}})


def _body_limit_error(status: int, detail: str) -> dict[str, Any]:
    """What :class:`BodyLimit` answers: a request without a valid token is refused as oathkeeper refuses it
    (its 401 body, with the reason), a logged-in one over the limit with the push extension's 413."""
    if status == 401:
        return {"error": {"code": 401, "status": "Unauthorized", "request": str(uuid.uuid4()),
                          "message": "Access credentials are invalid", "reason": detail}}
    return {"error_code": {413: "PAYLOAD_TOO_LARGE"}.get(status, "INVALID_REQUEST"), "detail": detail}


def _bearer_of(request: Request) -> str | None:
    """The ``Authorization: Bearer`` token (what oathkeeper's ``bearer_token`` authenticator checks)."""
    auth = request.headers.get("authorization", "")
    return auth[7:].strip() or None if auth[:7].lower() == "bearer " else None


PROXY_PREFIX = "/api/"
GATEWAY_PREFIX = "/refinery-gateway/"
_EXTENSION_PATH = re.compile(r"^/api/project/[^/]+/(?:embeddings|similarity|labeling-sessions|labels)(?:/|$)")


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


def create_app(store: HostStore, *, max_body_bytes: int = MAX_BODY_BYTES, push_extension: bool = True) -> FastAPI:
    """Build the app serving ``store``'s one project.

    ``push_extension=False`` serves only what a real refinery serves: the extension's routes are then
    absent, and answer as refinery answers a route it lacks (see the module docstring).
    """
    app = FastAPI(title="kern-finetune local refinery host", docs_url=None, redoc_url=None, openapi_url=None,
                  default_response_class=AsciiJSONResponse)
    flows = _LoginFlows()
    app.state.store = store

    # ------------------------------------------------------------------------------------------
    # oathkeeper, then the proxy's user check, before any route reads the request

    @app.middleware("http")
    async def _gate(request: Request, call_next: Any) -> Response:
        path = request.url.path
        proxy, gateway = path.startswith(PROXY_PREFIX), path.startswith(GATEWAY_PREFIX)
        if not (proxy or gateway):
            return await call_next(request)
        if request.method not in ("GET", "POST") and not (proxy and push_extension):
            return _oathkeeper_error(404)  # the access rules match GET and POST only
        # session lookups take the store's lock, which a large upload may hold: off the event loop
        found = await run_in_threadpool(store.session_user, _bearer_of(request))
        if found is None:
            return _oathkeeper_error(401)
        if proxy:  # refinery-gateway-proxy get_user_id_from_request: the identifier header's session
            found = await run_in_threadpool(store.session_user, request.headers.get("identifier"))
            if found is None:
                return _error_code(401, "UNRECOGNIZED_USER")
        request.state.user = found[0]
        return await call_next(request)

    # ------------------------------------------------------------------------------------------
    # errors: {"error_code", "detail"} on the push extension, refinery's own shapes elsewhere

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.error_code, exc.detail)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        if not _EXTENSION_PATH.match(request.url.path):  # refinery's FastAPI apps: {"detail": [errors]}
            errors = [{k: e[k] for k in ("type", "loc", "msg") if k in e} for e in exc.errors()]
            return AsciiJSONResponse(status_code=422, content={"detail": jsonable_encoder(errors)})
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
        render=_body_limit_error,
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
    # routes refinery lacks, and methods: what its proxy (a FastAPI app) answers

    @app.exception_handler(404)
    async def _not_found(request: Request, _exc: Exception) -> JSONResponse:
        path = request.url.path
        if path.startswith((PROXY_PREFIX, GATEWAY_PREFIX)) or path in (WHOAMI_PATH, "/health"):
            return AsciiJSONResponse(status_code=404, content={"detail": "Not Found"})
        return _oathkeeper_error(404)

    @app.exception_handler(405)
    async def _not_allowed(_request: Request, _exc: Exception) -> JSONResponse:
        return AsciiJSONResponse(status_code=405, content={"detail": "Method Not Allowed"})

    # ------------------------------------------------------------------------------------------
    # refinery-gateway-proxy routes: the user was checked by _gate; then the project (404)

    def _user(request: Request) -> str:
        return str(getattr(request.state, "user", ""))

    def _check_project(project_id: str) -> None:
        if not secrets.compare_digest(project_id.encode(), store.project_id.encode()):
            raise ApiError(404, "PROJECT_NOT_FOUND", "this host serves another project")

    def _access(project_id: str, user: str = Depends(_user)) -> str:
        _check_project(project_id)
        return user

    def _proxied(call: Any, *args: Any, **kwargs: Any) -> JSONResponse:
        """Run a "gateway" call and answer as the proxy's ``handle_response`` does."""
        try:
            return AsciiJSONResponse(content=call(*args, **kwargs))
        except ApiError as exc:
            if exc.status == 404:
                return _error_code(404, "PROJECT_NOT_FOUND")
            if exc.status == 403:
                return _error_code(403, "FORBIDDEN_USER")
            log.info("gateway-side failure answered as 200 null: %s", exc.detail)
            return AsciiJSONResponse(content=None)

    prefix = "/api/project/{project_id}"

    @app.get(prefix)
    def project(project_id: str) -> JSONResponse:
        return _proxied(_project_details, project_id)

    def _project_details(project_id: str) -> dict[str, Any]:
        _check_project(project_id)
        return store.project_details()

    @app.get(prefix + "/export")
    def export(request: Request, project_id: str) -> Response:
        raw = request.query_params.get("num_samples")
        num_samples = None
        if raw is not None:  # the proxy's ``num_samples: Optional[int]`` (pydantic 1.10: int(value))
            try:
                num_samples = int(raw)
            except ValueError:
                return AsciiJSONResponse(status_code=422, content={"detail": [
                    {"loc": ["query", "num_samples"], "msg": "value is not a valid integer", "type": "type_error.integer"}]})
        try:
            _check_project(project_id)
        except ApiError:
            return _error_code(404, "PROJECT_NOT_FOUND")
        return Response(content=json.dumps(store.export_json(num_samples)), media_type="application/json")

    @app.post(prefix + "/associations")
    def post_associations(project_id: str, body: Any = Body(None), user: str = Depends(_user)) -> JSONResponse:
        """The proxy forwards ``associations, indices, name, label_task_name, source_type`` (a missing key is a
        KeyError there, a 500; here 422)."""
        keys = ("associations", "indices", "name", "label_task_name", "source_type")
        if not isinstance(body, dict) or any(k not in body for k in keys):
            return AsciiJSONResponse(status_code=422, content={"detail": [
                {"loc": ["body"], "msg": f"a JSON object with {', '.join(keys)}", "type": "value_error.missing"}]})
        return _proxied(_associations, project_id, body, user)

    def _associations(project_id: str, body: dict[str, Any], user: str) -> int:
        _check_project(project_id)
        return store.import_associations(body, user_name=user)

    # ------------------------------------------------------------------------------------------
    # the gateway's data-browser similarity search (refinery-gateway fast_api/routes/data_browser.py)

    @app.post(GATEWAY_PREFIX + "v1/data-browser/{project_id}/search-records-by-similarity")
    def search_records_by_similarity(project_id: str, body: Any = Body(None), user: str = Depends(_user)) -> JSONResponse:
        errors = _similarity_body_errors(body)
        if errors:
            return AsciiJSONResponse(status_code=422, content={"detail": errors})
        try:
            _check_project(project_id)
        except ApiError:
            return AsciiJSONResponse(status_code=404, content={"detail": "project not found"})
        try:
            return AsciiJSONResponse(content=store.search_records_by_similarity(body, user))
        except ApiError as exc:
            return AsciiJSONResponse(status_code=exc.status, content={"detail": exc.detail})

    # ------------------------------------------------------------------------------------------
    # the push extension (docs/push-contract.md): absent with push_extension=False

    if push_extension:
        _add_extension_routes(app, store, _access)

    return app


def _error_code(status: int, code: str) -> JSONResponse:
    """The proxy's own error body: ``{"error_code": code}`` and nothing else."""
    return AsciiJSONResponse(status_code=status, content={"error_code": code})


def _similarity_body_errors(body: Any) -> list[dict[str, Any]]:
    """``SearchRecordsBySimilarityBody`` (refinery-gateway ``fast_api/models.py``): ``embeddingId`` and
    ``recordId`` StrictStr; ``attFilter`` a JSON string or null (the route ``json.loads`` it); ``recordSubKey``
    null here (the host serves attribute-level embeddings only)."""
    if not isinstance(body, dict):
        return [{"loc": ["body"], "msg": "value is not a valid dict", "type": "type_error.dict"}]
    errors = []
    for key in ("embeddingId", "recordId"):
        if key not in body:
            errors.append({"loc": ["body", key], "msg": "field required", "type": "value_error.missing"})
        elif not isinstance(body[key], str) or not is_text(body[key]):
            errors.append({"loc": ["body", key], "msg": "str type expected", "type": "type_error.str"})
    att = body.get("attFilter")
    if att:
        ok = isinstance(att, str) and is_text(att)
        if ok:
            try:
                ok = isinstance(json.loads(att), list)
            except (ValueError, RecursionError):
                ok = False
        if not ok:
            errors.append({"loc": ["body", "attFilter"], "msg": "a JSON string holding a list of filters",
                           "type": "value_error"})
    if body.get("recordSubKey") is not None:
        errors.append({"loc": ["body", "recordSubKey"], "msg": "only null: attribute-level embeddings have no sub keys",
                       "type": "value_error"})
    return errors


_MANUAL_SOURCES = {"manual": "MANUAL"}
_WEAK_SOURCES = {s: "WEAK_SUPERVISION" for s in ("weak_supervision", "model_callback", "information_source")}


def _add_extension_routes(app: FastAPI, store: HostStore, access: Any) -> None:
    """The push extension's routes; every error is ``{"error_code", "detail"}`` (docs/push-contract.md)."""
    prefix = "/api/project/{project_id}"

    @app.post(prefix + "/labels")
    def post_labels(body: Any = Body(None), user: str = Depends(access)) -> dict[str, Any]:
        if not isinstance(body, dict) or not isinstance(body.get("labels"), list):
            raise ApiError(422, "INVALID_REQUEST", 'body must be {"task": NAME, "labels": [{"record_id", "label"}]}')
        source = _source(body.get("source_type", "MANUAL"))
        items = []
        for pos, item in enumerate(body["labels"]):
            if not isinstance(item, dict) or "record_id" not in item or "label" not in item:
                raise ApiError(422, "INVALID_REQUEST", f"labels[{pos}] must be an object with record_id and label")
            items.append((item["record_id"], item["label"], item.get("confidence")))
        return store.set_labels(body.get("task"), items, source=source, user_name=user, origin="labels")

    def _source(value: Any) -> str:
        key = value.lower() if isinstance(value, str) else None
        if key in _MANUAL_SOURCES:
            return _MANUAL_SOURCES[key]
        if key in _WEAK_SOURCES:
            return _WEAK_SOURCES[key]
        raise ApiError(422, "INVALID_REQUEST", "source_type: use MANUAL, WEAK_SUPERVISION or MODEL_CALLBACK")

    @app.post(prefix + "/embeddings", status_code=201)
    def create_embedding(body: Any = Body(None), user: str = Depends(access)) -> dict[str, Any]:
        return store.create_embedding(body)

    @app.get(prefix + "/embeddings")
    def list_embeddings(include_staged: bool = Query(False), user: str = Depends(access)) -> list[dict[str, Any]]:
        return store.list_embeddings(include_staged=include_staged)

    @app.get(prefix + "/embeddings/{embedding_id}")
    def get_embedding(embedding_id: str, user: str = Depends(access)) -> dict[str, Any]:
        return store.get_embedding(embedding_id)

    @app.put(prefix + "/embeddings/{embedding_id}/tensors")
    def put_tensors(embedding_id: str, body: Any = Body(None), user: str = Depends(access)) -> dict[str, Any]:
        return store.put_tensors(embedding_id, body)

    @app.post(prefix + "/embeddings/{embedding_id}/finalize")
    def finalize(embedding_id: str, body: Any = Body(None), user: str = Depends(access)) -> dict[str, Any]:
        return store.finalize_embedding(embedding_id, body)

    @app.delete(prefix + "/embeddings/{embedding_id}")
    def delete_embedding(embedding_id: str, force: bool = Query(False), user: str = Depends(access)) -> dict[str, Any]:
        return store.delete_embedding(embedding_id, force=force)

    def _search_args(body: Any) -> tuple[Any, Any, Any]:
        if not isinstance(body, dict):
            raise ApiError(422, "INVALID_REQUEST", 'body must be {"embedding", "record_id", "limit"}')
        return body.get("embedding"), body.get("record_id"), body.get("limit", 100)

    @app.post(prefix + "/similarity")
    def similarity(body: Any = Body(None), user: str = Depends(access)) -> dict[str, Any]:
        return store.similar(*_search_args(body))

    @app.post(prefix + "/labeling-sessions", status_code=201)
    def create_session(body: Any = Body(None), user: str = Depends(access)) -> dict[str, Any]:
        return store.create_labeling_session(*_search_args(body), user_name=user)

    @app.get(prefix + "/labeling-sessions/{session_id}")
    def get_session(session_id: str, user: str = Depends(access)) -> dict[str, Any]:
        return store.get_labeling_session(session_id)
