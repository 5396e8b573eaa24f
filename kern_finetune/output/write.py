"""Stage 5: write a run's outputs into its (staging) folder: ``model/`` with its card ``model/README.md``,
``vectors.npz``, ``label_issues.csv`` (when the label check ran), ``report.html`` and ``metrics.json``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .model_card import model_card
from .model_folder import save_model
from ..evaluation.report import write_report
from .save import save_vectors, write_json

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

    from ..evaluation.evaluate import Plots
    from ..vectors.base_share import BaseShare
    from ..evaluation.report import ReportData

__all__ = ["Written", "write"]


@dataclass(frozen=True)
class Written:
    """What :func:`write` put into ``folder`` (file and folder names, in the order written)."""

    folder: Path
    files: tuple[str, ...]


def write(
    folder: Path,
    *,
    ids: list[str],
    vectors: np.ndarray,
    model: SentenceTransformer,
    source: Path,
    fine_tuned: bool,
    door: BaseShare | None,
    metrics: dict[str, Any],
    plots: Plots | None,
    report_data: ReportData | None,
    label_check: dict[str, Any] | None,
    started: float | None = None,
) -> Written:
    """Write the run's outputs into ``folder``. ``model`` is the base model (head mode: ``door``'s map is
    written after it) or the fine-tuned one (full mode: ``fine_tuned``); ``source`` is the base model's folder.
    ``started``: the run's ``time.perf_counter()`` at its start, for ``metrics["seconds"]["total"]``."""
    from ..labels.label_check import write_label_issues

    folder = Path(folder)
    files = ["model", "vectors.npz"]
    save_model(model, folder / "model", source=source, fine_tuned=fine_tuned,
               dense=None if door is None else (door.weight, door.bias))
    (folder / "model" / "README.md").write_text(
        model_card(metrics, fine_tuned=fine_tuned, share=None if door is None else door.share), encoding="utf-8")
    save_vectors(folder / "vectors.npz", ids, vectors)
    if started is not None:
        metrics.setdefault("seconds", {})["total"] = round(time.perf_counter() - started, 2)
    if label_check is not None:
        write_label_issues(folder / "label_issues.csv", label_check)
        files.append("label_issues.csv")
    write_report(folder / "report.html", metrics, plots=None if plots is None else plots.to_dict(), data=report_data,
                 label_issues=label_check)
    write_json(folder / "metrics.json", metrics)
    return Written(folder=folder, files=(*files, "report.html", "metrics.json"))
