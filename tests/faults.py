"""Client-side fault injection: a ``requests`` transport adapter that fails chosen calls.

The client takes any :class:`requests.Session` (its swappable transport). Tests mount a
:class:`FaultAdapter` on one (``session.mount("http://", adapter)``), so they talk to the product's own host
(``kern_finetune.host.serve_in_thread``) over real HTTP on 127.0.0.1 and still see the failures a
real refinery and a real network produce, without a stand-in host that could drift from the real one:

============== ===========================================================================================
action         what the client sees
============== ===========================================================================================
``500``        ``500 {"detail": "internal error"}``; the host never saw the request
``null``       ``200`` with body ``null``: refinery's proxy passing on a gateway error
               (refinery-gateway-proxy ``app.py`` returns None for any gateway status it does not map)
``401``        oathkeeper's 401 for an expired/unknown bearer token (its JSON error handler's body,
               not the proxy's ``error_code``); the host never saw the request
``403``        the proxy's ``403 {"error_code": "FORBIDDEN_USER"}``
``login-302``  oathkeeper's redirect error handler: ``302`` to ``http://localhost:4455/auth/login``
               (refinery's ``oathkeeper/access-rules.yml`` gives the ``/api`` rule that handler)
``drop``       the connection drops before the host got the request (``ConnectionError``)
``refused``    connection refused (the request was never sent)
``drop-after`` the host did the work, then the connection dropped: the answer is lost
``timeout``    the host did the work, the answer came too late (``ReadTimeout``)
============== ===========================================================================================

``respond(method, path, status, body)`` answers with any status and raw body instead. Every rule
counts its ``hits``; ``sent`` lists the requests that reached the host. Nothing here sleeps: a
timeout is raised, not waited for, so no test depends on the machine's speed.
"""

from __future__ import annotations

import io
import json
import re
import threading
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.response import HTTPResponse

__all__ = ["FaultAdapter", "Rule", "Sent", "OATHKEEPER_401"]

# oathkeeper's json error handler (refinery's oathkeeper/oathkeeper.yml: errors.handlers.json, verbose)
OATHKEEPER_401 = {
    "error": {"code": 401, "status": "Unauthorized", "reason": "session is expired", "message": "Access credentials are invalid"}
}
_SYNTHETIC = {
    "500": (500, b'{"detail": "internal error"}'),
    "null": (200, b"null"),
    "401": (401, json.dumps(OATHKEEPER_401).encode()),
    "403": (403, b'{"error_code": "FORBIDDEN_USER"}'),
    "login-302": (302, b""),
}
_HEADERS = {"login-302": {"location": "http://localhost:4455/auth/login"}}
_ACTIONS = set(_SYNTHETIC) | {"drop", "refused", "drop-after", "timeout", "respond"}


@dataclass
class Rule:
    method: str
    path: re.Pattern[str]
    action: str
    times: int
    status: int = 0
    body: bytes = b""
    hits: int = 0


@dataclass(frozen=True)
class Sent:
    """A request that reached the host."""

    method: str
    path: str
    query: str
    headers: dict[str, str] = field(repr=False)
    body: bytes = field(repr=False)

    def json(self) -> Any:
        return json.loads(self.body)


class FaultAdapter(HTTPAdapter):
    """Fails the calls its rules match (``times`` each), forwards every other call unchanged."""

    def __init__(self) -> None:
        super().__init__(max_retries=0)
        self.rules: list[Rule] = []
        self.sent: list[Sent] = []
        self._lock = threading.Lock()

    # ---- set-up ---------------------------------------------------------------------------------
    def fail(self, method: str, path_regex: str, action: str, times: int = 1) -> Rule:
        if action not in _ACTIONS or action == "respond":
            raise ValueError(f"unknown fault {action!r}")
        rule = Rule(method.upper(), re.compile(path_regex), action, times)
        self.rules.append(rule)
        return rule

    def respond(self, method: str, path_regex: str, status: int, body: bytes | str, times: int = 1) -> Rule:
        raw = body.encode() if isinstance(body, str) else body
        rule = Rule(method.upper(), re.compile(path_regex), "respond", times, status=status, body=raw)
        self.rules.append(rule)
        return rule

    def clear(self) -> None:
        self.rules.clear()

    def sent_to(self, method: str, path_regex: str) -> list[Sent]:
        rx = re.compile(path_regex)
        return [s for s in self.sent if s.method == method.upper() and rx.search(s.path)]

    # ---- transport ------------------------------------------------------------------------------
    def _take(self, method: str, path: str) -> Rule | None:
        with self._lock:
            for rule in self.rules:
                if rule.times > 0 and rule.method == method and rule.path.search(path):
                    rule.times -= 1
                    rule.hits += 1
                    return rule
        return None

    def _synthetic(self, request: requests.PreparedRequest, status: int, body: bytes,
                   headers: dict[str, str] | None = None) -> requests.Response:
        raw = HTTPResponse(body=io.BytesIO(body), status=status,
                           headers={"content-type": "application/json", **(headers or {})},
                           preload_content=False, decode_content=False)
        return self.build_response(request, raw)

    def _forward(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:
        parts = urlsplit(request.url or "")
        body = request.body if isinstance(request.body, bytes) else (request.body or "").encode()
        with self._lock:
            self.sent.append(Sent(request.method or "", parts.path, parts.query,
                                  {k.lower(): v for k, v in request.headers.items()}, body))
        return super().send(request, **kwargs)

    def send(self, request: requests.PreparedRequest, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        path = urlsplit(request.url or "").path
        rule = self._take(request.method or "", path)
        if rule is None:
            return self._forward(request, **kwargs)
        if rule.action == "respond":
            return self._synthetic(request, rule.status, rule.body)
        if rule.action in _SYNTHETIC:
            return self._synthetic(request, *_SYNTHETIC[rule.action], _HEADERS.get(rule.action))
        if rule.action == "drop":
            raise requests.exceptions.ConnectionError(
                "('Connection aborted.', RemoteDisconnected('Remote end closed connection without response'))",
                request=request,
            )
        if rule.action == "refused":
            raise requests.exceptions.ConnectionError(
                "HTTPConnectionPool: Max retries exceeded (Caused by NewConnectionError('Failed to establish a "
                "new connection: [Errno 111] Connection refused'))",
                request=request,
            )
        response = self._forward(request, **kwargs)
        response.close()
        if rule.action == "drop-after":
            raise requests.exceptions.ConnectionError(
                "('Connection aborted.', RemoteDisconnected('Remote end closed connection without response'))",
                request=request,
            )
        raise requests.exceptions.ReadTimeout("Read timed out. (read timeout=...)", request=request)
