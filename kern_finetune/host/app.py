"""The FastAPI app of the local host (``docs/host.md``): the gate, the error shapes and the body limit; each
route family lives in :mod:`kern_finetune.host.routes`.

The gate replays refinery ``oathkeeper/access-rules.yml``: ``/api/`` (rule ``kernai:refinery-gateway-proxy``:
GET and POST, ``bearer_token``; a refusal is oathkeeper's own 401, ory/oathkeeper ``helper/errors.go``), then
refinery-gateway-proxy ``app.py``'s ``identifier`` header check; ``/refinery-gateway/`` (rule
``kernai:refinery-gateway:fastapi``: the ``ory_kratos_session`` cookie only, a refusal redirects to the login page).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..web.body_limit import BodyLimit
from .api_errors import ApiError
from .routes.auth import (LOGIN_FLOW_PATH, LOGIN_SUBMIT_PATH, LOGIN_UI_PATH, WHOAMI_PATH, add_auth_routes, bearer_of,
                          cookie_of, token_of)
from .routes.common import (GATEWAY_PREFIX, PROXY_PREFIX, AsciiJSONResponse, api_error, oathkeeper_body,
                            oathkeeper_error, proxy_error)
from .routes.gateway import add_gateway_routes
from .routes.proxy import add_proxy_routes
from .routes.search import add_search_routes
from .store import HostStore

__all__ = ["create_app", "LOGIN_FLOW_PATH", "LOGIN_SUBMIT_PATH", "MAX_BODY_BYTES"]

MAX_BODY_BYTES = 64 * 1024 * 1024
"""Requests announcing a larger body are refused with 413."""


def _body_limit_error(status: int, detail: str) -> dict[str, Any]:
    """What :class:`BodyLimit` answers: a request without a valid token is refused as oathkeeper refuses it
    (its 401 body, with the reason), a logged-in one over the limit with 413."""
    if status == 401:
        return oathkeeper_body(401, reason=detail)
    return {"error_code": {413: "PAYLOAD_TOO_LARGE"}.get(status, "INVALID_REQUEST"), "detail": detail}


def _add_gate(app: FastAPI, store: HostStore) -> None:
    """Oathkeeper, then the proxy's user check, before any route reads the request."""

    @app.middleware("http")
    async def _gate(request: Request, call_next: Any) -> Response:
        path = request.url.path
        if not path.startswith((PROXY_PREFIX, GATEWAY_PREFIX)):
            return await call_next(request)
        if path.startswith(GATEWAY_PREFIX):  # the session cookie only; any refusal redirects to the login page
            if request.method not in ("GET", "POST", "PUT", "DELETE"):
                return oathkeeper_error(404)
            found = await run_in_threadpool(store.users.session_user, cookie_of(request))
            if found is None:
                return RedirectResponse(str(request.base_url).rstrip("/") + LOGIN_UI_PATH, status_code=302)
            request.state.user = found[0]
            return await call_next(request)
        if request.method not in ("GET", "POST"):
            return oathkeeper_error(404)  # the access rules match GET and POST only
        # session lookups take the store's lock, which a large upload may hold: off the event loop
        found = await run_in_threadpool(store.users.session_user, bearer_of(request))
        if found is None:
            return oathkeeper_error(401)
        # refinery-gateway-proxy get_user_id_from_request: the identifier header's session
        found = await run_in_threadpool(store.users.session_user, request.headers.get("identifier"))
        if found is None:
            return proxy_error(401, "UNRECOGNIZED_USER")
        request.state.user = found[0]
        return await call_next(request)


def _add_error_handlers(app: FastAPI) -> None:
    """Refinery's own shapes: validation errors as its FastAPI apps give them; routes refinery lacks, and
    methods, answer what its proxy (a FastAPI app) answers; the host's own refusals (:class:`ApiError`)
    ``{"error_code", "detail"}``."""

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return api_error(exc.status, exc.error_code, exc.detail)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{k: e[k] for k in ("type", "loc", "msg") if k in e} for e in exc.errors()]
        return AsciiJSONResponse(status_code=422, content={"detail": jsonable_encoder(errors)})

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED"}
        return api_error(exc.status_code, codes.get(exc.status_code, "HTTP_ERROR"), str(exc.detail))

    @app.exception_handler(404)
    async def _not_found(request: Request, _exc: Exception) -> JSONResponse:
        path = request.url.path
        if path.startswith((PROXY_PREFIX, GATEWAY_PREFIX)) or path in (WHOAMI_PATH, "/health"):
            return AsciiJSONResponse(status_code=404, content={"detail": "Not Found"})
        return oathkeeper_error(404)

    @app.exception_handler(405)
    async def _not_allowed(_request: Request, _exc: Exception) -> JSONResponse:
        return AsciiJSONResponse(status_code=405, content={"detail": "Method Not Allowed"})


def _authenticated(store: HostStore, request: Request) -> bool:
    """A valid session token or browser session cookie (the body limit of a logged-in request applies)."""
    return any(store.users.session_user(t) is not None for t in (token_of(request), cookie_of(request)) if t)


def create_app(store: HostStore, *, max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    """Build the app serving ``store``'s one project."""
    app = FastAPI(title="kern-finetune local refinery host", docs_url=None, redoc_url=None, openapi_url=None,
                  default_response_class=AsciiJSONResponse)
    _add_gate(app, store)
    _add_error_handlers(app)
    # body size: counted while it streams in, before any route or token check reads it; a request
    # without a valid session token may send 64 KiB (a login; over it: 401), a logged-in one max_body_bytes
    app.add_middleware(
        BodyLimit, max_bytes=max_body_bytes, anonymous_max_bytes=64 * 1024,
        is_authenticated=lambda scope: _authenticated(store, Request(scope)),
        anonymous_status=401,
        render=_body_limit_error,
    )
    add_auth_routes(app, store)
    add_proxy_routes(app, store)
    add_search_routes(app, store)
    add_gateway_routes(app, store)
    return app
