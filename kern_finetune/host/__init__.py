"""A local refinery-compatible host: one project from an export file, served over HTTP (``docs/host.md``).

It speaks the refinery API the SDK uses (Kratos login, project, export, associations) and the
embedding push contract (``docs/push-contract.md``), with similarity search and labeling sessions on
top, keeping its state in SQLite under a data dir.

::

    from kern_finetune.host import serve_in_thread
    with serve_in_thread("export.json.gz", data_dir="state", user_name="me@x.org", password=pw) as host:
        print(host.url, host.project_id)
"""

from __future__ import annotations

from .app import create_app
from .server import (
    DEFAULT_DATA_DIR,
    DEMO_PASSWORD,
    DEMO_USER,
    RunningHost,
    check_bind,
    is_loopback,
    serve_forever,
    serve_in_thread,
)
from .store import ApiError, HostStore

__all__ = [
    "ApiError",
    "DEFAULT_DATA_DIR",
    "DEMO_PASSWORD",
    "DEMO_USER",
    "HostStore",
    "RunningHost",
    "check_bind",
    "create_app",
    "is_loopback",
    "serve_forever",
    "serve_in_thread",
]
