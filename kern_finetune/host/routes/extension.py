"""kern-finetune's push extension (``docs/push-contract.md``): labels, embeddings, similarity by record id,
labeling sessions. Never refinery's API; every error is ``{"error_code", "detail"}``."""

from __future__ import annotations

import re
from typing import Any

from fastapi import Body, Depends, FastAPI, Query

from ..api_errors import ApiError
from ..store import HostStore
from .common import PROJECT_PREFIX, check_project, request_user

__all__ = ["EXTENSION_PATH", "add_extension_routes"]

EXTENSION_PATH = re.compile(r"^/api/project/[^/]+/(?:embeddings|similarity|labeling-sessions|labels)(?:/|$)")
"""The paths the extension serves (its validation errors have the extension's error shape)."""
_SOURCES = {"manual": "MANUAL", "weak_supervision": "WEAK_SUPERVISION", "model_callback": "WEAK_SUPERVISION",
            "information_source": "WEAK_SUPERVISION"}


def _source(value: Any) -> str:
    found = _SOURCES.get(value.lower()) if isinstance(value, str) else None
    if found is None:
        raise ApiError(422, "INVALID_REQUEST", "source_type: use MANUAL, WEAK_SUPERVISION or MODEL_CALLBACK")
    return found


def _search_args(body: Any) -> tuple[Any, Any, Any]:
    if not isinstance(body, dict):
        raise ApiError(422, "INVALID_REQUEST", 'body must be {"embedding", "record_id", "limit"}')
    return body.get("embedding"), body.get("record_id"), body.get("limit", 100)


def add_extension_routes(app: FastAPI, store: HostStore) -> None:
    """The push extension's routes (absent with ``push_extension=False``)."""
    prefix = PROJECT_PREFIX

    def access(project_id: str, user: str = Depends(request_user)) -> str:
        check_project(store, project_id)
        return user

    @app.post(prefix + "/labels")
    def post_labels(body: Any = Body(None), user: str = Depends(access)) -> dict[str, Any]:
        if not isinstance(body, dict) or not isinstance(body.get("labels"), list):
            raise ApiError(422, "INVALID_REQUEST", 'body must be {"task": NAME, "labels": [{"record_id", "label"}]}')
        source = _source(body.get("source_type", "MANUAL"))
        items = []
        for pos, item in enumerate(body["labels"]):
            if not isinstance(item, dict) or "record_id" not in item or "label" not in item:
                raise ApiError(422, "INVALID_REQUEST", f"labels[{pos}] must be an object with record_id and label")
            items.append((item["record_id"], item["label"], item.get("confidence")))
        return store.labels.set_labels(body.get("task"), items, source=source, user_name=user, origin="labels")

    @app.post(prefix + "/embeddings", status_code=201)
    def create_embedding(body: Any = Body(None), user: str = Depends(access)) -> dict[str, Any]:
        return store.embeddings.create_embedding(body)

    @app.get(prefix + "/embeddings")
    def list_embeddings(include_staged: bool = Query(False), user: str = Depends(access)) -> list[dict[str, Any]]:
        return store.embeddings.list_embeddings(include_staged=include_staged)

    @app.get(prefix + "/embeddings/{embedding_id}")
    def get_embedding(embedding_id: str, user: str = Depends(access)) -> dict[str, Any]:
        return store.embeddings.get_embedding(embedding_id)

    @app.put(prefix + "/embeddings/{embedding_id}/tensors")
    def put_tensors(embedding_id: str, body: Any = Body(None), user: str = Depends(access)) -> dict[str, Any]:
        return store.embeddings.put_tensors(embedding_id, body)

    @app.post(prefix + "/embeddings/{embedding_id}/finalize")
    def finalize(embedding_id: str, body: Any = Body(None), user: str = Depends(access)) -> dict[str, Any]:
        return store.embeddings.finalize_embedding(embedding_id, body)

    @app.delete(prefix + "/embeddings/{embedding_id}")
    def delete_embedding(embedding_id: str, force: bool = Query(False), user: str = Depends(access)) -> dict[str, Any]:
        return store.embeddings.delete_embedding(embedding_id, force=force)


    @app.post(prefix + "/similarity")
    def similarity(body: Any = Body(None), user: str = Depends(access)) -> dict[str, Any]:
        return store.search.similar(*_search_args(body))

    @app.post(prefix + "/labeling-sessions", status_code=201)
    def create_session(body: Any = Body(None), user: str = Depends(access)) -> dict[str, Any]:
        return store.search.create_labeling_session(*_search_args(body), user_name=user)

    @app.get(prefix + "/labeling-sessions/{session_id}")
    def get_session(session_id: str, user: str = Depends(access)) -> dict[str, Any]:
        return store.search.get_labeling_session(session_id)
