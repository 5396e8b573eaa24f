"""The one orchestration: select labels -> encode (cached) -> train -> evaluate -> write outputs.

(Being written: the contract below is fixed, the body lands next.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .config import RunConfig
from .export import Record

__all__ = ["RunResult", "run_pipeline"]

ProgressFn = Callable[[str], None]


@dataclass
class RunResult:
    """What one run produced. ``vectors[i]`` (L2-normalised, float32) belongs to record ``ids[i]``."""

    ids: list[str]
    vectors: np.ndarray
    metrics: dict[str, Any]
    out_dir: Path
    model_dir: Path
    embedding_name: str
    label_fingerprint: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def run_pipeline(
    records: list[Record], config: RunConfig, *, out_dir: Path, progress: ProgressFn | None = None
) -> RunResult:
    """Fine-tune on ``records`` (a decoded refinery export) and write metrics.json, report.html,
    model/ (sentence-transformers format) and vectors into ``out_dir``."""
    raise NotImplementedError
