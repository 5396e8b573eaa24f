"""Read timeouts for both servers' HTTP/1.1 connections, and a close on ambiguous message framing.

uvicorn (h11) has only a keep-alive timeout, so a few slow clients could hold a server's connections for good.
:func:`guarded_h11_protocol` makes uvicorn's h11 protocol class with three rules, timed per connection
(user-facing: docs/host.md, "Security notes"):

- **headers**: complete within ``header_timeout`` s of the connection's start or the previous answer, trickling
  or not; else ``408`` and close (an idle connection is closed without an answer).
- **body**: complete within ``body_timeout`` s plus 1 s per ``body_min_rate`` bytes received, from the end of
  its headers; else ``408`` (nothing when the app already answered) and close; the app sees the client gone.
- **framing**: both ``Content-Length`` and ``Transfer-Encoding`` is answered ``400`` and the connection closed
  (RFC 9112, section 6.1: a proxy in front might have framed it the other way).

Time spent by the app between a complete request and its answer is never cut.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["guarded_h11_protocol", "AMBIGUOUS_FRAMING"]

log = logging.getLogger(__name__)

AMBIGUOUS_FRAMING = "request has both Content-Length and Transfer-Encoding; send one of them"


class _GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with the module docstring's rules; the limits are class attributes."""

    header_timeout = 10.0
    body_timeout = 20.0
    body_min_rate = 1024.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._phase: str | None = None  # "headers" | "body" | None (the app's turn)
        self._phase_start = 0.0
        self._body_bytes = 0
        self._guard: asyncio.TimerHandle | None = None
        self._framing_error = False
        next_event = self.conn.next_event

        def checked_next_event() -> Any:
            event = next_event()
            if isinstance(event, h11.Request):
                names = {name.lower() for name, _ in event.headers}
                if b"content-length" in names and b"transfer-encoding" in names:
                    self._framing_error = True
                    raise h11.RemoteProtocolError(AMBIGUOUS_FRAMING)  # uvicorn answers 400 and closes
            return event

        self.conn.next_event = checked_next_event  # type: ignore[method-assign]

    # -- the hooks of uvicorn's protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._watch()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._phase == "body":
            self._body_bytes += len(data)
        super().data_received(data)
        self._watch()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch()

    def send_400_response(self, msg: str) -> None:
        if self._framing_error:
            log.info("closed a connection from %s: %s", self._peer(), AMBIGUOUS_FRAMING)
            msg = AMBIGUOUS_FRAMING
        super().send_400_response(msg)

    # -- the clock ------------------------------------------------------------------------------------------

    def _peer(self) -> str:
        return "%s:%d" % self.client if self.client else "?"

    def _cancel(self) -> None:
        if self._guard is not None:
            self._guard.cancel()
            self._guard = None

    def _current_phase(self) -> str | None:
        state = self.conn.their_state
        return "headers" if state is h11.IDLE else "body" if state is h11.SEND_BODY else None

    def _deadline(self) -> float:
        if self._phase == "headers":
            return self._phase_start + self.header_timeout
        return self._phase_start + self.body_timeout + self._body_bytes / self.body_min_rate

    def _watch(self) -> None:
        """Start the clock of the phase the connection is in, when it changed."""
        if self.transport is None or self.transport.is_closing():
            self._cancel()
            return
        phase = self._current_phase()
        if phase == self._phase:
            return
        self._cancel()
        self._phase, self._phase_start, self._body_bytes = phase, self.loop.time(), 0
        if phase is not None:
            self._guard = self.loop.call_at(self._deadline(), self._check)

    def _check(self) -> None:
        self._guard = None
        if self.transport.is_closing():
            return
        if self._current_phase() != self._phase:
            self._phase = None
            self._watch()
            return
        now = self.loop.time()
        # while the server itself stops reading (the app has not consumed what came), the body's clock waits
        if now < self._deadline() or (self._phase == "body" and self.flow.read_paused):
            self._guard = self.loop.call_at(max(self._deadline(), now + 0.1), self._check)
            return
        self._time_out()

    def _time_out(self) -> None:
        if self._phase == "headers":
            received = bool(self.conn.trailing_data[0])
            if received:
                reason = (f"request headers not complete within {self.header_timeout:g} s; send the request line "
                          "and headers at once")
                log.info("closed a connection from %s: %s", self._peer(), reason)
                self._write_408(reason, raw=True)
        else:
            reason = (f"request body not complete in time ({self._body_bytes} bytes in "
                      f"{self.loop.time() - self._phase_start:.1f} s); send it within {self.body_timeout:g} s plus "
                      f"1 s per {self.body_min_rate:g} bytes")
            log.info("closed a connection from %s: %s", self._peer(), reason)
            cycle = self.cycle
            if cycle is not None:
                if not cycle.response_started:
                    self._write_408(reason, raw=False)
                    cycle.response_started = cycle.response_complete = True
                cycle.disconnected = True  # the app reading the body gets http.disconnect
                cycle.message_event.set()
        self._cancel()
        self.transport.close()

    def _write_408(self, reason: str, *, raw: bool) -> None:
        body = reason.encode() + b"\n"
        headers = [(b"content-type", b"text/plain; charset=utf-8"), (b"connection", b"close"),
                   (b"content-length", str(len(body)).encode())]
        if raw:  # no request line yet: h11 has no response to send, so it is written as is
            head = b"HTTP/1.1 408 Request Timeout\r\n" + b"".join(k + b": " + v + b"\r\n" for k, v in headers)
            self.transport.write(head + b"\r\n" + body)
            return
        try:
            out = self.conn.send(h11.Response(status_code=408, headers=headers, reason=b"Request Timeout"))
            out = (out or b"") + (self.conn.send(h11.Data(data=body)) or b"") + (self.conn.send(h11.EndOfMessage()) or b"")
        except h11.LocalProtocolError:  # the connection's state allows no answer now: just close
            return
        self.transport.write(out)


def guarded_h11_protocol(*, header_timeout: float, body_timeout: float, body_min_rate: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol class with these limits (give it to ``uvicorn.Config(http=...)``)."""
    return type("GuardedH11Protocol", (_GuardedH11Protocol,), {
        "header_timeout": float(header_timeout), "body_timeout": float(body_timeout),
        "body_min_rate": float(body_min_rate),
    })
