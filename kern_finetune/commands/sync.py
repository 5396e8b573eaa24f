"""``kern-finetune sync``: pull a project's labels from a refinery host; when they changed, fine-tune and write
the embedding through a door (the doors: the epilog below)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..config import BASIC_OPTIONS, SYNC_TIME_BUDGET, RunConfig
from ..errors import ConfigError
from ..refinery.model_door import DEFAULT_MOUNT, ModelDoorTarget
from ..refinery.api import ENV_PASSWORD, ENV_PROJECT, ENV_URI, ENV_USER, RefineryClient, client_from_options
from ..sync import DOORS, SyncResult, sync_project
from .run import BASIC_TITLE, add_help_all, add_run_options, advanced, config_from_args

__all__ = ["register", "add_host_options", "client_from_args"]

DESCRIPTION = """\
Pull a project's labels from refinery; when they changed, fine-tune and write the embedding back."""

EPILOG = """\
doors (--door; checked before anything is pulled or encoded):
  model     --models-dir DIR, mounted once into refinery's embedder (docs/model-door.md): refinery computes
            the embedding from our model folder; the previous one goes once the new one is FINISHED
            (without --models-dir: the folder and the steps to take it in by hand)
  snapshot  --snapshot SRC.zip -> --write-snapshot OUT.zip, to import in refinery as a new project
  auto      snapshot with --write-snapshot, else model (default)

examples:
  kern-finetune sync --secrets secrets.json --task Topic --door model --models-dir ~/refinery/refinery/models
  kern-finetune sync --secrets secrets.json --door snapshot --snapshot project.zip --write-snapshot out.zip

Credentials: --secrets, else ${user}, ${password}, ${uri} and
${project}. A sync trains only when the selected labels changed since the last one through
that door, and keeps the embedding in use when the run's verdict says the new one is worse
(--force: anyway); unattended, its --time-budget defaults to {budget:.0f} s (run: {run_budget:.0f} s).
Exit codes: 0 ok, 1 error, 2 bad options, 3 another sync running. --help-all: every option.""".format(user=ENV_USER, password=ENV_PASSWORD, uri=ENV_URI,
                                                     project=ENV_PROJECT, budget=SYNC_TIME_BUDGET,
                                                     run_budget=RunConfig().time_budget)


def add_host_options(parser: argparse.ArgumentParser) -> None:
    """``--uri``, ``--project``, ``--secrets`` and the transport knobs (those under ``--help-all``)."""
    g = parser.add_argument_group("which host and project")
    g.add_argument("--secrets", type=Path, metavar="FILE", help="refinery secrets.json with user_name and password")
    g.add_argument("--uri", help=f"host URL (default: --secrets, else ${ENV_URI})")
    g.add_argument("--project", metavar="ID", help="project id (default: --secrets, else the environment)")
    advanced(g.add_argument("--timeout", type=float, default=30.0, help="seconds per request (default: %(default)s)"))
    advanced(g.add_argument("--retries", type=int, default=3, help="retries of idempotent requests (default: %(default)s)"))


def client_from_args(args: argparse.Namespace) -> RefineryClient:
    """The client that ``add_host_options`` describes."""
    return client_from_options(
        uri=args.uri, secrets=args.secrets, timeout=args.timeout, retries=args.retries,
        project_id=args.project,
    )


def _sync(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    client = client_from_args(args)
    if not client.project_id:
        raise ConfigError(f"no project id: pass --project ID, put project_id in the secrets file, or set {ENV_PROJECT}")
    result = sync_project(
        client, client.project_id, config, out_dir=args.out, force=args.force,
        min_new_labels=args.min_new_labels, state_dir=args.state_dir, progress=None if args.json else print,
        door=args.door, snapshot=args.snapshot, write_snapshot=args.write_snapshot,
        model_target=_model_target(args),
    )
    if args.json:
        line = {
            "status": result.status, "project_id": result.project_id, "changed_labels": result.changed_labels,
            "n_labels": result.n_labels, "fingerprint": result.fingerprint,
            "door": result.door,
            "embedding": result.embedding,
            "written": str(result.written) if result.written else None,
            "embedding_id": result.embedding_id,
            "verdict": (result.verdict or {}).get("verdict"),
        }
        if result.run is not None:
            top = result.run.metrics.get("top_k", {})
            line["top_1k_raw"] = top.get("raw", {}).get("1000")
            line["top_1k_finetuned"] = top.get("finetuned", {}).get("1000")
        print(json.dumps(line))
    else:
        _say_next(result, args.out)
    return 0


def _say_next(result: SyncResult, out: Path) -> None:
    """The closing lines: the report and the next step for the door this sync used."""
    from ..console import say_next

    step = result.status if result.status in ("up-to-date", "kept", "created") else result.door
    say_next(print, out, step, written=result.written, embedding=result.embedding, verdict=result.verdict)


def _model_target(args: argparse.Namespace) -> ModelDoorTarget | None:
    """The model door's target from ``--models-dir`` / ``--models-mount`` / ``--model-wait``."""
    if args.models_dir is None:
        if args.models_mount != DEFAULT_MOUNT or args.model_wait is not None:
            raise ConfigError("--models-mount and --model-wait belong to --models-dir")
        return None
    if args.door == "snapshot" or args.write_snapshot is not None:
        raise ConfigError("--models-dir belongs to --door model")
    wait = args.model_wait if args.model_wait is not None else ModelDoorTarget.wait_s
    return ModelDoorTarget(args.models_dir.expanduser(), args.models_mount, wait_s=wait)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sync", help="pull labels from a refinery host; when they changed, fine-tune and write the embedding",
        description=DESCRIPTION, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="%(prog)s --secrets FILE [--task TASK] [--door DOOR ...] [options]",
    )
    add_help_all(p)
    add_host_options(p)
    g = p.add_argument_group("where the embedding goes")
    g.add_argument("--door", choices=DOORS, default="auto", metavar="DOOR",
                   help="model, snapshot or auto (default: %(default)s)")
    g.add_argument("--models-dir", type=Path, metavar="DIR",
                   help="model door: the folder refinery's embedder mounts")
    advanced(g.add_argument("--models-mount", default=DEFAULT_MOUNT, metavar="PATH",
                            help="model door: where --models-dir is inside the embedder container (default: %(default)s)"))
    advanced(g.add_argument("--model-wait", type=float, default=None, metavar="SECONDS",
                            help=f"model door: the longest wait for refinery's embedder to finish the new embedding "
                                 f"(default: {ModelDoorTarget.wait_s:.0f})"))
    g.add_argument("--snapshot", type=Path, metavar="SRC.zip", help="snapshot door: the snapshot exported in refinery")
    g.add_argument("--write-snapshot", type=Path, metavar="OUT.zip",
                   help="snapshot door: the copy with our embedding to write")
    g.add_argument("--out", type=Path, default=Path("runs/sync"), metavar="DIR",
                   help="output folder of the run (default: %(default)s)")
    basic = p.add_argument_group(BASIC_TITLE)
    basic.add_argument("--force", action="store_true", help="train and write even when the labels did not change or the verdict says worse")
    add_run_options(p, basic, basic_names=BASIC_OPTIONS - {"gold_attribute"})  # a refinery project has no gold
    g = p.add_argument_group("when to train")
    advanced(g.add_argument("--min-new-labels", type=int, default=1, metavar="N",
                            help="train only when at least N selected labels changed (default: %(default)s)"))
    advanced(g.add_argument("--state-dir", type=Path, default=None,
                            help="where the last sync's fingerprint and lock live "
                                 "(default: <cache-dir>/sync/<host>/<project>)"))
    advanced(p.add_argument("--json", action="store_true", help="print only one JSON line with the outcome"))
    # unattended: a night, not a desk (config.SYNC_TIME_BUDGET); --help shows this default
    p.set_defaults(func=_sync, time_budget=SYNC_TIME_BUDGET)
