"""``kern-finetune serve``: the signed webhook + job queue that triggers syncs (see docs/triggers.md)."""

from __future__ import annotations

import argparse
import importlib
import json
import os
from pathlib import Path

from ..errors import ConfigError
from ..refinery.model_door import DEFAULT_MOUNT, ModelDoorTarget

HELP = "serve the signed webhook that queues syncs (POST /v1/jobs)"

DESCRIPTION = """\
Listen for signed triggers from the labeling tool and run one sync at a time.

  POST /v1/jobs {"project_id": "...", "options": {...}}   -> 202 {"job": {"id": ...}}
  GET  /v1/jobs/{id}                                     -> state, stage, progress, timings, metrics
  GET  /healthz                                          (unauthenticated)

Every /v1 request carries  X-Kern-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<raw body>">
under the shared secret, read from --secret-file or $KERN_FINETUNE_WEBHOOK_SECRET (never from the
command line). Jobs live in <data-dir>/jobs.sqlite3; a job interrupted by a restart is re-run once,
then failed with "interrupted by service restart". Details and a signed curl example: docs/triggers.md."""


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "kern-finetune" / "service"


def _load_runner(spec: str):
    """Import ``module:callable`` (a :data:`kern_finetune.service.JobRunner`)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"--runner must look like package.module:function, got {spec!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import the runner module {module_name!r}: {exc}") from None
    runner = getattr(module, attr, None)
    if not callable(runner):
        raise ConfigError(f"{spec} is not a callable")
    return runner


def _check_secrets_file(path: Path) -> None:
    """Fail fast on a missing or malformed secrets.json (the login itself happens per job)."""
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read --secrets {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--secrets {path} is not JSON: {exc.msg}") from None
    missing = [k for k in ("user_name", "password") if not isinstance(data, dict) or not data.get(k)]
    if missing:
        raise ConfigError(f"--secrets {path} lacks {', '.join(missing)}")


def _model_target(args: argparse.Namespace) -> ModelDoorTarget | None:
    """The model door's target of every job (``--models-dir``), or None: each job writes its model folder."""
    if args.models_dir is None:
        return None
    return ModelDoorTarget(args.models_dir.expanduser(), args.models_mount)


def _run(args: argparse.Namespace) -> int:
    from ..service import default_runner, load_secret, run_service

    if not 0 <= args.port <= 65535:
        raise ConfigError(f"--port must be between 0 and 65535, got {args.port}")
    secret = load_secret(args.secret_file)
    if args.runner:
        runner = _load_runner(args.runner)
    else:
        if not args.secrets:
            raise ConfigError("--secrets secrets.json is required (the refinery host to sync with)")
        secrets = Path(args.secrets).expanduser()
        _check_secrets_file(secrets)
        runner = default_runner(secrets, _model_target(args))
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"kern-finetune serve: warning: listening on {args.host}, not only on this machine; "
              "put TLS in front of it", flush=True)
    run_service(args.data_dir, secret, runner, host=args.host, port=args.port,
                log_level="debug" if args.verbose else "info")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``serve`` to the CLI."""
    p = subparsers.add_parser(
        "serve", help=HELP, description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8765, help="port (default: 8765; 0 = any free port)")
    p.add_argument("--secrets", metavar="FILE",
                   help='SDK-style secrets.json of the refinery host: {"user_name", "password", "project_id", "uri"}')
    p.add_argument("--secret-file", metavar="FILE",
                   help="file holding the shared webhook secret (else $KERN_FINETUNE_WEBHOOK_SECRET)")
    p.add_argument("--data-dir", type=Path, default=_default_data_dir(),
                   help="job store and runs (default: $XDG_DATA_HOME/kern-finetune/service)")
    p.add_argument("--models-dir", type=Path, metavar="DIR",
                   help="the folder refinery's embedder mounts (docs/model-door.md): each job hands its model folder "
                        "to the embedder, which computes the new embedding (default: the job only writes the folder)")
    p.add_argument("--models-mount", default=DEFAULT_MOUNT, metavar="PATH",
                   help="where --models-dir is inside the embedder container (default: %(default)s)")
    p.add_argument("--runner", metavar="MODULE:FUNC",
                   help="advanced: run each job with this callable (JobContext -> dict) instead of the "
                        "built-in sync; --secrets is then not needed")
    p.set_defaults(func=_run)
