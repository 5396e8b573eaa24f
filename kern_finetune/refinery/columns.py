"""The column contract of refinery's record export: records, task columns, value strings, embedding names.

Every fact about how refinery lays out a project as a table is defined here once. Per labeling task, base
``<attribute>__<task>`` (``__<task>`` for a whole-record task): ``<base>__MANUAL`` (labels joined with ``", "``),
``<base>__WEAK_SUPERVISION`` and ``<base>__WEAK_SUPERVISION__confidence`` (refinery-submodule-model
``business_objects/export.py``, ``__build_classification_part``; ``docs/refinery-api.md``).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from ..errors import ExportError

__all__ = [
    "Record", "CLASSIFICATION", "EXTRACTION", "MANUAL", "WEAK_SUPERVISION", "CONFIDENCE", "SUFFIXES", "TaskColumns",
    "task_base", "split_task_column", "as_string", "confidence_string", "PLATFORM", "EmbeddingName",
    "model_short_name", "embedding_name", "parse_embedding_name", "COUNT_BASED_MODELS", "import_platform",
    "import_rename", "import_attribute",
]

Record = dict[str, Any]
"""One row of the record export: attribute/column name -> string or None."""

CLASSIFICATION = "classification"
EXTRACTION = "extraction"

MANUAL = "__MANUAL"
WEAK_SUPERVISION = "__WEAK_SUPERVISION"
CONFIDENCE = "__WEAK_SUPERVISION__confidence"
SUFFIXES = ((CONFIDENCE, "confidence"), (WEAK_SUPERVISION, "weak"), (MANUAL, "manual"))
"""``(suffix, role)`` of a task's columns, longest suffix first: the order a column name is matched in."""


def task_base(attribute: str | None, task: str) -> str:
    """``<attribute>__<task>``, ``__<task>`` for a whole-record task: the prefix of the task's columns."""
    return f"{attribute or ''}__{task}"


@dataclass(frozen=True)
class TaskColumns:
    """Where one labeling task lives in the export's columns."""

    name: str
    attribute: str | None  # None for a whole-record task
    manual: str | None
    weak: str | None
    confidence: str | None
    kind: str = CLASSIFICATION
    """``"classification"``, or ``"extraction"`` when the columns hold per-token arrays."""

    @classmethod
    def named(cls, name: str, attribute: str | None, *, kind: str = CLASSIFICATION) -> TaskColumns:
        """The task with all three columns, named as refinery's export names them."""
        base = task_base(attribute, name)
        return cls(name=name, attribute=attribute or None, manual=base + MANUAL, weak=base + WEAK_SUPERVISION,
                   confidence=base + CONFIDENCE, kind=kind)

    @property
    def label(self) -> str:
        return self.name if self.attribute is None else f"{self.attribute}.{self.name}"


def split_task_column(column: str) -> tuple[str | None, str, str] | None:
    """``(attribute or None, task, role)`` of a task column (role ``manual``/``weak``/``confidence``); None for
    any other column, ``x__MANUAL`` (no ``__<task>`` part) or an empty task name included."""
    for suffix, role in SUFFIXES:
        if column.endswith(suffix):
            base = column[: -len(suffix)]
            if "__" not in base:
                return None
            attribute, _, name = base.rpartition("__")
            return (attribute or None, name, role) if name else None
    return None


# --------------------------------------------------------------------------------------------------
# values as the export writes them


def as_string(value: Any) -> str | None:
    """An attribute value as refinery's record export writes it: a string, or None.

    The export selects ``r.data->> '<attribute>'`` (refinery-submodule-model ``business_objects/export.py``,
    ``build_full_record_sql_export``; refinery-gateway v1.17.0 ``controller/transfer/manager.py``,
    ``export_records``): the text of the JSONB value. A string unquoted, a boolean ``"true"``/``"false"``, a
    number as ``numeric`` prints it (no exponent), an object or array as JSONB prints it (``", "``/``": "``
    separators, keys by length, then bytes), null as null. NaN and Infinity (which JSONB refuses) are None.
    """
    if value is None or isinstance(value, str):
        return value
    try:
        return _jsonb_text(value)
    except RecursionError:
        raise ExportError("a record's attribute value nests too deeply to be read as text") from None


def _jsonb_text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _numeric(value)
    if isinstance(value, dict):
        items = sorted(((str(k), v) for k, v in value.items()), key=lambda kv: _key_order(kv[0]))
        return "{" + ", ".join(f"{json.dumps(k, ensure_ascii=False)}: {_jsonb_inner(v)}" for k, v in items) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_jsonb_inner(v) for v in value) + "]"
    return str(value)


def _jsonb_inner(value: Any) -> str:
    """A value inside a JSONB object or array: strings quoted, null (and non-finite numbers) as ``null``."""
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    text = _jsonb_text(value)
    return "null" if text is None else text


def _numeric(value: float) -> str | None:
    """A float as Postgres ``numeric`` prints it: its shortest repr, in plain notation."""
    if not math.isfinite(value):
        return None
    out = format(Decimal(repr(value)), "f")
    return out[1:] if out.startswith("-") and Decimal(out).is_zero() else out


def _key_order(key: str) -> tuple[int, bytes]:
    """JSONB keeps object keys shorter first, then by their bytes (Postgres ``lengthCompareJsonbString``)."""
    raw = key.encode("utf-8", "surrogatepass")
    return len(raw), raw


def confidence_string(value: Any) -> str | None:
    """A weak-supervision confidence as the export writes it: ``ROUND(confidence::numeric, 4)::TEXT``
    (``business_objects/export.py``, ``__get_classification_labels``): halves away from zero, from the float's
    shortest repr (``0.5`` -> ``"0.5000"``). None for a value that is not a finite number.
    """
    if value is None or isinstance(value, bool):
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    if not math.isfinite(number):
        return None
    rounded = Decimal(repr(number)).quantize(Decimal("0.0001"), rounding=ROUND_HALF_UP)
    return str(abs(rounded) if rounded.is_zero() else rounded)


# --------------------------------------------------------------------------------------------------
# embedding names

PLATFORM = "kern-finetune"
"""The ``platform`` of the embeddings we write: the import keeps the name, search uses Euclidean distance, and
a later recomputation fails visibly instead of replacing our vectors ("Why platform" in ``docs/snapshot.md``)."""
HUGGINGFACE = "huggingface"
"""The platform of the embeddings refinery's embedder computes from a sentence-transformers model."""

_KINDS = (CLASSIFICATION, EXTRACTION)


@dataclass(frozen=True)
class EmbeddingName:
    """An attribute-level embedding name read back: ``<attribute>-<kind>-<rest>`` (``rest``: ``<platform>-<model>``
    for names refinery builds today, only ``<model>`` for older ones)."""

    attribute: str
    kind: str
    rest: str


def model_short_name(model: str) -> str:
    """``/path/to/all-MiniLM-L6-v2/`` -> ``all-MiniLM-L6-v2``; ``org/name`` -> ``name``."""
    return model.rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1] or model


def embedding_name(attribute: str, *, model: str, platform: str = PLATFORM, short: bool = True) -> str:
    """``<attribute>-classification-<platform>-<model>``, refinery-gateway's ``get_embedding_name`` format, which
    the project import (``project_transfer_manager.py``) keeps when ``platform`` is set. ``short``: the model's
    last path part (how we name what we write); False: as given, as the gateway names an embedding it creates
    (``/models/kern-finetune-Title-v1`` keeps its slashes)."""
    if not attribute:
        raise ExportError("the embedding needs the name of the text attribute it belongs to")
    if not platform:
        raise ExportError("the embedding needs a platform name")
    return f"{attribute}-{CLASSIFICATION}-{platform}-{model_short_name(model) if short else model}"


def parse_embedding_name(name: str, attributes: Iterable[str]) -> EmbeddingName | None:
    """Read ``<attribute>-<classification|extraction>-<rest>`` back, given the project's attribute names.

    Unlike refinery's import (:func:`import_attribute`, :func:`import_rename`), which fails for an attribute
    whose name holds ``-``, the attribute is the longest attribute name that prefixes ``name``. None when none fits.
    """
    for attribute in sorted((a for a in attributes if a), key=len, reverse=True):
        prefix = f"{attribute}-"
        if not name.startswith(prefix):
            continue
        kind, _, rest = name[len(prefix):].partition("-")
        if kind in _KINDS and rest:
            return EmbeddingName(attribute=attribute, kind=kind, rest=rest)
    return None


# --------------------------------------------------------------------------------------------------
# how refinery's project import reads a name (refinery-gateway v1.17.0 project_transfer_manager.py)

COUNT_BASED_MODELS = ("bag-of-words", "bag-of-characters", "tf-idf")
"""The models refinery's import gives platform ``python``; every other model gets ``huggingface``."""
_IMPORT_ATTRIBUTE = re.compile(r"^(.+)-(?:classification|extraction).*")


def import_platform(model: str) -> str:
    """The platform refinery's import gives an embedding entry that has none (``__transform_embedding_by_name``)."""
    return "python" if model in COUNT_BASED_MODELS else HUGGINGFACE


def import_rename(name: str) -> tuple[str, str, str] | None:
    """``(platform, model, new name)`` of an embedding without ``platform``, as refinery's import renames it
    (``__transform_embedding_by_name``: split on ``-``, new name ``<attribute>-<type>-<platform>-<model>``).
    None where the name has no ``-`` (the import fails on it with an IndexError).
    """
    parts = name.split("-")
    if len(parts) < 2:
        return None
    attribute, kind, model = parts[0], parts[1], "-".join(parts[2:])
    platform = import_platform(model)
    return platform, model, f"{attribute}-{kind}-{platform}-{model}"


def import_attribute(name: str) -> str | None:
    """The attribute refinery's import reads from an embedding name without ``attribute_id``
    (``__get_attribute_name_from_embedding_name``: ``^(.+)-(?:classification|extraction).*``, greedy)."""
    match = _IMPORT_ATTRIBUTE.match(name)
    return match.group(1) if match else None
