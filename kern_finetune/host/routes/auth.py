"""Kratos-style login (``/.ory/kratos/public/...``): the API and browser login flows, their submission, ``whoami``.

Ory Kratos's API flow as refinery's SDK uses it: ``GET`` a flow, ``POST`` the credentials to its
``ui.action``; the answer carries ``session_token``, which the client sends as ``Authorization: Bearer``.

The browser flow, as refinery's login page uses it (Kratos v1.1, refinery ``refinery/versions.json``):
``GET .../self-service/login/browser`` sets a ``csrf_token_<hash>`` cookie and, asked with ``Accept:
application/json``, answers the flow as JSON with the same token in the hidden form node ``csrf_token``
(otherwise a 303 to the login page, ``kratos.yml`` ``selfservice.flows.login.ui_url``). Its submission must
carry that token in the body *and* the cookie (else 403 ``security_csrf_violation``); it answers ``{"session"}``
without a token and sets the session cookie ``ory_kratos_session``, the only credential oathkeeper accepts on
``/refinery-gateway/**`` (refinery ``oathkeeper/oathkeeper.yml`` ``cookie_session``).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import threading
import time
import uuid
from typing import Any

from fastapi import Body, FastAPI, Query, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response

from ..store import HostStore
from .common import iso

__all__ = ["LOGIN_FLOW_PATH", "BROWSER_FLOW_PATH", "LOGIN_SUBMIT_PATH", "WHOAMI_PATH", "SESSION_COOKIE", "LOGIN_UI_PATH",
           "LoginFlows", "add_auth_routes", "bearer_of", "token_of", "cookie_of"]

log = logging.getLogger(__name__)

LOGIN_FLOW_PATH = "/.ory/kratos/public/self-service/login/api"
BROWSER_FLOW_PATH = "/.ory/kratos/public/self-service/login/browser"
LOGIN_UI_PATH = "/auth/login"
"""refinery's login page (``kratos.yml`` ``login.ui_url``; oathkeeper's redirect target on the gateway rule)."""
SESSION_COOKIE = "ory_kratos_session"
LOGIN_SUBMIT_PATH = "/.ory/kratos/public/self-service/login"
WHOAMI_PATH = "/.ory/kratos/public/sessions/whoami"
_FLOW_TTL_S = 600
_MAX_FLOWS = 1000
_INVALID_CREDENTIALS = (
    "The provided credentials are invalid, check for spelling mistakes in your password or username, "
    "email address, or phone number."
)


def bearer_of(request: Request) -> str | None:
    """The ``Authorization: Bearer`` token (what oathkeeper's ``bearer_token`` authenticator checks)."""
    auth = request.headers.get("authorization", "")
    return auth[7:].strip() or None if auth[:7].lower() == "bearer " else None


def cookie_of(request: Request) -> str | None:
    """The browser session cookie (what oathkeeper's ``cookie_session`` authenticator checks, ``only`` this one)."""
    return request.cookies.get(SESSION_COOKIE) or None


def token_of(request: Request) -> str | None:
    """The session token: ``Authorization: Bearer``, else the ``identifier`` or ``X-Session-Token`` header."""
    auth = request.headers.get("authorization", "")
    if auth[:7].lower() == "bearer " and auth[7:].strip():
        return auth[7:].strip()
    return request.headers.get("identifier") or request.headers.get("x-session-token") or None


class LoginFlows:
    """Kratos login flows (id -> expiry and, for a browser flow, its CSRF token), kept in memory: a client fetches
    one right before posting to it."""

    def __init__(self) -> None:
        self._flows: dict[str, tuple[float, str | None]] = {}
        self._lock = threading.Lock()

    def new(self, csrf: str | None = None) -> tuple[str, float, float]:
        """A new flow; ``csrf``: a browser flow's token (None: an API flow)."""
        now = time.time()
        fid = str(uuid.uuid4())
        with self._lock:
            if len(self._flows) >= _MAX_FLOWS:
                self._flows = {k: v for k, v in self._flows.items() if v[0] > now}
                while len(self._flows) >= _MAX_FLOWS:
                    self._flows.pop(next(iter(self._flows)))
            self._flows[fid] = (now + _FLOW_TTL_S, csrf)
        return fid, now, now + _FLOW_TTL_S

    def state(self, fid: str | None) -> str:
        """``ok``, ``expired`` or ``unknown``."""
        with self._lock:
            found = self._flows.get(fid or "")
        if found is None:
            return "unknown"
        return "ok" if found[0] > time.time() else "expired"

    def csrf(self, fid: str | None) -> str | None:
        """The browser flow's CSRF token; None for an API flow (or an unknown one)."""
        with self._lock:
            found = self._flows.get(fid or "")
        return None if found is None else found[1]


def _flow_json(request: Request, fid: str, issued: float, expires: float, messages: list[dict[str, Any]],
               csrf: str | None = None) -> dict[str, Any]:
    base = str(request.base_url).rstrip("/")

    def _node(name: str, kind: str, group: str = "password") -> dict[str, Any]:
        return {"type": "input", "group": group, "attributes": {"name": name, "type": kind, "required": True}, "messages": []}

    csrf_nodes = [] if csrf is None else [{"type": "input", "group": "default", "attributes": {
        "name": "csrf_token", "type": "hidden", "value": csrf, "required": True}, "messages": []}]
    return {
        "id": fid,
        "type": "api" if csrf is None else "browser",
        "issued_at": iso(issued),
        "expires_at": iso(expires),
        "request_url": f"{base}{LOGIN_FLOW_PATH if csrf is None else BROWSER_FLOW_PATH}",
        "refresh": False,
        "requested_aal": "aal1",
        "ui": {
            "action": f"{base}{LOGIN_SUBMIT_PATH}?flow={fid}",
            "method": "POST",
            "nodes": csrf_nodes + [
                _node("identifier", "text", "default"),
                _node("password", "password"),
                {"type": "input", "group": "password", "attributes": {"name": "method", "type": "submit", "value": "password"}, "messages": []},
            ],
            "messages": messages,
        },
    }


def _session_json(token: str, user: str, issued: float, expires: float) -> dict[str, Any]:
    sid = str(uuid.UUID(hashlib.sha256(b"session:" + token.encode()).hexdigest()[:32]))
    return {
        "id": sid,
        "active": True,
        "issued_at": iso(issued),
        "authenticated_at": iso(issued),
        "expires_at": iso(expires),
        "authenticator_assurance_level": "aal1",
        "identity": {"id": str(uuid.uuid5(uuid.NAMESPACE_URL, "kern-host:" + user)), "schema_id": "default",
                     "state": "active", "traits": {"email": user}},
    }


def _flow_refusal(state: str, flow: str | None, body: Any) -> JSONResponse | None:
    """Kratos's answer to a submission on a missing, unknown or expired flow, or with a malformed body."""
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
    return None


_CSRF_REASON = (
    "Please retry the flow and optionally clear your cookies. The request was blocked to protect you from "
    "cross-site-request-forgery (CSRF) which could cause account takeover, leaking personal information, and "
    "other serious security issues."
)


def _csrf_cookie_name(request: Request) -> str:
    """Kratos names its CSRF cookie ``csrf_token_`` plus a hash of the public base URL."""
    return "csrf_token_" + hashlib.sha256(str(request.base_url).encode()).hexdigest()


def _csrf_refusal(request: Request, expected: str, body: dict[str, Any]) -> JSONResponse | None:
    """Kratos's 403 when a browser flow's submission lacks the flow's CSRF token in the body or the cookie."""
    sent, cookie = body.get("csrf_token"), request.cookies.get(_csrf_cookie_name(request))
    if (isinstance(sent, str) and isinstance(cookie, str) and hmac.compare_digest(sent, expected)
            and hmac.compare_digest(cookie, expected)):
        return None
    return JSONResponse(status_code=403, content={"error": {
        "id": "security_csrf_violation", "code": 403, "status": "Forbidden", "reason": _CSRF_REASON,
        "message": "the request was rejected to protect you from Cross-Site-Request-Forgery"}})


def _logged_in(request: Request, store: HostStore, identifier: str, csrf: str | None) -> JSONResponse:
    """A successful submission: the API flow's token, or the browser flow's session cookie."""
    token, issued, expires = store.users.create_session(identifier)
    session = _session_json(token, identifier, issued, expires)
    if csrf is None:
        return JSONResponse(content={"session_token": token, "session": session})
    resp = JSONResponse(content={"session": session, "continue_with": []})
    resp.set_cookie(SESSION_COOKIE, token, max_age=int(expires - issued), path="/", httponly=True, samesite="lax")
    return resp


def add_auth_routes(app: FastAPI, store: HostStore) -> None:
    """``/health``, the API and browser login flows, their submission and ``whoami``."""
    flows = LoginFlows()

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(LOGIN_FLOW_PATH)
    def login_flow(request: Request) -> dict[str, Any]:
        fid, issued, expires = flows.new()
        return _flow_json(request, fid, issued, expires, [])

    @app.get(BROWSER_FLOW_PATH)
    def browser_flow(request: Request) -> Response:
        if store.users.session_user(cookie_of(request)) is not None:
            return JSONResponse(status_code=400, content={"error": {
                "id": "session_already_available", "code": 400, "status": "Bad Request",
                "reason": "A valid session was detected and thus login is not possible."}})
        csrf = secrets.token_urlsafe(32)
        fid, issued, expires = flows.new(csrf)
        if "application/json" in request.headers.get("accept", ""):
            resp: Response = JSONResponse(content=_flow_json(request, fid, issued, expires, [], csrf))
        else:
            resp = RedirectResponse(f"{str(request.base_url).rstrip('/')}{LOGIN_UI_PATH}?flow={fid}", status_code=303)
        resp.set_cookie(_csrf_cookie_name(request), csrf, max_age=_FLOW_TTL_S * 100, path="/", httponly=True,
                        samesite="lax")
        return resp

    @app.post(LOGIN_SUBMIT_PATH)
    def login_submit(request: Request, flow: str | None = Query(None), body: Any = Body(None)) -> JSONResponse:
        refusal = _flow_refusal(flows.state(flow), flow, body)
        if refusal is not None:
            return refusal
        csrf = flows.csrf(flow)
        if csrf is not None:
            refusal = _csrf_refusal(request, csrf, body)
            if refusal is not None:
                return refusal
        identifier = body.get("password_identifier") or body.get("identifier")
        password = body.get("password")
        if not store.users.check_password(identifier, password):
            log.info("login refused")
            message = [{"id": 4000006, "text": _INVALID_CREDENTIALS, "type": "error"}]
            if csrf is not None:  # a browser flow answers with itself, its messages added
                now = time.time()
                content = _flow_json(request, str(flow), now, now + _FLOW_TTL_S, message, csrf)
            else:
                fid, issued, expires = flows.new()
                content = _flow_json(request, fid, issued, expires, message)
            return JSONResponse(status_code=400, content=content)
        log.info("login ok for %s", identifier)
        return _logged_in(request, store, str(identifier), csrf)

    @app.get(WHOAMI_PATH)
    def whoami(request: Request) -> JSONResponse:
        token = token_of(request) or cookie_of(request)
        found = store.users.session_user(token)
        if found is None or token is None:
            return JSONResponse(status_code=401, content={"error": {"code": 401, "status": "Unauthorized",
                                                                    "reason": "No valid session credentials found."}})
        return JSONResponse(content=_session_json(token, *found))
