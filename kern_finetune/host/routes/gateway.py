"""refinery-gateway's attribute and embedding routes behind the browser session (the model door,
``docs/model-door.md``), at ``/refinery-gateway/api/v1/...`` (the gateway mounts its app under ``/api``).

Each route depends on ``check_project_access_dep`` (``controller/auth/manager.py``): a project id that is not
36 characters or not of the user's organisation answers the gateway's plain ``500 An error occurred``.
"""

from __future__ import annotations

import secrets
from typing import Any

from fastapi import Body, FastAPI
from fastapi.responses import PlainTextResponse, Response

from ..api_errors import GatewayError
from ..store import HostStore
from .common import GATEWAY_PREFIX, AsciiJSONResponse, strict_str_errors

__all__ = ["add_gateway_routes", "GATEWAY_API", "generic_failure"]

GATEWAY_API = GATEWAY_PREFIX + "api/v1"


def generic_failure() -> Response:
    """The gateway's ``GENERIC_FAILURE_RESPONSE`` (``fast_api/routes/client_response.py``)."""
    return PlainTextResponse("An error occurred", status_code=500)


def _org_project(store: HostStore, project_id: str) -> bool:
    """``check_project_access_dep``: 36 characters and a project of the user's organisation."""
    return len(project_id) == 36 and secrets.compare_digest(project_id.encode(), store.project_id.encode())


def add_gateway_routes(app: FastAPI, store: HostStore) -> None:
    """The attribute list and the embedding routes of the model door."""

    @app.get(GATEWAY_API + "/attribute/{project_id}/all-attributes")
    def all_attributes(project_id: str) -> Response:
        if not _org_project(store, project_id):
            return generic_failure()
        project = store.project
        items = [{"id": project.attribute_id(a["name"]), "name": a["name"], "dataType": a.get("data_type"),
                  "isPrimaryKey": bool(a.get("is_primary_key")), "relativePosition": pos, "userCreated": False,
                  "sourceCode": None, "state": "UPLOADED", "logs": None, "visibility": "DO_NOT_HIDE"}
                 for pos, a in enumerate(project.meta["attributes"], start=1)]
        return AsciiJSONResponse(content={"data": {"attributesByProjectId": items}})

    @app.get(GATEWAY_API + "/embedding/{project_id}/embeddings-by-project")
    def embeddings_by_project(project_id: str) -> Response:
        if not _org_project(store, project_id):
            return generic_failure()
        edges = [{"node": node} for node in store.models.nodes()]
        return AsciiJSONResponse(content={"data": {"projectByProjectId": {"id": project_id,
                                                                          "embeddings": {"edges": edges}}}})

    @app.post(GATEWAY_API + "/embedding/{project_id}/create-embedding")
    def create_embedding(project_id: str, body: Any = Body(None)) -> Response:
        if not _org_project(store, project_id):
            return generic_failure()
        errors = strict_str_errors(body, ("attribute_id", "config"))  # CreateEmbeddingBody (fast_api/models.py)
        if errors:
            return AsciiJSONResponse(status_code=422, content={"detail": errors})
        try:
            store.models.queue_embedding(body["attribute_id"], body["config"])
        except GatewayError:
            return generic_failure()
        return AsciiJSONResponse(content={"data": {"createEmbedding": {"ok": True}}})

    @app.delete(GATEWAY_API + "/embedding/{project_id}/{embedding_id}/delete-embedding")
    def delete_embedding(project_id: str, embedding_id: str) -> Response:
        if not _org_project(store, project_id):
            return generic_failure()
        store.models.delete(embedding_id)
        return AsciiJSONResponse(content={"data": {"deleteEmbedding": {"ok": True}}})
