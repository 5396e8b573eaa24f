"""A local refinery-compatible host serving one project over HTTP (``docs/host.md``)."""

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


__all__ = ["ApiError", "DEFAULT_DATA_DIR", "DEMO_PASSWORD", "DEMO_USER", "GatewayError", "HostStore", "RunningHost",
           "check_bind", "create_app", "is_loopback", "serve_forever", "serve_in_thread"]
