"""Select training labels from a record export: manual labels plus confident weak labels.

Rules, each counted in ``Selection.skipped`` when it drops a label:

- a manual label wins over a weak one; several manual labels on one record (refinery joins them with
  ``", "``, split against the task's labels) are kept when they agree, else the record is skipped
  (``manual_conflict``);
- a label outside the task's known label set is skipped (``label_outside_task``), one that is not text
  (``label_invalid``) too;
- a weak label counts only with ``weak_labels`` and a confidence in [0, 1] strictly above the threshold
  (else ``weak_confidence_missing`` or ``weak_confidence_invalid``);
- a record with empty text is not trained on or evaluated (``empty_text``) but still gets a vector;
- a record without an id, or two with the same id, is an :class:`ExportError` (vectors are keyed by id).

Records not selected for training are the test records, judged by the gold attribute where it has a value.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import ConfigError, ExportError, SelectionError
from ..refinery.columns import Record, TaskColumns

__all__ = ["VAL_FRACTION", "Selection", "select_labels", "build_texts", "default_text_attributes", "gold_to_class",
           "label_fingerprint", "split_train_val", "task_labels", "split_manual_labels"]


@dataclass
class Selection:
    """Which records train, validate and test, with what label. Indices point into ``ids``."""

    ids: list[str]
    texts: list[str]
    classes: list[str]
    y: np.ndarray  # class index per record, -1 where no label was selected
    source: list[str]  # "manual", "weak" or "" per record
    confidence: np.ndarray  # weak-supervision confidence per record (nan where none)
    train_idx: np.ndarray
    val_idx: np.ndarray
    test_idx: np.ndarray
    gold: list[str | None]
    skipped: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    """Warnings about the labels, one line each (the pipeline prints them)."""

    @property
    def labeled_idx(self) -> np.ndarray:
        return np.concatenate([self.train_idx, self.val_idx])

    def class_counts(self, idx: np.ndarray) -> dict[str, int]:
        counts = Counter(int(c) for c in self.y[idx])
        return {name: counts.get(i, 0) for i, name in enumerate(self.classes)}

    def label_state(self) -> dict[str, str]:
        """``{record id: label}`` of every selected label: what a re-sync fingerprints."""
        return {self.ids[i]: self.classes[self.y[i]] for i in sorted(self.labeled_idx.tolist())}


VAL_FRACTION = 0.25
"""Share of the selected labels that validate (early stopping, the smoothing's choice); ``docs/decisions.md``."""


def gold_to_class(selection: Selection) -> dict[str, int] | None:
    """Map gold values to task classes, for evaluation only: by name where every gold value is a class name,
    else by majority vote over the labeled records that carry gold (AG News' ``"1".."4"``); None when a gold
    value has no labeled record or two gold values would map to the same class."""
    values = {g for g in selection.gold if g is not None}
    index = {c: i for i, c in enumerate(selection.classes)}
    if values <= set(index):
        return {v: index[v] for v in values}
    votes: dict[str, Counter[int]] = {}
    for i in selection.labeled_idx.tolist():
        g = selection.gold[i]
        if g is not None:
            votes.setdefault(g, Counter())[int(selection.y[i])] += 1
    if set(votes) != values:
        return None
    mapping = {g: c.most_common(1)[0][0] for g, c in votes.items()}
    return mapping if len(set(mapping.values())) == len(mapping) else None


def default_text_attributes(records: list[Record], *, id_attribute: str, gold_attribute: str | None) -> list[str]:
    """Every attribute that holds text: not the id, not the gold, not a label column, not numeric."""
    names = dict.fromkeys(key for rec in records[:200] for key in rec)
    out = []
    for name in names:
        if name in (id_attribute, gold_attribute) or "__" in name:
            continue
        values = [r.get(name) for r in records[:200] if r.get(name) not in (None, "")]
        if values and all(_is_number(v) for v in values):
            continue
        out.append(name)
    return out


def build_texts(records: list[Record], attributes: list[str]) -> list[str]:
    """``attr1 + ". " + attr2 ...`` per record, skipping empty parts."""
    missing = [a for a in attributes if not any(a in r for r in records[:200])]
    if missing:
        raise ConfigError(f"text attribute(s) not in the export: {', '.join(missing)}")
    return [". ".join(p for p in (str(rec.get(a) or "").strip() for a in attributes) if p) for rec in records]


def select_labels(records: list[Record], task: TaskColumns, *, text_attributes: list[str],
                  id_attribute: str = "running_id", gold_attribute: str | None = None, threshold: float = 0.7,
                  weak_labels: bool = True, val_fraction: float = VAL_FRACTION, seed: int = 42,
                  known_labels: list[str] | None = None) -> Selection:
    """Apply the selection rules (module docstring) and split the labels into train/validation."""
    ids = _record_ids(records, id_attribute)
    texts = build_texts(records, text_attributes)
    if texts and not any(texts):
        raise SelectionError(f"every record's text is empty (attributes {', '.join(map(repr, text_attributes))}): "
                             "name the attributes that hold the text (--text-attributes)")
    skipped: Counter[str] = Counter()
    known = set(known_labels) if known_labels else None
    labels = known if known is not None else task_labels(records, task)
    chosen, source, confidence = _choose_labels(records, task, texts, labels, known, threshold, skipped, weak_labels)

    classes = sorted(known) if known else sorted({c for c in chosen if c is not None})
    classes, aside = _set_aside_small_classes(classes, chosen, source, skipped)
    if len(classes) < 2:
        raise SelectionError(
            f"need labels of at least 2 classes to train, found {len(classes)}"
            + (f" (threshold {threshold}: lower it or add manual labels)" if weak_labels
               else " (manual labels only: add manual labels, or allow weak labels)")
        )
    index = {c: k for k, c in enumerate(classes)}
    y = np.array([index[c] if c is not None else -1 for c in chosen], dtype=np.int64)
    labeled = np.flatnonzero(y >= 0)
    per_class = Counter(y[labeled].tolist())
    if len(labeled) < 8 or min(per_class.get(k, 0) for k in range(len(classes))) < 2:
        counts = ", ".join(f"{c}: {per_class.get(k, 0)}" for k, c in enumerate(classes))
        raise SelectionError(f"too few labels to train ({counts}); every class needs at least 2")
    train_idx, val_idx = split_train_val(labeled, val_fraction, seed)

    raw_gold = [rec.get(gold_attribute) if gold_attribute else None for rec in records]
    gold: list[str | None] = [None if g in (None, "") else str(g) for g in raw_gold]
    test_mask = y < 0
    empty = np.array([not t for t in texts])
    test_idx = np.flatnonzero(test_mask & ~empty & np.array([g is not None for g in gold]))
    if gold_attribute:
        skipped["test_without_gold"] += int((test_mask & ~empty).sum() - len(test_idx))
        if not any(g is not None for g in gold):
            raise ConfigError(f"gold attribute {gold_attribute!r} has no values in the export")
    skipped["empty_text"] += int(empty.sum())
    return Selection(ids=ids, texts=texts, classes=classes, y=y, source=source, confidence=confidence,
                     train_idx=np.sort(train_idx), val_idx=np.sort(val_idx), test_idx=test_idx, gold=gold,
                     skipped={k: v for k, v in sorted(skipped.items()) if v},
                     notes=aside + near_duplicate_classes(classes))


def _set_aside_small_classes(classes: list[str], chosen: list[str | None], source: list[str],
                             skipped: Counter[str]) -> tuple[list[str], list[str]]:
    """Classes with fewer than 2 labels cannot train (a class needs a pair): while at least 2 classes keep 2 or
    more, they are set aside for this run (``class_too_small``, cleared in place in ``chosen`` / ``source``) with
    one warning line, instead of failing the whole project."""
    counts = Counter(c for c in chosen if c is not None)
    small = [c for c in classes if counts.get(c, 0) < 2]
    if not small or len(classes) - len(small) < 2:
        return classes, []
    out = set(small)
    for i, c in enumerate(chosen):
        if c in out:
            chosen[i], source[i] = None, ""
            skipped["class_too_small"] += 1
    shown = ", ".join(f"{c!r} ({counts.get(c, 0)})" for c in small[:5]) + (", ..." if len(small) > 5 else "")
    return [c for c in classes if c not in out], [
        f"{len(small)} class(es) with fewer than 2 labels set aside for this run: {shown}; "
        "label at least 2 records of a class to train it"]


def near_duplicate_classes(classes: list[str]) -> list[str]:
    """One warning line when some labels differ only by case or surrounding spaces (``Sports`` / ``sports``,
    ``World`` / ``World ``): they train as separate classes, which is rarely what the labelers meant."""
    groups: dict[str, list[str]] = {}
    for c in classes:
        groups.setdefault(c.strip().casefold(), []).append(c)
    same = [" = ".join(repr(c) for c in sorted(g)) for g in groups.values() if len(g) > 1]
    if not same:
        return []
    return [f"labels that differ only by case or spaces train as separate classes: {'; '.join(same)} "
            "(rename them to one label in refinery if they mean the same)"]


def split_train_val(labeled: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(train, validation)`` rows of ``labeled``: scikit-learn's ``train_test_split(labeled,
    test_size=val_fraction, random_state=seed)`` row for row, without importing sklearn (slow), so that
    selecting labels (and an up-to-date sync) stays light."""
    n = len(labeled)
    n_val = math.ceil(val_fraction * n)
    if not 0 < n_val < n:
        raise SelectionError(f"cannot split {n} labels with val_fraction {val_fraction}")
    order = np.random.RandomState(seed).permutation(n)
    return labeled[order[n_val:]], labeled[order[:n_val]]


def _choose_labels(records: list[Record], task: TaskColumns, texts: list[str], labels: set[str],
                   known: set[str] | None, threshold: float, skipped: Counter[str],
                   weak_labels: bool) -> tuple[list[str | None], list[str], np.ndarray]:
    """The selection rules record by record: ``(label or None, source, weak confidence)`` per record;
    what is skipped is counted in ``skipped``."""
    chosen: list[str | None] = []
    source: list[str] = []
    confidence = np.full(len(records), np.nan)
    for i, rec in enumerate(records):
        label, src, blocked = None, "", False
        manual = _as_label(rec.get(task.manual)) if task.manual else None
        if manual is _INVALID:
            skipped["label_invalid"] += 1
        elif manual is not None:
            names = split_manual_labels(manual, labels)
            if len(set(names)) > 1:
                skipped["manual_conflict"] += 1
                blocked = True  # labelers disagree: the weak label must not decide
            elif known is not None and names[0] not in known:
                skipped["label_outside_task"] += 1
            else:
                label, src = names[0], "manual"
        weak = _as_label(rec.get(task.weak)) if task.weak else None
        conf_raw = rec.get(task.confidence) if task.confidence else None
        conf = _parse_confidence(conf_raw)
        if weak is not None and weak is not _INVALID:
            confidence[i] = conf if conf is not None else np.nan
        if label is None and not blocked and weak is not None and weak_labels:
            if weak is _INVALID:
                skipped["label_invalid"] += 1
            elif conf_raw in (None, ""):
                skipped["weak_confidence_missing"] += 1
            elif conf is None:
                skipped["weak_confidence_invalid"] += 1
            elif known is not None and weak not in known:
                skipped["label_outside_task"] += 1
            elif conf > threshold:
                label, src = str(weak), "weak"
        if label is not None and not texts[i]:
            label, src = None, ""  # counted once below, with the unlabeled empty records
        chosen.append(label)
        source.append(src)
    return chosen, source, confidence


def label_fingerprint(selection: Selection, task: str, threshold: float) -> str:
    """SHA-256 of the selected labels (record id -> label) with the task and threshold."""
    payload = json.dumps({"task": task, "threshold": threshold, "labels": selection.label_state()}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


def _record_ids(records: list[Record], id_attribute: str) -> list[str]:
    ids = []
    for i, rec in enumerate(records):
        value = rec.get(id_attribute)
        if value in (None, ""):
            raise ExportError(f"record #{i} has no {id_attribute!r}; name the id attribute with --id-attribute")
        ids.append(str(value))
    dupes = [k for k, n in Counter(ids).items() if n > 1]
    if dupes:
        raise ExportError(f"{len(dupes)} duplicate record id(s) in {id_attribute!r}, e.g. {dupes[:3]}")
    return ids


_INVALID: Any = object()
"""Marker for a label value that is not text."""


def _as_label(value: Any) -> Any:
    """A label cell as text: None for empty, :data:`_INVALID` for arrays/objects, numbers as their text."""
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return _INVALID


def task_labels(records: list[Record], task: TaskColumns) -> set[str]:
    """The task's labels as the export shows them: every weak label and every manual value without ``", "``; a
    manual value with ``", "`` only when no part of it is a label alone and it does not split into several
    labels (``"Sci, Tech"`` stays whole where no record carries ``"Sci"`` or ``"Tech"`` alone)."""
    weak: set[str] = set()
    manual: set[str] = set()
    for rec in records:
        if task.weak and isinstance(v := _as_label(rec.get(task.weak)), str):
            weak.add(v)
        if task.manual and isinstance(v := _as_label(rec.get(task.manual)), str):
            manual.add(v)
    base = weak | {v for v in manual if ", " not in v}
    labels = set(base)
    for value in sorted((v for v in manual if ", " in v), key=lambda v: (v.count(", "), v)):
        if any(part in base for part in value.split(", ")):
            continue
        if _segment(value, labels) is None:
            labels.add(value)
    return labels


def split_manual_labels(value: str, labels: set[str] | None) -> list[str]:
    """Split refinery's ``", "``-joined manual labels: a known label stays whole, else the split into the fewest
    known ``labels``, else (a part is unknown) a plain split on ``", "``."""
    if labels and value in labels:
        return [value]
    if labels:
        seg = _segment(value, labels)
        if seg is not None:
            return seg
    parts = [p.strip() for p in value.split(", ") if p.strip()]
    return parts or [value]


def _segment(value: str, labels: set[str]) -> list[str] | None:
    """``value`` as the fewest labels joined by ``", "`` (dynamic programming over the parts), or None."""
    parts = value.split(", ")
    longest = max((label.count(", ") + 1 for label in labels), default=1)
    best: list[list[str] | None] = [[]] + [None] * len(parts)
    for end in range(1, len(parts) + 1):
        for start in range(max(0, end - longest), end):
            prev = best[start]
            if prev is None:
                continue
            piece = ", ".join(parts[start:end])
            if piece in labels and (best[end] is None or len(prev) + 1 < len(best[end])):  # type: ignore[arg-type]
                best[end] = prev + [piece]
    return best[-1]


def _parse_confidence(value: object) -> float | None:
    if value is None or value == "" or isinstance(value, bool):
        return None
    try:
        conf = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return conf if math.isfinite(conf) and 0.0 <= conf <= 1.0 else None


def _is_number(value: object) -> bool:
    try:
        float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return True
