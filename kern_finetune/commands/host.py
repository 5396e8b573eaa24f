"""``kern-finetune host``: serve one project from an export file as a local refinery-compatible host."""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..web.net import check_project_id
from ..web.serving import atomic_write_text

PASSWORD_ENV = "KERN_HOST_PASSWORD"

HELP = "serve a project from an export file as a local refinery-compatible host"
DESCRIPTION = f"""\
Serve ONE refinery project from a record export (.json, .json.gz) or a project snapshot (.zip) over
HTTP, answering as a self-hosted refinery answers (login, export, associations, the model door's embedding
routes with its embedder's computation, similarity search). What it answers: docs/host.md.

State (records, labels, users, embeddings) lives in SQLite under --data-dir; the export is imported
once, on the first start, and a restart keeps everything.

Credentials: --user-name plus a password from --password-file or ${PASSWORD_ENV} (never on the
command line). Without them the documented demo user is used, which only binds a loopback address."""


def register(subparsers: Any) -> None:
    """Add the ``host`` sub-command."""
    from ..host.defaults import DEFAULT_DATA_DIR

    p = subparsers.add_parser(
        "host", help=HELP, description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--export", type=Path, help="export file to import on first start (optional afterwards)")
    p.add_argument("--port", type=int, default=4455, help="port (default 4455, refinery's; 0 = any free one)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR, help=f"state folder (default ./{DEFAULT_DATA_DIR})")
    p.add_argument("--id-attribute", default="running_id", help="attribute identifying a record (default running_id)")
    p.add_argument("--project-id", help="project id to use on first import (default: a new UUID)")
    p.add_argument("--project-name", help="project name on first import (default: the export file's name)")
    p.add_argument("--user-name", help="login user (e-mail); default the demo user")
    p.add_argument("--password-file", type=Path, help=f"file holding the password (else ${PASSWORD_ENV})")
    # an exact --password option, so that argparse does not take it as an abbreviation of --password-file
    p.add_argument("--password", nargs="?", action=_RefusePassword, help=argparse.SUPPRESS)
    p.add_argument(
        "--write-secrets",
        type=Path,
        metavar="PATH",
        help="write a refinery secrets.json (user_name, password, project_id, uri) for clients, mode 0600",
    )
    p.add_argument(
        "--models-volume", action="append", default=[], metavar="HOST_DIR:/models",
        help="a folder refinery's embedder has mounted (docs/model-door.md), e.g. ~/refinery/models:/models: "
             "create-embedding with model /models/<folder> computes that folder; a model path outside every "
             "volume fails as in the embedder (repeatable)",
    )
    p.set_defaults(func=run)


class _RefusePassword(argparse.Action):
    """``--password`` is refused: a password on the command line ends up in shell history and ``ps``."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        parser.error(f"passwords are not taken on the command line: use --password-file FILE or ${PASSWORD_ENV}")


def _credentials(args: argparse.Namespace) -> tuple[str, str]:
    from ..host import DEMO_PASSWORD, DEMO_USER

    password: str | None = None
    if args.password_file is not None:
        try:
            password = args.password_file.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise ConfigError(f"cannot read --password-file {args.password_file}: {exc.strerror or exc}") from None
        if not password:
            raise ConfigError(f"--password-file {args.password_file} is empty")
    elif os.environ.get(PASSWORD_ENV):
        password = os.environ[PASSWORD_ENV]
    if args.user_name and password is None:
        raise ConfigError(f"--user-name needs a password: --password-file FILE or ${PASSWORD_ENV}")
    return args.user_name or DEMO_USER, password if password is not None else DEMO_PASSWORD


def _write_secrets(path: Path, content: dict[str, str]) -> None:
    """Write ``content`` to ``path`` atomically with mode 0600: a reader sees no file or the whole file."""
    atomic_write_text(path, json.dumps(content, indent=2) + "\n", mode=stat.S_IRUSR | stat.S_IWUSR)


def run(args: argparse.Namespace) -> int:
    """Serve until interrupted."""
    from ..host import DEMO_PASSWORD, serve_forever

    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be in [0, 65535], got {args.port}")
    if args.project_id is not None:
        check_project_id(args.project_id, where="--project-id")
    user_name, password = _credentials(args)
    volumes = _volumes(args.models_volume)

    def _ready(store: Any, url: str) -> None:
        print(f"kern-finetune host: project {store.project_id} ({store.record_count} records) at {url}")
        print(f"  login user: {user_name}" + (" (demo password, see docs/host.md)" if password == DEMO_PASSWORD else ""))
        print(f"  state: {args.data_dir.resolve()}")
        for host_dir, mount in volumes:
            print(f"  models volume: {host_dir} is {mount} inside the embedder")
        if args.write_secrets:
            _write_secrets(
                args.write_secrets,
                {"user_name": user_name, "password": password, "project_id": store.project_id, "uri": url},
            )
            print(f"  secrets for clients written to {args.write_secrets} (mode 0600)")
        sys.stdout.flush()

    serve_forever(
        args.export,
        data_dir=args.data_dir,
        port=args.port,
        host=args.host,
        user_name=user_name,
        password=password,
        id_attribute=args.id_attribute,
        project_id=args.project_id,
        project_name=args.project_name,
        on_ready=_ready,
        models_volumes=volumes,
    )
    return 0


def _volumes(specs: list[str]) -> list[tuple[Path, str]]:
    """``--models-volume HOST_DIR:/path`` values, each host folder checked."""
    from ..host.model_embeddings import parse_volume

    out = []
    for spec in specs:
        try:
            host_dir, mount = parse_volume(spec)
        except ValueError as exc:
            raise ConfigError(f"--models-volume: {exc}") from None
        if not host_dir.is_dir():
            raise ConfigError(f"--models-volume {spec}: {host_dir} is not a folder")
        out.append((host_dir, mount))
    return out
