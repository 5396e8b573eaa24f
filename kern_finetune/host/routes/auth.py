"""Kratos-style login (``/.ory/kratos/public/...``): the API login flow, its submission, ``sessions/whoami``.

Ory Kratos's API flow as refinery's SDK uses it: ``GET`` a flow, ``POST`` the credentials to its
``ui.action``; the answer carries ``session_token``, which the client sends as ``Authorization: Bearer``.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
import uuid
from typing import Any

from fastapi import Body, FastAPI, Query, Request
from fastapi.responses import JSONResponse

from ..store import HostStore
from .common import iso

__all__ = ["LOGIN_FLOW_PATH", "LOGIN_SUBMIT_PATH", "WHOAMI_PATH", "LoginFlows", "add_auth_routes", "bearer_of",
           "token_of"]

log = logging.getLogger(__name__)

LOGIN_FLOW_PATH = "/.ory/kratos/public/self-service/login/api"
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


def token_of(request: Request) -> str | None:
    """The session token: ``Authorization: Bearer``, else the ``identifier`` or ``X-Session-Token`` header."""
    auth = request.headers.get("authorization", "")
    if auth[:7].lower() == "bearer " and auth[7:].strip():
        return auth[7:].strip()
    return request.headers.get("identifier") or request.headers.get("x-session-token") or None


class LoginFlows:
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
        "issued_at": iso(issued),
        "expires_at": iso(expires),
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


def add_auth_routes(app: FastAPI, store: HostStore) -> None:
    """``/health``, the login flow, its submission and ``whoami``."""
    flows = LoginFlows()

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(LOGIN_FLOW_PATH)
    def login_flow(request: Request) -> dict[str, Any]:
        fid, issued, expires = flows.new()
        return _flow_json(request, fid, issued, expires, [])

    @app.post(LOGIN_SUBMIT_PATH)
    def login_submit(request: Request, flow: str | None = Query(None), body: Any = Body(None)) -> JSONResponse:
        refusal = _flow_refusal(flows.state(flow), flow, body)
        if refusal is not None:
            return refusal
        identifier = body.get("password_identifier") or body.get("identifier")
        password = body.get("password")
        if not store.users.check_password(identifier, password):
            log.info("login refused")
            fid, issued, expires = flows.new()
            content = _flow_json(request, fid, issued, expires, [{"id": 4000006, "text": _INVALID_CREDENTIALS, "type": "error"}])
            return JSONResponse(status_code=400, content=content)
        token, issued, expires = store.users.create_session(str(identifier))
        log.info("login ok for %s", identifier)
        return JSONResponse(content={"session_token": token, "session": _session_json(token, str(identifier), issued, expires)})

    @app.get(WHOAMI_PATH)
    def whoami(request: Request) -> JSONResponse:
        token = token_of(request)
        found = store.users.session_user(token)
        if found is None or token is None:
            return JSONResponse(status_code=401, content={"error": {"code": 401, "status": "Unauthorized",
                                                                    "reason": "No valid session credentials found."}})
        return JSONResponse(content=_session_json(token, *found))
