"""Kratos-style login (``/.ory/kratos/public/...``): the API and browser login flows, their submission, ``whoami``.

The API flow answers ``session_token`` (sent as ``Authorization: Bearer``); the browser flow (Kratos v1.1,
refinery ``refinery/versions.json``) checks a CSRF token in body and cookie and sets ``ory_kratos_session``,
the only credential oathkeeper accepts on ``/refinery-gateway/**``. See ``docs/host.md``, ``docs/model-door.md``.
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
_STATUS = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 410: "Gone"}
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
    return bearer_of(request) or request.headers.get("identifier") or request.headers.get("x-session-token") or None


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

    def get(self, fid: str | None) -> tuple[str, str | None]:
        """``(state, csrf)``: ``ok``, ``expired`` or ``unknown``, and a browser flow's CSRF token (else None)."""
        with self._lock:
            found = self._flows.get(fid or "")
        if found is None:
            return "unknown", None
        return "ok" if found[0] > time.time() else "expired", found[1]


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


def _kratos_error(code: int, reason: str, message: str | None = None, *, error_id: str | None = None) -> JSONResponse:
    """Kratos's JSON error ``{"error": {"id", "code", "status", "reason", "message"}}`` (id, message if given)."""
    error: dict[str, Any] = {} if error_id is None else {"id": error_id}
    error.update(code=code, status=_STATUS[code], reason=reason)
    if message is not None:
        error["message"] = message
    return JSONResponse(status_code=code, content={"error": error})


def _flow_refusal(state: str, flow: str | None, body: Any) -> JSONResponse | None:
    """Kratos's answer to a submission on a missing, unknown or expired flow, or with a malformed body."""
    if state == "unknown":
        return _kratos_error(400 if flow is None else 404, "The login flow is missing or unknown; fetch a new one.",
                             "The requested resource could not be found")
    if state == "expired":
        return _kratos_error(410, "The login flow expired; fetch a new one.", "flow expired",
                             error_id="self_service_flow_expired")
    if not isinstance(body, dict) or body.get("method", "password") != "password":
        return _kratos_error(400, 'Expected a JSON body {"method": "password", "identifier", "password"}.',
                             "The request was malformed or contained invalid parameters")
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
    return _kratos_error(403, _CSRF_REASON, "the request was rejected to protect you from Cross-Site-Request-Forgery",
                         error_id="security_csrf_violation")


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
            return _kratos_error(400, "A valid session was detected and thus login is not possible.",
                                 error_id="session_already_available")
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
        state, csrf = flows.get(flow)
        refusal = _flow_refusal(state, flow, body)
        if refusal is not None:
            return refusal
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
            return _kratos_error(401, "No valid session credentials found.")
        return JSONResponse(content=_session_json(token, *found))
