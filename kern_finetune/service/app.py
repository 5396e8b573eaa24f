"""The service's HTTP API (FastAPI): the size limit, signature checks and the job endpoints."""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from ..web.body_limit import BodyLimit
from ..errors import ConfigError
from .jobs import FAILED, QUEUED, RUNNING, SUCCEEDED, UP_TO_DATE, JobStore, QueueFullError
from .signing import SIGNATURE_HEADER, SignatureError, verify_signature
from .trigger import validate_trigger
from .worker import JobWorker

__all__ = ["MAX_BODY_BYTES", "create_app"]

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024


def _error(status: int, error: str, detail: str) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status)


async def _authenticated_body(request: Request, secret: bytes) -> bytes | JSONResponse:
    """The raw body when the signature fits it, else the 401 answer."""
    body = await request.body()  # BodyLimit ends the request with 413 past max_body_bytes
    try:
        verify_signature(secret, body, request.headers.get(SIGNATURE_HEADER))
    except SignatureError as exc:
        log.warning("refused %s %s from %s: %s", request.method, request.url.path,
                    request.client.host if request.client else "?", exc)
        return _error(401, "unauthorized", str(exc))
    return body


def _trigger(store: JobStore, body: bytes) -> JSONResponse:
    """``POST /v1/jobs`` once the signature is checked: parse, validate, queue or join (a job doing the same
    sync; other settings queue after it, :meth:`~kern_finetune.service.jobs.JobStore.submit`)."""
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return _error(400, "bad_request", f"body is not JSON: {exc}")
    except RecursionError:
        return _error(400, "bad_request", "body is nested too deeply")
    try:
        project_id, options, force, min_new_labels = validate_trigger(payload)
    except ConfigError as exc:
        return _error(422, "invalid_trigger", str(exc))
    try:
        job, created = store.submit(project_id, options, force=force, min_new_labels=min_new_labels)
    except QueueFullError as exc:
        return _error(409, "conflict", str(exc))
    if created:
        log.info("job %s queued for project %s%s", job.id, project_id, f" after job {job.follows}" if job.follows else "")
    else:
        log.info("trigger for project %s joined its %s job %s", project_id, job.state, job.id)
    return JSONResponse(
        {"created": created, "job": job.to_public()},
        status_code=202 if created else 200,
        headers={"Location": f"/v1/jobs/{job.id}"},
    )


def _list_jobs(store: JobStore, request: Request) -> JSONResponse:
    """``GET /v1/jobs`` once the signature is checked."""
    q = request.query_params
    state = q.get("state")
    if state is not None and state not in (QUEUED, RUNNING, SUCCEEDED, UP_TO_DATE, FAILED):
        return _error(422, "invalid_query", f"unknown state {state!r}")
    try:
        limit = max(1, min(int(q.get("limit", "100")), 1000))
    except ValueError:
        return _error(422, "invalid_query", "limit must be an integer")
    jobs = store.list(project_id=q.get("project_id"), state=state, limit=limit)
    return JSONResponse({"jobs": [j.to_public() for j in jobs]})


def create_app(store: JobStore, secret: bytes, *, worker: JobWorker | None = None, max_body_bytes: int = MAX_BODY_BYTES
) -> FastAPI:
    """The FastAPI application (signature checks, size limit, job endpoints)."""
    app = FastAPI(title="kern-finetune triggers", docs_url=None, redoc_url=None, openapi_url=None)
    # the size limit is enforced while the body streams in, before the signature is checked
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "worker": "alive" if worker is None or worker.is_alive() else "dead"}

    @app.post("/v1/jobs")
    async def trigger(request: Request) -> JSONResponse:
        body = await _authenticated_body(request, secret)
        if isinstance(body, JSONResponse):
            return body
        # off the event loop: the first check of a run's options imports torch (seconds), and /healthz and
        # the job routes must keep answering meanwhile; JobStore opens a connection per call
        return await run_in_threadpool(_trigger, store, body)

    @app.get("/v1/jobs/{job_id}")
    async def get_job(job_id: str, request: Request) -> JSONResponse:
        body = await _authenticated_body(request, secret)
        if isinstance(body, JSONResponse):
            return body
        job = store.get(job_id)
        if job is None:
            return _error(404, "not_found", f"no job {job_id}")
        return JSONResponse({"job": job.to_public()})

    @app.get("/v1/jobs")
    async def list_jobs(request: Request) -> JSONResponse:
        body = await _authenticated_body(request, secret)
        return body if isinstance(body, JSONResponse) else _list_jobs(store, request)

    return app
