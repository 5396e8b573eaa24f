"""Running the service: one per data dir (a file lock), in a background thread or in the foreground."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from ..errors import ConfigError
from .jobs import QUEUED, JobStore
from ..web.serving import DataDirLock, ServerThread, atomic_write_text, format_url, listening_socket
from .app import create_app
from .runner import JobRunner
from .signing import as_bytes
from .worker import JobWorker

__all__ = ["RunningService", "serve_in_thread", "run_service"]

log = logging.getLogger(__name__)


class RunningService:
    """A started service: its URL, store and worker; :meth:`stop` ends it."""

    def __init__(self, server: ServerThread, store: JobStore, worker: JobWorker, lock: DataDirLock) -> None:
        self.server = server
        self.store = store
        self.worker = worker
        self.lock = lock
        self.url = format_url(*server.sock.getsockname()[:2])

    def stop(self, *, worker_timeout: float = 5.0) -> None:
        """Stop serving and the worker (a running job is left to the restart recovery), free the data dir."""
        self.server.stop()
        self.worker.stop(timeout=worker_timeout)
        self.server.sock.close()
        self.lock.release()

    def __enter__(self) -> RunningService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _open_store(data_dir: Path) -> JobStore:
    """The data dir's job store, with the jobs a killed service left running recovered (and logged)."""
    store = JobStore(data_dir / "jobs.sqlite3")
    for job in store.recover():
        if job.state == QUEUED:
            log.warning("job %s (project %s) was interrupted by a restart: re-queued", job.id, job.project_id)
        else:
            log.warning("job %s (project %s) failed: %s", job.id, job.project_id, job.error)
    return store


def _prepare(
    data_dir: str | Path, secret: bytes, runner: JobRunner, host: str, port: int, log_level: str
) -> RunningService:
    """Lock the data dir, open the store, bind the socket, start the worker; the server is not running yet."""
    data_dir = Path(data_dir).expanduser()
    data_dir.mkdir(parents=True, exist_ok=True)
    lock = DataDirLock(data_dir, "service.lock", holder="kern-finetune serve")
    lock.acquire()
    try:
        store = _open_store(data_dir)
        worker = JobWorker(store, runner, data_dir)
        sock = listening_socket(host, port)
    except BaseException:
        lock.release()
        raise
    server = ServerThread(create_app(store, secret, worker=worker), sock, name="kern-finetune-service",
                          log_level=log_level)
    service = RunningService(server, store, worker, lock)
    atomic_write_text(data_dir / "service.json", json.dumps({"url": service.url, "pid": os.getpid()}) + "\n",
                      mode=0o644)
    worker.start()
    return service


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
    service = _prepare(data_dir, as_bytes(secret), runner, host, port, log_level)
    if not service.server.start():
        service.stop()
        raise ConfigError(f"the trigger service on {service.url} did not start")
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
    service = _prepare(data_dir, secret, runner, host, port, log_level)
    print(f"kern-finetune serve: listening on {service.url} (data dir {Path(data_dir).expanduser()})", flush=True)
    try:
        service.server.run()
    finally:
        service.stop(worker_timeout=1.0)
