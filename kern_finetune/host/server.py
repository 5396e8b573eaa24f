"""Run the local host: in a background thread (tests, the demo) or in the foreground (the CLI)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import uvicorn

from .._net import bind_socket, is_loopback
from ..errors import ConfigError, HostUnavailableError
from .app import create_app
from .defaults import DEFAULT_DATA_DIR, DEMO_PASSWORD, DEMO_USER
from .store import HostStore

__all__ = [
    "DEMO_USER",
    "DEMO_PASSWORD",
    "DEFAULT_DATA_DIR",
    "RunningHost",
    "serve_in_thread",
    "serve_forever",
    "is_loopback",
    "check_bind",
]

log = logging.getLogger(__name__)



def check_bind(host: str, user_name: str, password: str) -> None:
    """Refuse to expose the documented demo password beyond this machine."""
    if not is_loopback(host) and password == DEMO_PASSWORD:
        raise ConfigError(
            f"refusing to bind {host} with the demo password: set --user-name and a password "
            "(--password-file or KERN_HOST_PASSWORD), or bind 127.0.0.1"
        )


class RunningHost:
    """A host serving in a background thread; ``stop()`` (or leaving the ``with`` block) shuts it down."""

    def __init__(self, server: uvicorn.Server, thread: threading.Thread, store: HostStore, host: str, port: int,
                 user_name: str, *, push_extension: bool = True) -> None:
        self._server = server
        self._thread = thread
        self.store = store
        self.host = host
        self.port = port
        self.user_name = user_name
        self.push_extension = push_extension
        self.project_id = store.project_id
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{port}"

    def secrets(self, password: str) -> dict[str, str]:
        """A refinery ``secrets.json`` mapping for this host (the caller supplies the password it set)."""
        return {"user_name": self.user_name, "password": password, "project_id": self.project_id, "uri": self.url}

    def stop(self, timeout: float = 10.0) -> None:
        """Shut the server down, wait for its thread, close the database."""
        if self._thread.is_alive():
            self._server.should_exit = True
            self._thread.join(timeout)
            if self._thread.is_alive():  # a client holding a connection open: force it
                self._server.force_exit = True
                self._thread.join(timeout)
        self.store.close()

    def __enter__(self) -> RunningHost:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"RunningHost(url={self.url!r}, project_id={self.project_id!r})"


def _open_store(export_path: str | Path | None, data_dir: str | Path, user_name: str, password: str,
                **kwargs: Any) -> HostStore:
    store = HostStore.open(data_dir, export_path, **kwargs)
    try:
        store.configure_user(user_name, password)
    except BaseException:
        store.close()
        raise
    return store


def serve_in_thread(
    export_path: str | Path | None,
    *,
    data_dir: str | Path,
    port: int = 0,
    host: str = "127.0.0.1",
    user_name: str = DEMO_USER,
    password: str = DEMO_PASSWORD,
    id_attribute: str = "running_id",
    project_id: str | None = None,
    project_name: str | None = None,
    push_extension: bool = True,
    startup_timeout: float = 30.0,
) -> RunningHost:
    """Start a host for the project in ``export_path`` (imported into ``data_dir`` on first use).

    ``port=0`` binds a free port; the real one is in ``RunningHost.port`` / ``.url``. ``export_path``
    may be None when ``data_dir`` already holds a project. Raises :class:`ConfigError` /
    :class:`~kern_finetune.errors.ExportError` for bad inputs, :class:`HostUnavailableError` when the
    server does not come up. ``push_extension=False`` serves only what a real refinery serves (the push
    extension's routes answer 404, see ``docs/host.md``).
    """
    check_bind(host, user_name, password)
    store = _open_store(export_path, data_dir, user_name, password, id_attribute=id_attribute,
                        project_id=project_id, project_name=project_name)
    try:
        sock = bind_socket(host, port)
        real_port = sock.getsockname()[1]
        config = uvicorn.Config(create_app(store, push_extension=push_extension), log_level="warning", access_log=False, lifespan="off",
                                timeout_graceful_shutdown=5)
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=f"kern-host:{real_port}",
                                  daemon=True)
        thread.start()
        deadline = time.monotonic() + startup_timeout
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                server.should_exit = True
                sock.close()
                raise HostUnavailableError(f"the local host on {host}:{real_port} did not start")
            time.sleep(0.02)
    except BaseException:
        store.close()
        raise
    running = RunningHost(server, thread, store, host, real_port, user_name, push_extension=push_extension)
    log.info("host serving project %s at %s", running.project_id, running.url)
    return running


def serve_forever(
    export_path: str | Path | None,
    *,
    data_dir: str | Path,
    port: int,
    host: str,
    user_name: str,
    password: str,
    id_attribute: str = "running_id",
    project_id: str | None = None,
    project_name: str | None = None,
    push_extension: bool = True,
    on_ready: Callable[[HostStore, str], None] | None = None,
) -> None:
    """Serve in the foreground until interrupted (Ctrl-C).

    ``on_ready(store, url)`` runs once the server accepts connections (``url`` has the real port,
    also for ``port=0``).
    """
    check_bind(host, user_name, password)
    store = _open_store(export_path, data_dir, user_name, password, id_attribute=id_attribute,
                        project_id=project_id, project_name=project_name)
    try:
        config = uvicorn.Config(create_app(store, push_extension=push_extension), host=host, port=port, log_level="info", lifespan="off",
                                timeout_graceful_shutdown=5)
        server = uvicorn.Server(config)
        if on_ready is not None:
            threading.Thread(target=_announce, args=(server, store, host, on_ready), daemon=True).start()
        server.run()
    finally:
        store.close()


def _announce(server: uvicorn.Server, store: HostStore, host: str, on_ready: Callable[[HostStore, str], None]) -> None:
    """Wait until ``server`` listens, then call ``on_ready`` with the URL it serves."""
    while not server.started:
        if server.should_exit:
            return
        time.sleep(0.05)
    port = 0
    for srv in getattr(server, "servers", []):
        for sock in srv.sockets:
            port = sock.getsockname()[1]
            break
    shown = f"[{host}]" if ":" in host else host
    try:
        on_ready(store, f"http://{shown}:{port}")
    except Exception:  # a failing announcement must not leave a silent half-started host
        log.exception("could not announce the host; stopping")
        server.should_exit = True
