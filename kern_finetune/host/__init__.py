"""A local refinery-compatible host: one project from an export file or snapshot, served over HTTP (``docs/host.md``).

It answers what a self-hosted refinery answers (Kratos login; oathkeeper and the gateway proxy in front of
the project, export and associations routes; the data browser's similarity search with refinery's
threshold) and, unless ``push_extension=False``, kern-finetune's push extension (``docs/push-contract.md``):
routes that take vectors, which no refinery version has. State lives in SQLite under a data dir.

::

    from kern_finetune.host import serve_in_thread
    with serve_in_thread("export.json.gz", data_dir="state", user_name="me@x.org", password=pw,
                         push_extension=False) as host:  # only what a real refinery serves
        print(host.url, host.project_id)
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .defaults import DEFAULT_DATA_DIR, DEMO_PASSWORD, DEMO_USER

if TYPE_CHECKING:
    from .app import create_app
    from .server import RunningHost, check_bind, is_loopback, serve_forever, serve_in_thread
    from .api_errors import ApiError, GatewayError
    from .store import HostStore

# The server stack (fastapi, uvicorn) loads on first use, not when the CLI builds its parsers.
_LAZY = {
    "create_app": ".app",
    "RunningHost": ".server", "check_bind": ".server", "is_loopback": ".server",
    "serve_forever": ".server", "serve_in_thread": ".server",
    "ApiError": ".api_errors", "GatewayError": ".api_errors", "HostStore": ".store",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ApiError",
    "DEFAULT_DATA_DIR",
    "DEMO_PASSWORD",
    "DEMO_USER",
    "GatewayError",
    "HostStore",
    "RunningHost",
    "check_bind",
    "create_app",
    "is_loopback",
    "serve_forever",
    "serve_in_thread",
]
