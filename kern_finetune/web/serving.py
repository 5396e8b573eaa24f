"""What the local host (:mod:`kern_finetune.host`) and the trigger service (:mod:`kern_finetune.service`) share:
a listening socket and its URL, uvicorn in a thread, a data-dir lock, atomic writes and SQLite transactions."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socket
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ..errors import ConfigError

__all__ = [
    "is_damaged",
    "set_aside",
    "listening_socket",
    "format_url",
    "ServerThread",
    "HEADER_TIMEOUT",
    "BODY_TIMEOUT",
    "BODY_MIN_RATE",
    "DataDirLock",
    "atomic_write_text",
    "immediate_transaction",
]

log = logging.getLogger(__name__)

HEADER_TIMEOUT = 10.0
"""Seconds a client has for a request's line and headers (from the connection's start or the previous answer)."""
BODY_TIMEOUT = 20.0
"""Seconds a client has for a request's body, plus one per :data:`BODY_MIN_RATE` bytes it sent."""
BODY_MIN_RATE = 1024.0
"""Bytes per second a body must keep up, past :data:`BODY_TIMEOUT`, not to be cut."""


def listening_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (``port=0``: any free one) and listening; a clear
    :class:`ConfigError` when it cannot be bound."""
    if not 0 <= port <= 65535:
        raise ConfigError(f"cannot listen on {host}:{port}: a port is 0 (any free one) to 65535")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def format_url(host: str, port: int, scheme: str = "http") -> str:
    """``http://host:port``, an IPv6 address in brackets (``http://[::1]:4455``)."""
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}:{port}"


class ServerThread:
    """A uvicorn server on an already bound socket: :meth:`start` runs it in a daemon thread,
    :meth:`run` in the calling thread; :meth:`stop` ends it (forced when a client holds a connection open).
    Its read timeouts (:mod:`kern_finetune.web.timeouts`) are this module's constants when it is made."""

    def __init__(self, app: Any, sock: socket.socket, *, name: str, log_level: str = "warning",
                 access_log: bool = False, timeout_graceful_shutdown: int | None = None) -> None:
        import uvicorn  # the server stack loads only where a server runs

        from .timeouts import guarded_h11_protocol

        self.sock = sock
        self.name = name
        http = guarded_h11_protocol(header_timeout=HEADER_TIMEOUT, body_timeout=BODY_TIMEOUT, body_min_rate=BODY_MIN_RATE)
        config = uvicorn.Config(app, log_level=log_level, lifespan="off", access_log=access_log,
                                timeout_graceful_shutdown=timeout_graceful_shutdown, http=http)
        self.server = uvicorn.Server(config)
        self._thread: threading.Thread | None = None

    @property
    def app(self) -> Any:
        """The ASGI application served."""
        return self.server.config.app

    @property
    def port(self) -> int:
        """The port the socket is bound to."""
        return int(self.sock.getsockname()[1])

    def start(self, timeout: float = 30.0) -> bool:
        """Serve in a background thread; True once it accepts connections, False when it died or did not come
        up within ``timeout`` seconds (it is then asked to exit; the caller closes what it opened)."""
        self._thread = threading.Thread(target=self.run, name=self.name, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.server.should_exit = True
                return False
            time.sleep(0.02)
        return True

    def run(self, on_started: Callable[[], None] | None = None) -> None:
        """Serve in this thread until asked to exit (or SIGINT/SIGTERM in the main thread).

        ``on_started()`` runs once the server accepts connections; when it raises, the server stops."""
        if on_started is not None:
            threading.Thread(target=self._announce, args=(on_started,), name=f"{self.name}:ready", daemon=True).start()
        self.server.run(sockets=[self.sock])

    def _announce(self, on_started: Callable[[], None]) -> None:
        while not self.server.started:
            if self.server.should_exit:
                return
            time.sleep(0.05)
        try:
            on_started()
        except Exception:  # a failing announcement must not leave a silent half-started server
            log.exception("could not announce %s; stopping", self.name)
            self.server.should_exit = True

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the server to exit and wait for its thread; force it when a connection keeps it open."""
        self.server.should_exit = True
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout)
            if self._thread.is_alive():
                self.server.force_exit = True
                self._thread.join(timeout)

    def is_alive(self) -> bool:
        """Whether the background thread runs."""
        return self._thread is not None and self._thread.is_alive()


class DataDirLock:
    """An exclusive ``flock`` on ``<data_dir>/<name>``: one process per data dir (freed by the OS when the
    process dies, however it dies)."""

    def __init__(self, data_dir: Path, name: str, *, holder: str) -> None:
        self.path = Path(data_dir) / name
        self.holder = holder
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock; :class:`ConfigError` when another process holds it."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConfigError(f"another {self.holder} uses the data dir {self.path.parent}") from None
        self._fd = fd

    def release(self) -> None:
        """Free the lock (nothing when it is not held)."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def atomic_write_text(path: Path, text: str, *, mode: int = 0o600) -> None:
    """Write ``text`` to ``path`` through a temporary file renamed into place: a reader sees no file or the
    whole file. The temporary file is created with mode 0600 and gets ``mode`` before the rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def immediate_transaction(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction on an autocommit connection (``isolation_level=None``): ``BEGIN IMMEDIATE``
    (the write lock is taken at once, so two writers never deadlock on an upgrade) ... ``COMMIT``, rolled
    back on any error."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def is_damaged(exc: sqlite3.DatabaseError) -> bool:
    """A damaged file (``file is not a database``, ``disk image is malformed``), not a full disk, a read-only
    file or a lock (``OperationalError``), which renaming the file would not cure."""
    return not isinstance(exc, sqlite3.OperationalError) or "malformed" in str(exc) or "not a database" in str(exc)


def set_aside(path: Path, exc: BaseException) -> Path:
    """Rename a damaged SQLite file (and its journal) to ``<name>.damaged-<time>``, with one warning line."""
    aside = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
    for suffix in ("-journal", "-wal", "-shm"):
        extra = path.with_name(path.name + suffix)
        if extra.exists():
            os.replace(extra, aside.with_name(aside.name + suffix))
    os.replace(path, aside)
    log.warning("%s is damaged (%s): set aside as %s and rebuilt", path, exc, aside.name)
    return aside
