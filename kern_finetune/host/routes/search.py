"""The gateway's data-browser similarity search (refinery-gateway ``fast_api/routes/data_browser.py``), at
``/refinery-gateway/api/v1/data-browser/...`` as refinery's UI calls it (refinery-ui
``src/services/base/data-browser.ts``), behind oathkeeper's browser-session check (:mod:`kern_finetune.host.app`)."""

from __future__ import annotations

import json
from typing import Any

from fastapi import Body, Depends, FastAPI
from fastapi.responses import JSONResponse

from ..api_errors import ApiError
from ..store import HostStore
from ..values import is_text
from .common import GATEWAY_PREFIX, AsciiJSONResponse, check_project, request_user, strict_str_errors

__all__ = ["add_search_routes"]


def _similarity_body_errors(body: Any) -> list[dict[str, Any]]:
    """``SearchRecordsBySimilarityBody`` (refinery-gateway ``fast_api/models.py``): ``embeddingId`` and
    ``recordId`` StrictStr; ``attFilter`` a JSON string or null (the route ``json.loads`` it); ``recordSubKey``
    null here (the host serves attribute-level embeddings only)."""
    errors = strict_str_errors(body, ("embeddingId", "recordId"))
    if not isinstance(body, dict):
        return errors
    att = body.get("attFilter")
    if att:
        ok = isinstance(att, str) and is_text(att)
        if ok:
            try:
                ok = isinstance(json.loads(att), list)
            except (ValueError, RecursionError):
                ok = False
        if not ok:
            errors.append({"loc": ["body", "attFilter"], "msg": "a JSON string holding a list of filters",
                           "type": "value_error"})
    if body.get("recordSubKey") is not None:
        errors.append({"loc": ["body", "recordSubKey"], "msg": "only null: attribute-level embeddings have no sub keys",
                       "type": "value_error"})
    return errors


def add_search_routes(app: FastAPI, store: HostStore) -> None:
    """``POST /refinery-gateway/api/v1/data-browser/{project_id}/search-records-by-similarity``."""

    # The second path lacks the gateway's /api mount: the workplace's shared facts (docs/refinery-api.md) still
    # name it and manifest.json follows them; it goes once they name the real path (refinery-ui data-browser.ts).
    @app.post(GATEWAY_PREFIX + "v1/data-browser/{project_id}/search-records-by-similarity")
    @app.post(GATEWAY_PREFIX + "api/v1/data-browser/{project_id}/search-records-by-similarity")
    def search_records_by_similarity(project_id: str, body: Any = Body(None), user: str = Depends(request_user)
                                     ) -> JSONResponse:
        errors = _similarity_body_errors(body)
        if errors:
            return AsciiJSONResponse(status_code=422, content={"detail": errors})
        try:
            check_project(store, project_id)
        except ApiError:
            return AsciiJSONResponse(status_code=404, content={"detail": "project not found"})
        try:
            return AsciiJSONResponse(content=store.search.search_records_by_similarity(body, user))
        except ApiError as exc:
            return AsciiJSONResponse(status_code=exc.status, content={"detail": exc.detail})
