"""Checking a trigger's JSON body: the project id, the run options (RunConfig fields), ``force``, ``min_new_labels``."""

from __future__ import annotations

import dataclasses
import os
import re
import types
import typing
from typing import Any

from ..config import RunConfig
from ..errors import ConfigError

__all__ = ["validate_trigger"]

_PROJECT_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_TRIGGER_KEYS = {"project_id", "options", "force", "min_new_labels"}
_SERVICE_OWNED_OPTIONS = {"cache_dir"}


_FIELD_TYPES = {f.name: f.type for f in dataclasses.fields(RunConfig)}
_HINTS = typing.get_type_hints(RunConfig)


def _type_ok(value: Any, hint: Any) -> bool:
    """Whether a JSON value fits a RunConfig field type (bool is no number; a path is a string)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is list:
        # RunConfig.from_dict also accepts "a,b" for list[str]
        return isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))
    if isinstance(hint, type) and issubclass(hint, os.PathLike):
        return isinstance(value, str)
    return True


def validate_trigger(payload: Any) -> tuple[str, dict[str, Any], bool, int]:
    """Check a decoded trigger body; raises :class:`ConfigError` with the reason."""
    if not isinstance(payload, dict):
        raise ConfigError("the body must be a JSON object")
    unknown = sorted(set(payload) - _TRIGGER_KEYS)
    if unknown:
        raise ConfigError(f"unknown field(s): {', '.join(unknown)}; known: {', '.join(sorted(_TRIGGER_KEYS))}")
    project_id = payload.get("project_id")
    if not isinstance(project_id, str) or not _PROJECT_ID_RE.match(project_id):
        raise ConfigError("project_id must be a string of 1-128 letters, digits, '_', '.', '-'")
    options = payload.get("options", {})
    if options is None:
        options = {}
    if not isinstance(options, dict):
        raise ConfigError("options must be a JSON object of RunConfig fields")
    owned = sorted(_SERVICE_OWNED_OPTIONS & set(options))
    if owned:
        raise ConfigError(f"option(s) {', '.join(owned)} are set by the service, not by a trigger")
    for name, value in options.items():
        if name in _HINTS and not _type_ok(value, _HINTS[name]):
            raise ConfigError(f"option {name} has the wrong type: expected {_FIELD_TYPES[name]}, got {value!r}")
    try:
        RunConfig.from_dict(options).validate()
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid options: {exc}") from None
    force = payload.get("force", False)
    if not isinstance(force, bool):
        raise ConfigError("force must be true or false")
    min_new_labels = payload.get("min_new_labels", 1)
    if not isinstance(min_new_labels, int) or isinstance(min_new_labels, bool) or min_new_labels < 0:
        raise ConfigError("min_new_labels must be an integer >= 0")
    return project_id, options, force, min_new_labels
