"""Running the service: one per data dir (a file lock), in a background thread or in the foreground."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._net import bind_socket
from ..errors import ConfigError
from ..jobs import QUEUED, JobStore
from .app import create_app
from .runner import JobRunner
from .signing import as_bytes
from .worker import JobWorker

__all__ = ["RunningService", "serve_in_thread", "run_service"]

log = logging.getLogger(__name__)


class _DataDirLock:
    """An exclusive ``flock`` on ``<data-dir>/service.lock``: one service per data dir (freed by the OS
    when the process dies, however it dies)."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "service.lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConfigError(f"another kern-finetune serve uses the data dir {self.path.parent}") from None
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _bind(host: str, port: int) -> socket.socket:
    sock = bind_socket(host, port)
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


@dataclass
class RunningService:
    """A started service: its URL, store and worker; :meth:`stop` ends it."""

    url: str
    store: JobStore
    worker: JobWorker
    _server: Any
    _thread: threading.Thread | None
    _lock: _DataDirLock
    _sock: socket.socket

    def stop(self) -> None:
        """Stop serving and the worker (a running job is left to the restart recovery)."""
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
        self.worker.stop()
        self._sock.close()
        self._lock.release()

    def __enter__(self) -> RunningService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _prepare(
    data_dir: str | Path, secret: bytes, runner: JobRunner, host: str, port: int, log_level: str
) -> tuple[RunningService, Callable[[], None]]:
    import uvicorn

    data_dir = Path(data_dir).expanduser()
    data_dir.mkdir(parents=True, exist_ok=True)
    lock = _DataDirLock(data_dir)
    lock.acquire()
    try:
        store = JobStore(data_dir / "jobs.sqlite3")
        for job in store.recover():
            if job.state == QUEUED:
                log.warning("job %s (project %s) was interrupted by a restart: re-queued", job.id, job.project_id)
            else:
                log.warning("job %s (project %s) failed: %s", job.id, job.project_id, job.error)
        worker = JobWorker(store, runner, data_dir)
        app = create_app(store, secret, worker=worker)
        sock = _bind(host, port)
    except BaseException:
        lock.release()
        raise
    actual_host, actual_port = sock.getsockname()[:2]
    url = f"http://{'[' + actual_host + ']' if ':' in actual_host else actual_host}:{actual_port}"
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, lifespan="off", access_log=False))
    service = RunningService(url, store, worker, server, None, lock, sock)
    (data_dir / "service.json").write_text(json.dumps({"url": url, "pid": os.getpid()}) + "\n")
    worker.start()
    return service, lambda: server.run(sockets=[sock])


def serve_in_thread(
    data_dir: str | Path,
    secret: str | bytes,
    runner: JobRunner,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    log_level: str = "warning",
) -> RunningService:
    """Start the service in a background thread (``port=0``: any free port; see ``.url``)."""
    service, run = _prepare(data_dir, as_bytes(secret), runner, host, port, log_level)
    thread = threading.Thread(target=run, name="kern-finetune-service", daemon=True)
    service._thread = thread  # noqa: SLF001
    thread.start()
    deadline = time.time() + 30
    while not service._server.started:  # noqa: SLF001
        if not thread.is_alive() or time.time() > deadline:
            service.stop()
            raise ConfigError(f"the trigger service on {service.url} did not start")
        time.sleep(0.02)
    return service


def run_service(
    data_dir: str | Path,
    secret: bytes,
    runner: JobRunner,
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    log_level: str = "info",
) -> None:
    """Serve in the foreground until SIGINT/SIGTERM."""
    service, run = _prepare(data_dir, secret, runner, host, port, log_level)
    print(f"kern-finetune serve: listening on {service.url} (data dir {Path(data_dir).expanduser()})", flush=True)
    try:
        run()
    finally:
        service.worker.stop(timeout=1.0)
        service._sock.close()  # noqa: SLF001
        service._lock.release()  # noqa: SLF001
