"""Command line: ``kern-finetune <command> ...`` (also ``python -m kern_finetune``).

Each command lives in its own module under :mod:`kern_finetune.commands` and exposes
``register(subparsers)``, which adds its sub-parser and sets ``func`` (``args -> exit code``).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
import threading

from .errors import KernFinetuneError

COMMANDS = ("run", "sync", "demo", "host", "serve")

DESCRIPTION = """\
Fine-tune sentence embeddings from what labelers produced in a refinery project (manual labels plus
confident weak-supervision labels), so that similarity search serves more same-class records, and bring
the new embedding back: refinery's embedder computes it from our model folder (sync --door model), or a
project snapshot carries it.

Start with `kern-finetune demo` (local host + bundled AG News sample), or `kern-finetune run --help`."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread like Ctrl-C, so every ``finally`` and staging clean-up runs."""


def _on_sigterm(_signum: int, _frame: object) -> None:
    raise Terminated()


def _quiet_libraries(verbose: bool) -> None:
    """Our own log lines at INFO; other libraries' (matplotlib's font cache, sentence-transformers' model
    loading, transformers' weight-loading bars) only from WARNING on, unless ``-v`` asks for everything."""
    if not verbose:
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # read when transformers is imported
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    if not verbose:
        logging.getLogger("kern_finetune").setLevel(logging.INFO)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kern-finetune", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"kern_finetune.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    _quiet_libraries(args.verbose)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _on_sigterm) if in_main else None
    try:
        return int(args.func(args) or 0)
    except KernFinetuneError as exc:
        print(f"kern-finetune: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except Terminated:
        print("kern-finetune: terminated (SIGTERM)", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("kern-finetune: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a defect, not a user error: still one line; -v shows the traceback
        if args.verbose:
            raise
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        print(f"kern-finetune: internal error: {type(exc).__name__}: {first} "
              "(run with -v for the traceback, and please report it)", file=sys.stderr)
        return 1
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)


if __name__ == "__main__":
    sys.exit(main())
