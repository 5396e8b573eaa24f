"""A request-body size limit for ASGI servers, enforced while the body streams in (pure ASGI: nothing buffered).

Both servers wrap their app in :class:`BodyLimit`, in front of every route and authentication check:

- a ``Content-Length`` over the limit is answered ``413`` before a byte of the body is read; an invalid one ``400``;
- otherwise the bytes are counted as the app reads them (chunked or not), and the read that passes the limit
  ends the request with ``413``, replacing whatever answer the app tries to give to a body it did not get whole;
- with ``anonymous_max_bytes`` and ``is_authenticated(scope)``, only an authenticated request may pass the
  smaller anonymous limit (asked once, in a worker thread); others get ``anonymous_status`` (the host: ``401``,
  so a client whose token expired logs in again).

After the 413, uvicorn discards the rest of the body and closes the connection at its keep-alive timeout (or
the body timeout of :mod:`kern_finetune.web.timeouts`). A client that leaves mid-body ends the request quietly.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["BodyLimit", "BodyTooLarge"]

Render = Callable[[int, str], dict[str, Any]]


class BodyTooLarge(Exception):
    """Raised from ``receive`` inside the app when the body passes the limit (caught by :class:`BodyLimit`)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body over {limit} bytes")
        self.limit = limit


def _default_render(status: int, detail: str) -> dict[str, Any]:
    return {"error": "payload_too_large" if status == 413 else "bad_request", "detail": detail}


class BodyLimit:
    """ASGI middleware: refuse request bodies over the limit (see the module docstring).

    ``render(status, detail)`` makes the JSON error body (default: the service's ``{"error", "detail"}``);
    ``is_authenticated`` runs in a worker thread (it may
    query a database) and only for requests whose body passes ``anonymous_max_bytes``."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_bytes: int,
        anonymous_max_bytes: int | None = None,
        is_authenticated: Callable[[Scope], bool] | None = None,
        anonymous_status: int = 413,
        render: Render | None = None,
    ) -> None:
        if max_bytes < 0 or (anonymous_max_bytes is not None and anonymous_max_bytes < 0):
            raise ValueError("body limits must be >= 0")
        if (anonymous_max_bytes is None) != (is_authenticated is None):
            raise ValueError("anonymous_max_bytes and is_authenticated go together")
        self.app = app
        self.max_bytes = max_bytes
        self.anonymous_max_bytes = min(anonymous_max_bytes, max_bytes) if anonymous_max_bytes is not None else max_bytes
        self.is_authenticated = is_authenticated
        self.anonymous_status = anonymous_status
        self.render = render or _default_render

    async def _answer(self, send: Send, status: int, detail: str) -> None:
        body = json.dumps(self.render(status, detail)).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    async def _refuse(self, send: Send, limit: int) -> None:
        if limit < self.max_bytes:  # refused for want of credentials, not for its size as such
            await self._answer(send, self.anonymous_status,
                               f"request body over {limit} bytes without a valid session token; log in first")
        else:
            await self._answer(send, 413, f"request body over {limit} bytes; send smaller requests")

    async def _limit(self, scope: Scope) -> int:
        """The limit for a body past the anonymous limit (the full one when the request is authenticated)."""
        if self.is_authenticated is None:
            return self.max_bytes
        try:
            ok = await run_in_threadpool(self.is_authenticated, scope)
        except Exception:  # noqa: BLE001 - an auth check that fails means "not authenticated"
            ok = False
        return self.max_bytes if ok else self.anonymous_max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = {v.strip() for k, v in scope.get("headers", ()) if k.lower() == b"content-length"}
        if declared:
            text = next(iter(declared)).decode("latin-1")
            if len(declared) > 1 or not text.isascii() or not text.isdigit():
                await self._answer(send, 400, "invalid Content-Length header")
                return
            if int(text) > self.anonymous_max_bytes:
                limit = await self._limit(scope)
                if int(text) > limit:
                    await self._refuse(send, limit)
                    return

        limit: int | None = None  # decided once the body passes the anonymous limit
        received = 0
        exceeded = False
        started = False

        async def limited_receive() -> Message:
            nonlocal received, exceeded, limit
            if exceeded:
                raise BodyTooLarge(limit or 0)
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.anonymous_max_bytes:
                    if limit is None:
                        limit = await self._limit(scope)
                    if received > limit:
                        exceeded = True
                        raise BodyTooLarge(limit)
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if exceeded and not started:
                return  # the app's answer to a body it never got whole: the 413 below replaces it
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except ClientDisconnect:
            if not exceeded:
                return  # the client left mid-body, or the server cut it (kern_finetune.web.timeouts): nobody to answer
        except Exception:
            if not exceeded:
                raise
        if exceeded and not started:
            await self._refuse(send, limit or 0)
