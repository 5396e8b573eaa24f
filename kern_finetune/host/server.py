"""Run the local host: in a background thread (tests, the demo) or in the foreground (the CLI)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from ..web.net import is_loopback
from ..errors import ConfigError, HostUnavailableError
from ..web.serving import ServerThread, format_url, listening_socket
from .app import create_app
from .defaults import DEMO_PASSWORD, DEMO_USER
from .store import HostStore

__all__ = ["RunningHost", "serve_in_thread", "serve_forever", "is_loopback", "check_bind"]

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

    def __init__(self, server: ServerThread, store: HostStore, host: str, user_name: str) -> None:
        self.server = server
        self.store = store
        self.host = host
        self.port = server.port
        self.user_name = user_name
        self.project_id = store.project_id
        self.url = format_url(host, self.port)

    @property
    def app(self) -> Any:
        """The ASGI application served (its routes show what this host answers)."""
        return self.server.app

    def secrets(self, password: str) -> dict[str, str]:
        """A refinery ``secrets.json`` mapping for this host (the caller supplies the password it set)."""
        return {"user_name": self.user_name, "password": password, "project_id": self.project_id, "uri": self.url}

    def stop(self, timeout: float = 10.0) -> None:
        """Shut the server down, wait for its thread, close the socket and the database."""
        self.server.stop(timeout)
        self.server.sock.close()
        self.store.close()

    def __enter__(self) -> RunningHost:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"RunningHost(url={self.url!r}, project_id={self.project_id!r})"


def _open_store(export_path: str | Path | None, data_dir: str | Path, host: str, user_name: str, password: str,
                **kwargs: Any) -> HostStore:
    check_bind(host, user_name, password)
    store = HostStore.open(data_dir, export_path, **kwargs)
    try:
        store.users.configure_user(user_name, password)
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
    startup_timeout: float = 30.0,
    models_volumes: Sequence[tuple[Path, str]] = (),
) -> RunningHost:
    """Start a host for the project in ``export_path`` (imported into ``data_dir`` on first use; ``docs/host.md``).

    ``port=0`` binds a free port (the real one is in ``.port`` / ``.url``); ``export_path`` may be None when
    ``data_dir`` holds a project. ``models_volumes``: ``(host folder, path inside the embedder)`` pairs
    (``docs/model-door.md``). Raises :class:`ConfigError` / :class:`~kern_finetune.errors.ExportError` for bad
    inputs, :class:`HostUnavailableError` when the server does not come up.
    """
    store = _open_store(export_path, data_dir, host, user_name, password, id_attribute=id_attribute,
                        project_id=project_id, project_name=project_name, models_volumes=models_volumes)
    try:
        sock = listening_socket(host, port)
        server = ServerThread(create_app(store), sock,
                              name=f"kern-host:{sock.getsockname()[1]}", timeout_graceful_shutdown=5)
        if not server.start(startup_timeout):
            sock.close()
            raise HostUnavailableError(f"the local host on {host}:{server.port} did not start")
    except BaseException:
        store.close()
        raise
    running = RunningHost(server, store, host, user_name)
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
    on_ready: Callable[[HostStore, str], None] | None = None,
    models_volumes: Sequence[tuple[Path, str]] = (),
) -> None:
    """Serve in the foreground until interrupted (Ctrl-C); ``on_ready(store, url)`` runs once the server accepts
    connections (``url`` has the real port)."""
    store = _open_store(export_path, data_dir, host, user_name, password, id_attribute=id_attribute,
                        project_id=project_id, project_name=project_name, models_volumes=models_volumes)
    try:
        with listening_socket(host, port) as sock:
            server = ServerThread(create_app(store), sock,
                                  name=f"kern-host:{sock.getsockname()[1]}", log_level="info", access_log=True,
                                  timeout_graceful_shutdown=5)
            url = format_url(host, server.port)
            server.run(on_started=None if on_ready is None else lambda: on_ready(store, url))
    finally:
        store.close()
