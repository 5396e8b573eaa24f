"""The client of a refinery(-compatible) host: the SDK's routes through refinery's proxy (``/api/``).

Request shapes: ``docs/refinery-api.md``; credentials and reliability: ``docs/refinery-sdk.md``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..errors import ConfigError, ExportError, HostError
from .columns import Record
from .export import parse_export_payload
from .transport import Transport, json_body

__all__ = ["DEFAULT_URI", "ENV_USER", "ENV_PASSWORD", "ENV_URI", "ENV_PROJECT", "RefineryClient",
           "client_from_options"]

DEFAULT_URI = "http://localhost:4455"
ENV_USER = "KERN_FINETUNE_USER"
ENV_PASSWORD = "KERN_FINETUNE_PASSWORD"
ENV_URI = "KERN_FINETUNE_URI"
ENV_PROJECT = "KERN_FINETUNE_PROJECT"


class RefineryClient(Transport):
    """Speak to one refinery(-compatible) host as one user (arguments: :class:`~.transport.Transport`).

    The client logs in lazily, on the first API call, or explicitly with :meth:`login`.
    """

    @classmethod
    def from_secrets(cls, path: str | Path, *, uri: str | None = None, **kwargs: Any) -> RefineryClient:
        """Build from a refinery SDK-style ``secrets.json`` (``uri`` overrides the file's)."""
        path = Path(path)
        try:
            content = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"secrets file not found: {path}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read secrets file {path}: {type(exc).__name__}") from None
        except json.JSONDecodeError as exc:
            # never echo the file's content: it holds the password
            raise ConfigError(f"secrets file {path} is not valid JSON (line {exc.lineno})") from None
        if not isinstance(content, dict):
            raise ConfigError(f"secrets file {path} must hold a JSON object")
        missing = [k for k in ("user_name", "password") if not content.get(k)]
        if missing:
            raise ConfigError(f"secrets file {path} lacks {', '.join(missing)}")
        return cls(uri or content.get("uri") or DEFAULT_URI, str(content["user_name"]), str(content["password"]),
                   project_id=kwargs.pop("project_id", None) or content.get("project_id"), **kwargs)

    @classmethod
    def from_env(cls, *, uri: str | None = None, **kwargs: Any) -> RefineryClient:
        """Build from ``KERN_FINETUNE_USER`` / ``_PASSWORD`` / ``_URI`` / ``_PROJECT``."""
        user, password = os.environ.get(ENV_USER), os.environ.get(ENV_PASSWORD)
        if not user or not password:
            raise ConfigError(f"no credentials: pass --secrets FILE or set {ENV_USER} and {ENV_PASSWORD}")
        return cls(uri or os.environ.get(ENV_URI) or DEFAULT_URI, user, password,
                   project_id=kwargs.pop("project_id", None) or os.environ.get(ENV_PROJECT) or None, **kwargs)

    def __repr__(self) -> str:
        state = "logged in" if self.logged_in else "not logged in"
        return f"RefineryClient(uri={self.uri!r}, user_name={self.user_name!r}, {state})"

    __str__ = __repr__

    def get_project(self, project_id: str | None = None) -> dict[str, Any]:
        """``GET /api/project/{id}``: name, description, tokenizer, attributes, knowledge_base_ids."""
        pid = self.project(project_id)
        data = json_body(self.request("GET", f"/api/project/{pid}", what="reading the project"), what="project details")
        if isinstance(data, str):  # some hosts double-encode here too
            data = json.loads(data)
        if not isinstance(data, dict):
            raise HostError(f"project details are a {type(data).__name__}, expected an object")
        return data

    def get_export(self, project_id: str | None = None, num_samples: int | None = None) -> list[Record]:
        """``GET /api/project/{id}/export[?num_samples=N]``: the records, decoded twice (a malformed body:
        :class:`~kern_finetune.errors.ExportError`)."""
        pid = self.project(project_id)
        params = {"num_samples": int(num_samples)} if num_samples is not None else None
        resp = self.request("GET", f"/api/project/{pid}/export", params=params, what="reading the export",
                            timeout=self.export_timeout)
        try:
            return parse_export_payload(resp.content)
        except ExportError as exc:
            raise ExportError(f"export from {self.uri} is malformed: {exc}") from None


def client_from_options(*, uri: str | None = None, secrets: str | Path | None = None, **kwargs: Any) -> RefineryClient:
    """The client a command line asks for: ``--secrets FILE`` if given, else the environment;
    ``--uri`` overrides the URI of either."""
    if secrets:
        return RefineryClient.from_secrets(secrets, uri=uri, **kwargs)
    return RefineryClient.from_env(uri=uri, **kwargs)
