"""kern-finetune: fine-tune sentence embeddings from a refinery project's labels and bring them back into refinery.

Public API (everything else is private and may change)::

    from kern_finetune import RunConfig, run_pipeline, load_export
    result = run_pipeline(load_export("export.json.gz"), RunConfig(task="Topic"), out_dir="runs/x")

The pipeline's typed stages: ``docs/architecture.md``. Heavy modules (torch, sklearn) load on first use of a
name that needs them, so ``import kern_finetune`` and the CLI's ``--help`` stay fast.
"""

from __future__ import annotations

import importlib
from typing import Any

from .config import RunConfig
from . import errors
from .errors import *  # noqa: F403 - the whole exception tree is public (errors.__all__)
from .refinery.export import discover_tasks, load_export, parse_export_payload, resolve_task

__version__ = "0.1.0"

_LAZY = {
    "run_pipeline": "pipeline",
    "RunResult": "pipeline",
    "select_labels": "labels.select",
    "Selection": "labels.select",
    "Encoder": "vectors.encode",
    "Prepared": "labels.prepare",
    "Fitted": "training.fit",
    "Evaluation": "evaluation.evaluate",
    "Written": "output.write",
    "TrainResult": "training.trainer",
    "HeadTrainer": "training.train",
    "FullTrainer": "training.train_full",
    "QuaterionTrainer": "training.train_quaterion",
    "SkipConnectionHead": "training.heads",
    "RefineryClient": "refinery.api",
    "sync_project": "sync",
    "SyncResult": "sync",
    "read_snapshot": "refinery.snapshot",
    "write_snapshot": "refinery.snapshot",
    "sign": "service",
    "verify_signature": "service",
    "serve_in_thread": "host",
}

__all__ = [
    "RunConfig",
    "load_export",
    "parse_export_payload",
    "discover_tasks",
    "resolve_task",
    *errors.__all__,
    *_LAZY,
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'kern_finetune' has no attribute {name!r}")
