"""Stage 1 of the pipeline: from a project's records to the labels it trains on (no torch, no sklearn).

:func:`prepare` resolves the task and the text attributes, selects the labels
(:func:`~kern_finetune.labels.select.select_labels`) and fingerprints them, once: ``sync`` decides "up to
date" from the fingerprint and hands the same :class:`Prepared` to the pipeline. The fingerprint covers the
labels before the label check, which needs vectors: whether a sync is up to date is known before encoding.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import RunConfig
from ..refinery.columns import Record, TaskColumns
from ..refinery.export import resolve_task
from .select import Selection, default_text_attributes, label_fingerprint, select_labels

__all__ = ["Prepared", "prepare"]


@dataclass(frozen=True)
class Prepared:
    """What the pipeline trains on: the task, the texts' attributes, the selection and its fingerprint."""

    task: TaskColumns
    text_attributes: list[str]
    selection: Selection
    fingerprint: str
    """SHA-256 of the selected labels with the task and threshold (:func:`kern_finetune.labels.select.label_fingerprint`)."""
    attribute: str
    """The attribute the embedding belongs to (refinery names it after it): the task's, else the first text attribute."""

    @property
    def labels(self) -> dict[str, str]:
        """``{record id: selected label}``: what a re-sync compares."""
        return self.selection.label_state()

    @property
    def n_manual(self) -> int:
        sel = self.selection
        return sum(1 for i in sel.labeled_idx if sel.source[i] == "manual")


def prepare(records: list[Record], config: RunConfig) -> Prepared:
    """Select the labels of ``records`` (a decoded refinery export) as ``config`` says, and fingerprint them."""
    task = resolve_task(records, config.task)
    text_attrs = list(config.text_attributes or default_text_attributes(
        records, id_attribute=config.id_attribute, gold_attribute=config.gold_attribute
    ))
    sel = select_labels(records, task, text_attributes=text_attrs, id_attribute=config.id_attribute,
                        gold_attribute=config.gold_attribute, threshold=config.threshold,
                        weak_labels=config.weak_labels, seed=config.seed)
    attribute = str(task.attribute or (text_attrs[0] if text_attrs else "text"))
    return Prepared(task=task, text_attributes=text_attrs, selection=sel,
                    fingerprint=label_fingerprint(sel, task.label, config.threshold), attribute=attribute)
