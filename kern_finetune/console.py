"""How every ``run`` / ``sync`` / ``demo`` ends on the console: where the report is, and the next step for the door used.

No torch, no sklearn: ``sync``'s up-to-date path prints through it too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

__all__ = ["next_step", "say_next"]

SayFn = Callable[[str], None]


def next_step(door: str, *, written: Path | None = None, embedding: str | None = None,
              verdict: dict[str, Any] | None = None, export_is_snapshot: bool = True) -> str:
    """The one thing to do next after a ``door`` (``run``, ``snapshot``, ``model``, ``created``,
    ``kept``, ``up-to-date``, ``demo``)."""
    worse = (verdict or {}).get("verdict") == "worse"
    if door == "kept":
        return ("the embedding in use stays; label more records (or check label_issues.csv) and sync again, "
                "or sync with --force to write the new one anyway")
    if door == "up-to-date":
        return "nothing until the labels change; sync --force retrains now"
    caution = " (the verdict says it is worse than what the project uses: read the report first)" if worse else ""
    if door == "snapshot":
        return (f"import {written} in refinery (Upload a project snapshot: it becomes a new project) and search "
                f"with embedding {embedding or 'kern-finetune'!r}{caution}")
    if door == "created":
        return f"search similar records with embedding {embedding!r} in refinery's data browser{caution}"
    if door == "model":
        return f"bring {written} into refinery's embedder as the steps above say{caution}"
    if door == "demo":
        return ("your own project: mount a folder into refinery's embedder once, then `kern-finetune sync --secrets "
                "secrets.json --task TASK --door model --models-dir DIR` (docs/model-door.md)")
    if export_is_snapshot:
        return ("bring it into refinery: rerun with --write-snapshot OUT.zip and import OUT.zip as a new project, "
                f"or hand the model folder to refinery's embedder (sync --door model, docs/model-door.md){caution}")
    return ("bring it into refinery: export a project snapshot in refinery, run with --export SNAPSHOT.zip "
            f"--write-snapshot OUT.zip and import OUT.zip as a new project{caution}")


def say_next(say: SayFn, out_dir: Path | None, door: str, **kw: Any) -> None:
    """The two closing lines: ``report: <out>/report.html`` (when it exists) and ``next: ...``."""
    report = Path(out_dir) / "report.html" if out_dir is not None else None
    if report is not None and report.is_file():
        say(f"report: {report}")
    say(f"next: {next_step(door, **kw)}")
