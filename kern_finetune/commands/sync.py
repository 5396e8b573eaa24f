"""``kern-finetune sync``: pull a project's labels from a refinery host; when they changed, fine-tune
and write the embedding through a door: ``api`` (the push extension of ``docs/push-contract.md``,
proposed for refinery's issues #24/#48; ``kern-finetune host`` implements it, refinery does not),
``snapshot`` (a snapshot zip to import in refinery's UI) or ``model`` (a model folder for refinery's
embedder)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..config import SYNC_TIME_BUDGET, RunConfig
from ..errors import ConfigError
from ..model_door import DEFAULT_MOUNT, ModelDoorTarget
from ..refinery.api import ENV_PASSWORD, ENV_PROJECT, ENV_URI, ENV_USER, RefineryClient, client_from_options
from ..sync import DOORS, sync_project
from .run import add_run_options, config_from_args

__all__ = ["register", "add_host_options", "client_from_args"]

EPILOG = """\
credentials (first found wins):
  --secrets FILE     a refinery SDK secrets.json {{"user_name", "password", "project_id", "uri"}}
  environment        {user}, {password}, {uri} (default http://localhost:4455),
                     {project} (optional default for --project)
  --uri overrides the URI of either. Passwords and tokens are never printed or logged.

examples:
  kern-finetune sync --secrets secrets.json --task Topic
  kern-finetune sync --uri http://localhost:4455 --project 1f0c... --task Topic --min-new-labels 50

  kern-finetune sync --secrets secrets.json --door snapshot --snapshot project.zip --write-snapshot out.zip
  kern-finetune sync --secrets secrets.json --task Topic --door model --models-dir ~/refinery/refinery/models

a sync has a larger default --time-budget than run ({budget:.0f} s instead of {run_budget:.0f} s): it runs
unattended (cron, the webhook), so --mode auto picks full mode wherever full mode fits in that time.

doors (--door; checked before anything is pulled or encoded):
  api       the push extension (docs/push-contract.md), proposed for refinery issues #24/#48; the local
            `kern-finetune host` has it, no refinery version does
  snapshot  --snapshot SRC.zip (exported in refinery) -> --write-snapshot OUT.zip with our embedding;
            import OUT.zip in refinery's UI (it becomes a new project)
  model     the fine-tuned sentence-transformers folder (<out>/model) for refinery's embedder to compute;
            with --models-dir (a folder mounted into refinery's embedder, docs/model-door.md) the sync
            copies it into the next <name>-v<N> folder there, creates the embedding through refinery's
            gateway (Kratos browser login, same user and password), waits until it is FINISHED
            (--model-wait) and only then deletes the previous kern-finetune embedding; a refused step
            (login, create, wait, delete) stops with one line and leaves the previous embedding
  auto      snapshot when --write-snapshot is given, else api when the host offers it, else stop with
            a one-line error naming the snapshot door (default)

A sync trains only when the selected labels (manual + weak above --threshold) changed since the last
successful sync of that project through that door; --force trains anyway. When the run's verdict (held-out
labels searched as refinery searches) says the new embedding is worse than the one in use, the sync keeps
that one and says why; --force writes the new one anyway. Exit codes: 0 ok (pushed,
written, kept or up to date), 1 host/export/training error or no door, 2 bad options, 3 another sync of the
project is running.""".format(user=ENV_USER, password=ENV_PASSWORD, uri=ENV_URI, project=ENV_PROJECT,
                               budget=SYNC_TIME_BUDGET, run_budget=RunConfig().time_budget)


def add_host_options(parser: argparse.ArgumentParser) -> None:
    """``--uri``, ``--project``, ``--secrets`` and the transport knobs."""
    g = parser.add_argument_group("which host and project")
    g.add_argument("--uri", help=f"host URL (default: from --secrets, else ${ENV_URI}, else http://localhost:4455)")
    g.add_argument("--project", metavar="ID", help="project id (default: from --secrets or $" + ENV_PROJECT + ")")
    g.add_argument("--secrets", type=Path, metavar="FILE", help="refinery secrets.json with user_name and password")
    g.add_argument("--timeout", type=float, default=30.0, help="seconds per request (default: %(default)s)")
    g.add_argument("--retries", type=int, default=3, help="retries of idempotent requests (default: %(default)s)")


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


def _say_next(result: object, out: Path) -> None:
    """The closing lines: the report and the next step for the door this sync used."""
    from ..console import say_next

    status, door = getattr(result, "status"), getattr(result, "door")
    step = {"up-to-date": "up-to-date", "kept": "kept", "created": "created", "pushed": "api"}.get(status, door)
    say_next(print, out, step, written=getattr(result, "written"), embedding=getattr(result, "embedding"),
             verdict=getattr(result, "verdict"))


def _model_target(args: argparse.Namespace) -> ModelDoorTarget | None:
    """The model door's target from ``--models-dir`` / ``--models-mount`` / ``--model-wait``."""
    if args.models_dir is None:
        if args.models_mount != DEFAULT_MOUNT or args.model_wait is not None:
            raise ConfigError("--models-mount and --model-wait belong to --models-dir")
        return None
    if args.door != "model":
        raise ConfigError("--models-dir belongs to --door model")
    wait = args.model_wait if args.model_wait is not None else ModelDoorTarget.wait_s
    return ModelDoorTarget(args.models_dir.expanduser(), args.models_mount, wait_s=wait)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sync", help="pull labels from a refinery host; when they changed, fine-tune and push the embedding",
        description=__doc__, epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_host_options(p)
    g = p.add_argument_group("when to train")
    g.add_argument("--force", action="store_true",
                   help="train and push even when the labels did not change, or when the verdict says the new "
                        "embedding is worse than the one in use")
    g.add_argument("--min-new-labels", type=int, default=1, metavar="N",
                   help="train only when at least N selected labels changed (default: %(default)s)")
    g.add_argument("--state-dir", type=Path, default=None,
                   help="where the last sync's fingerprint and lock live (default: <cache-dir>/sync/<host>/<project>)")
    g = p.add_argument_group("where the embedding goes")
    g.add_argument("--door", choices=DOORS, default="auto",
                   help="api | snapshot | model | auto: what the host offers (default: %(default)s)")
    g.add_argument("--snapshot", type=Path, metavar="SRC.zip", help="snapshot door: the project snapshot exported in refinery")
    g.add_argument("--write-snapshot", type=Path, metavar="OUT.zip",
                   help="snapshot door: where to write the snapshot with the embedding added")
    g.add_argument("--models-dir", type=Path, metavar="DIR",
                   help="model door: the folder on this machine mounted into refinery's embedder "
                        "(docs/model-door.md); the sync then creates the embedding in refinery itself")
    g.add_argument("--models-mount", default=DEFAULT_MOUNT, metavar="PATH",
                   help="model door: where --models-dir is inside the embedder container (default: %(default)s)")
    g.add_argument("--model-wait", type=float, default=None, metavar="SECONDS",
                   help=f"model door: the longest wait for refinery's embedder to finish the new embedding "
                        f"(default: {ModelDoorTarget.wait_s:.0f})")
    p.add_argument("--out", type=Path, default=Path("runs/sync"), help="output folder of the run (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print only one JSON line with the outcome")
    add_run_options(p)
    # unattended: a night, not a desk (config.SYNC_TIME_BUDGET); --help shows this default
    p.set_defaults(func=_sync, time_budget=SYNC_TIME_BUDGET)
