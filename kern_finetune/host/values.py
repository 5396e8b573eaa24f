"""Values as the host stores and serves them: export strings, confidences, checked request fields."""

from __future__ import annotations

import json
from typing import Any

from ..refinery.columns import as_string, confidence_string

__all__ = ["as_confidence", "dump_row", "is_text", "is_unit_number"]


def as_confidence(value: Any) -> str | None:
    """Confidence columns hold a string rounded to 4 places (``"0.6220"``)."""
    if value is None or isinstance(value, str):
        return value
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return as_string(value)
    return confidence_string(number)


def dump_row(row: dict[str, Any]) -> str:
    """A record row as the compact JSON the host stores and serves."""
    return json.dumps(row, ensure_ascii=False, separators=(",", ":"))


def is_text(value: str) -> bool:
    """True when ``value`` can be stored and sent as UTF-8 (JSON allows lone surrogates such as ``"\\ud800"``)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def is_unit_number(value: Any) -> bool:
    """A number (not a bool) in [0, 1]; compared before any float conversion, so huge integers are safe."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return 0 <= value <= 1
