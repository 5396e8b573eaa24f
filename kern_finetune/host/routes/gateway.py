"""refinery-gateway's attribute and embedding routes, as the browser session reaches them (the model door).

``/refinery-gateway/api/v1/...``: oathkeeper strips ``/refinery-gateway/`` and the gateway mounts its FastAPI
app under ``/api`` (refinery-gateway ``app.py``, ``route_prefix.py``). The gate in :mod:`kern_finetune.host.app`
lets only a valid ``ory_kratos_session`` cookie through. Each route depends on ``check_project_access_dep``
(``controller/auth/manager.py``): a project id that is not 36 characters, or not a project of the user's
organisation, raises inside the gateway and ``middleware/database_session.py`` answers ``500`` with the
plain text ``An error occurred``; this host's user's organisation holds the one project it serves.

- ``GET .../attribute/{project}/all-attributes`` (``fast_api/routes/attribute.py``);
- ``GET .../embedding/{project}/embeddings-by-project``, ``POST .../create-embedding``,
  ``DELETE .../{embedding}/delete-embedding`` (``fast_api/routes/embedding.py``), computed by
  :mod:`kern_finetune.host.model_embeddings`.
"""

from __future__ import annotations

import secrets
from typing import Any

from fastapi import Body, FastAPI
from fastapi.responses import PlainTextResponse, Response

from ..api_errors import GatewayError
from ..store import HostStore
from ..values import is_text
from .common import GATEWAY_PREFIX, AsciiJSONResponse

__all__ = ["add_gateway_routes", "GATEWAY_API", "generic_failure"]

GATEWAY_API = GATEWAY_PREFIX + "api/v1"


def generic_failure() -> Response:
    """The gateway's ``GENERIC_FAILURE_RESPONSE`` (``fast_api/routes/client_response.py``)."""
    return PlainTextResponse("An error occurred", status_code=500)


def _org_project(store: HostStore, project_id: str) -> bool:
    """``check_project_access_dep``: 36 characters and a project of the user's organisation."""
    return len(project_id) == 36 and secrets.compare_digest(project_id.encode(), store.project_id.encode())


def _body_errors(body: Any) -> list[dict[str, Any]]:
    """``CreateEmbeddingBody`` (``fast_api/models.py``): ``attribute_id`` and ``config``, both ``StrictStr``."""
    if not isinstance(body, dict):
        return [{"loc": ["body"], "msg": "value is not a valid dict", "type": "type_error.dict"}]
    errors = []
    for key in ("attribute_id", "config"):
        if key not in body:
            errors.append({"loc": ["body", key], "msg": "field required", "type": "value_error.missing"})
        elif not isinstance(body[key], str) or not is_text(body[key]):
            errors.append({"loc": ["body", key], "msg": "str type expected", "type": "type_error.str"})
    return errors


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
        errors = _body_errors(body)
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
