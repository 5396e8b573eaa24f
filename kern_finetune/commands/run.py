"""``kern-finetune run``: fine-tune on an export file and write model, vectors, metrics and report."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import BASIC_OPTIONS, RunConfig, flag_of, run_options
from ..errors import ConfigError

if TYPE_CHECKING:
    from ..refinery.columns import Record
    from ..pipeline import RunResult

__all__ = ["register", "add_run_options", "config_from_args", "add_help_all", "advanced"]

EPILOG = """\
examples:
  kern-finetune run --export samples/ag_news/export.json.gz --task Topic --gold-attribute "Class Index"
  kern-finetune run --export project_snapshot.zip --task topic --write-snapshot with_embedding.zip

It trains on every manual label and every weak-supervision label above --threshold, and writes
report.html, model/ (for the model door), vectors.npz and metrics.json into --out.
--help-all lists every option (training, places, devices)."""

DESCRIPTION = """\
Fine-tune sentence embeddings from the labels in a refinery export or project snapshot (no host needed),
and write the new embedding, its model folder and a report."""

BASIC_TITLE = "the options you set"
HELP_ALL = "show every option, the advanced ones too, and exit"


class _HelpAll(argparse.Action):
    """``--help-all``: ``--help`` with the options :func:`advanced` hid."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, default: Any = argparse.SUPPRESS,
                 help: str | None = None) -> None:
        super().__init__(option_strings=option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        for action in parser._actions:
            hidden = getattr(action, "advanced_help", None)
            if hidden is not None:
                action.help = hidden
        parser.print_help()
        parser.exit()


def add_help_all(parser: argparse.ArgumentParser) -> None:
    """``--help-all`` beside ``--help``: the short help shows what a user sets, this one everything."""
    parser.add_argument("--help-all", action=_HelpAll, help=HELP_ALL)


def advanced(action: argparse.Action) -> argparse.Action:
    """Hide ``action`` from ``--help``; ``--help-all`` shows it (see :func:`add_help_all`)."""
    action.advanced_help = action.help  # type: ignore[attr-defined]
    action.help = argparse.SUPPRESS
    return action


def add_run_options(parser: argparse.ArgumentParser, basic: Any = None, *,
                    basic_names: frozenset[str] = BASIC_OPTIONS) -> None:
    """The pipeline options shared by ``run``, ``sync`` and ``demo``: one per :class:`RunConfig` field, made
    from its :class:`~kern_finetune.config.Option` (flag, help, group, choices, metavar).

    The options in ``basic_names`` (:data:`~kern_finetune.config.BASIC_OPTIONS`, or fewer where a command sets some
    itself) go into ``basic`` (an argument group; default: one of their own) and show in ``--help``; the others
    stay in their :attr:`Option.group` and show in ``--help-all`` only (:func:`advanced`)."""
    groups: dict[str, Any] = {}
    for name, opt, typ, default in run_options():
        is_basic = name in basic_names
        title = BASIC_TITLE if is_basic else opt.group
        if is_basic and basic is not None:
            groups.setdefault(title, basic)
        if title not in groups:
            groups[title] = parser.add_argument_group(title)
        if default is None:
            shown = opt.default_text
        elif typ is bool:
            shown = "on" if default else "off"
        else:
            shown = "%(default)s"
        if opt.env:
            shown = f"${opt.env}, else {shown}"
        kwargs: dict[str, Any] = {"dest": name, "default": default, "help": f"{opt.help} (default: {shown})"}
        if typ is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = {int: int, float: float, list: _comma_list, Path: Path}.get(typ)
            kwargs["metavar"] = opt.metavar
            kwargs["choices"] = opt.choices
        action = groups[title].add_argument(flag_of(name, opt), **kwargs)
        if not is_basic:
            advanced(action)


def _comma_list(value: str) -> list[str] | None:
    """``A,B`` -> ``["A", "B"]``; an empty value means the default (None)."""
    return [a.strip() for a in value.split(",") if a.strip()] or None


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The validated :class:`RunConfig` that parsed ``add_run_options`` arguments describe (the CLI's boundary:
    the pipeline does not check it again)."""
    values: dict[str, Any] = {}
    for name, opt, _typ, _default in run_options():
        value = getattr(args, name)
        if value is None and opt.env:
            value = os.environ.get(opt.env) or None
        if value is not None:  # None: RunConfig's own default (cache_dir's is computed)
            values[name] = value
    return RunConfig(**values).validate()


def _run(args: argparse.Namespace) -> int:
    from ..console import say_next
    from ..evaluation.verdict import current_from_export
    from ..pipeline import run_pipeline  # heavy imports (torch, sklearn) only when running
    from ..refinery.export import load_export
    from ..refinery.reader import is_zip
    from ..refinery.snapshot import check_snapshot_dst

    config = config_from_args(args)
    if args.write_snapshot is not None:  # before any work: a snapshot in; never the input, never inside --out
        if not is_zip(args.export):
            raise ConfigError("--write-snapshot needs --export to be a refinery project snapshot (.zip), "
                              f"got {args.export}")
        check_snapshot_dst(args.write_snapshot, src=args.export, out_dir=args.out)
    records = load_export(args.export)
    current = current_from_export(args.export, records, config.id_attribute)
    result = run_pipeline(records, config, out_dir=args.out, progress=print, current=current)
    if args.write_snapshot is not None:
        _write_snapshot(args, config, records, result)
    if args.json:
        print(json.dumps({k: result.metrics[k] for k in ("n_train", "n_val", "n_test", "chance", "top_k", "seconds")}))
    else:
        say_next(print, result.out_dir, door="snapshot" if args.write_snapshot is not None else "run",
                 written=args.write_snapshot, embedding=result.embedding_name, verdict=result.metrics.get("verdict"),
                 export_is_snapshot=is_zip(args.export))
    return 0


def _write_snapshot(args: argparse.Namespace, config: RunConfig, records: list[Record], result: RunResult) -> None:
    """The snapshot door: the source snapshot plus the fine-tuned embedding, and how to import it."""
    from ..refinery.columns import embedding_name
    from ..refinery.export import resolve_task
    from ..refinery.snapshot import import_steps, write_snapshot

    task = resolve_task(records, config.task)
    attribute = task.attribute or result.metrics["text_attributes"][0]
    model = result.base_model
    name = config.embedding_name or embedding_name(attribute, model=model)
    snap = write_snapshot(
        args.export, args.write_snapshot, ids=result.ids, vectors=result.vectors,
        attribute=attribute, model=model, id_attribute=config.id_attribute, name=name,
    )
    info = snap.embeddings[name]
    print(f"wrote snapshot {args.write_snapshot}: embedding {name!r} on attribute {attribute!r} "
          f"({info['count']} vectors of {info['dimension']} dimensions)")
    for note in snap.notices:
        print(f"  note: {note}")
    print("to import it into refinery:")
    for i, step in enumerate(import_steps(args.write_snapshot, name), 1):
        print(f"  {i}. {step}")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run", help="fine-tune on an export file (no host needed)", description=DESCRIPTION, epilog=EPILOG,
        usage="%(prog)s --export FILE [--task TASK] [--gold-attribute NAME] [options]",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_help_all(p)
    g = p.add_argument_group(BASIC_TITLE)
    g.add_argument("--export", required=True, type=Path, metavar="FILE",
                   help="record export (.json, .json.gz) or refinery project snapshot (.zip)")
    add_run_options(p, g)
    g.add_argument("--out", type=Path, default=Path("runs/latest"), metavar="DIR",
                   help="output folder: new, empty or an earlier run's, which a successful run replaces as a whole "
                        "(default: %(default)s)")
    g.add_argument("--write-snapshot", type=Path, metavar="OUT.zip",
                   help="the snapshot door: --export is a refinery snapshot; write a copy with the fine-tuned "
                        "embedding added, to import into refinery as a new project (docs/snapshot.md)")
    advanced(p.add_argument("--json", action="store_true", help="end with one JSON line of the headline metrics"))
    p.set_defaults(func=_run)
