"""Checking a trigger's JSON body: the project id, the run options (RunConfig fields), ``force``, ``min_new_labels``."""

from __future__ import annotations

from typing import Any

from ..web.net import is_project_id
from ..config import RunConfig
from ..errors import ConfigError

__all__ = ["validate_trigger"]

_TRIGGER_KEYS = {"project_id", "options", "force", "min_new_labels"}


def validate_trigger(payload: Any) -> tuple[str, dict[str, Any], bool, int]:
    """Check a decoded trigger body; raises :class:`ConfigError` with the reason."""
    if not isinstance(payload, dict):
        raise ConfigError("the body must be a JSON object")
    unknown = sorted(set(payload) - _TRIGGER_KEYS)
    if unknown:
        raise ConfigError(f"unknown field(s): {', '.join(unknown)}; known: {', '.join(sorted(_TRIGGER_KEYS))}")
    project_id = payload.get("project_id")
    if not is_project_id(project_id):  # the whole string: "abc\n" is not "abc"
        raise ConfigError("project_id must be a string of 1-128 letters, digits, '_', '.', '-'")
    options = {} if payload.get("options") is None else payload["options"]
    if not isinstance(options, dict):
        raise ConfigError("options must be a JSON object of RunConfig fields")
    RunConfig.from_options(options, trigger=True)  # names, JSON types, values; cache_dir is the service's
    force = payload.get("force", False)
    if not isinstance(force, bool):
        raise ConfigError("force must be true or false")
    min_new_labels = payload.get("min_new_labels", 1)
    if not isinstance(min_new_labels, int) or isinstance(min_new_labels, bool) or min_new_labels < 0:
        raise ConfigError("min_new_labels must be an integer >= 0")
    return project_id, options, force, min_new_labels
