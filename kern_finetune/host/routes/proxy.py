"""refinery-gateway-proxy's project routes: project details, the record export, the SDK's associations
(``docs/host.md``, "Routes refinery has")."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from fastapi import Body, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response

from ..api_errors import ApiError
from ..store import HostStore
from .common import PROJECT_PREFIX, AsciiJSONResponse, check_project, proxy_error, request_user

__all__ = ["add_proxy_routes"]

log = logging.getLogger(__name__)

_ASSOCIATION_KEYS = ("associations", "indices", "name", "label_task_name", "source_type")


def _proxied(call: Callable[..., Any], *args: Any, **kwargs: Any) -> JSONResponse:
    """Run a "gateway" call and answer as the proxy's ``handle_response`` does: 200 passed through, 404
    ``PROJECT_NOT_FOUND``, 403 ``FORBIDDEN_USER``, any other status ``200 null``."""
    try:
        return AsciiJSONResponse(content=call(*args, **kwargs))
    except ApiError as exc:
        if exc.status == 404:
            return proxy_error(404, "PROJECT_NOT_FOUND")
        if exc.status == 403:
            return proxy_error(403, "FORBIDDEN_USER")
        log.info("gateway-side failure answered as 200 null: %s", exc.detail)
        return AsciiJSONResponse(content=None)


def _num_samples(request: Request) -> int | None | JSONResponse:
    """The proxy's ``num_samples: Optional[int]`` (pydantic 1.10: ``int(value)``), or its 422."""
    raw = request.query_params.get("num_samples")
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        return AsciiJSONResponse(status_code=422, content={"detail": [
            {"loc": ["query", "num_samples"], "msg": "value is not a valid integer", "type": "type_error.integer"}]})


def add_proxy_routes(app: FastAPI, store: HostStore) -> None:
    """``GET /api/project/{id}``, ``GET .../export``, ``POST .../associations``."""

    def project_details(project_id: str) -> dict[str, Any]:
        check_project(store, project_id)
        return store.project.project_details()

    def associations(project_id: str, body: dict[str, Any], user: str) -> int:
        check_project(store, project_id)
        return store.labels.import_associations(body, user_name=user)

    @app.get(PROJECT_PREFIX)
    def project(project_id: str) -> JSONResponse:
        return _proxied(project_details, project_id)

    @app.get(PROJECT_PREFIX + "/export")
    def export(request: Request, project_id: str) -> Response:
        num_samples = _num_samples(request)
        if isinstance(num_samples, JSONResponse):
            return num_samples
        try:
            check_project(store, project_id)
        except ApiError:
            return proxy_error(404, "PROJECT_NOT_FOUND")
        return Response(content=json.dumps(store.project.export_json(num_samples)), media_type="application/json")

    @app.post(PROJECT_PREFIX + "/associations")
    def post_associations(project_id: str, body: Any = Body(None), user: str = Depends(request_user)) -> JSONResponse:
        """A missing key of the forwarded body is a KeyError (500) in the proxy; here 422."""
        if not isinstance(body, dict) or any(k not in body for k in _ASSOCIATION_KEYS):
            return AsciiJSONResponse(status_code=422, content={"detail": [
                {"loc": ["body"], "msg": f"a JSON object with {', '.join(_ASSOCIATION_KEYS)}",
                 "type": "value_error.missing"}]})
        return _proxied(associations, project_id, body, user)
