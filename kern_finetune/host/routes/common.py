"""What the host's routes share: ASCII JSON responses, the error bodies of each layer, the project check."""

from __future__ import annotations

import json
import secrets
import uuid
from datetime import datetime, timezone
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from ..api_errors import ApiError
from ..store import HostStore
from ..values import is_text

__all__ = ["AsciiJSONResponse", "PROXY_PREFIX", "GATEWAY_PREFIX", "PROJECT_PREFIX", "api_error", "proxy_error",
           "oathkeeper_body", "oathkeeper_error", "iso", "request_user", "check_project", "strict_str_errors"]

PROXY_PREFIX = "/api/"
GATEWAY_PREFIX = "/refinery-gateway/"
PROJECT_PREFIX = "/api/project/{project_id}"


class AsciiJSONResponse(JSONResponse):
    """JSON with non-ASCII characters escaped: equal content, and a lone surrogate that a client sent inside
    a JSON string (``"\\ud800"``) cannot break the response's UTF-8 encoding."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def api_error(status: int, code: str, detail: str) -> JSONResponse:
    """The host's own error body (:class:`~kern_finetune.host.api_errors.ApiError`): ``{"error_code", "detail"}``."""
    return AsciiJSONResponse(status_code=status, content={"error_code": code, "detail": detail})


def proxy_error(status: int, code: str) -> JSONResponse:
    """The proxy's own error body: ``{"error_code": code}`` and nothing else."""
    return AsciiJSONResponse(status_code=status, content={"error_code": code})


def oathkeeper_body(status: int, reason: str | None = None) -> dict[str, Any]:
    """Oathkeeper's JSON error (herodot ``DefaultError`` in ``{"error": ...}``; ory/oathkeeper ``helper/errors.go``)."""
    message = {401: "Access credentials are invalid", 404: "Requested url does not match any rules"}[status]
    error = {"code": status, "status": {401: "Unauthorized", 404: "Not Found"}[status], "request": str(uuid.uuid4()),
             "message": message}
    return {"error": error if reason is None else dict(error, reason=reason)}


def oathkeeper_error(status: int) -> JSONResponse:
    return AsciiJSONResponse(status_code=status, content=oathkeeper_body(status))


def iso(ts: float) -> str:
    """A Unix time as ISO 8601 UTC to the second."""
    return datetime.fromtimestamp(ts, timezone.utc).isoformat(timespec="seconds")


def request_user(request: Request) -> str:
    """The user the gate found for this request (a FastAPI dependency)."""
    return str(getattr(request.state, "user", ""))


def check_project(store: HostStore, project_id: str) -> None:
    """404 PROJECT_NOT_FOUND unless ``project_id`` is the project this host serves (compared in constant time)."""
    if not secrets.compare_digest(project_id.encode(), store.project_id.encode()):
        raise ApiError(404, "PROJECT_NOT_FOUND", "this host serves another project")


def strict_str_errors(body: Any, keys: tuple[str, ...]) -> list[dict[str, Any]]:
    """pydantic 1.10's errors for a body model whose ``keys`` are ``StrictStr`` (here also valid UTF-8)."""
    if not isinstance(body, dict):
        return [{"loc": ["body"], "msg": "value is not a valid dict", "type": "type_error.dict"}]
    errors = []
    for key in keys:
        if key not in body:
            errors.append({"loc": ["body", key], "msg": "field required", "type": "value_error.missing"})
        elif not isinstance(body[key], str) or not is_text(body[key]):
            errors.append({"loc": ["body", key], "msg": "str type expected", "type": "type_error.str"})
    return errors
