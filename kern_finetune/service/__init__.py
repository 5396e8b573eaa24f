"""The trigger service: a signed webhook that queues syncs, one worker that runs them.

``kern-finetune serve`` runs :func:`run_service`; tests and embedders use :func:`serve_in_thread`.

HTTP API (JSON everywhere)::

    POST /v1/jobs        {"project_id": "...", "options": {RunConfig fields}, "force": false, "min_new_labels": 1}
                         -> 202 {"created": true, "job": {...}}   a new job was queued
                         -> 200 {"created": false, "job": {...}}  the project's queued/running job
    GET  /v1/jobs/{id}   -> 200 {"job": {...}}   state, stage, progress, timings, metrics | error
    GET  /v1/jobs        -> 200 {"jobs": [...]}  newest first (?project_id=, ?state=, ?limit=)
    GET  /healthz        -> 200 {"status": "ok"} (unauthenticated, says nothing about jobs)

Authentication: every ``/v1`` request (GETs too, signed over their empty body: job metrics and options
are project data) carries ``X-Kern-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>.<raw
body>")>``. Built by :func:`sign`, checked by :func:`verify_signature` with :func:`hmac.compare_digest`;
timestamps more than :data:`TOLERANCE_S` seconds away from the service's clock are refused. A replay of
a captured request inside that window is *not* refused: triggering is idempotent (a duplicate trigger
returns the active job, an unchanged project syncs as ``up_to_date``). Bodies are read as raw bytes,
at most :data:`MAX_BODY_BYTES` (else 413, counted while the body streams in, before the signature
is checked: :class:`kern_finetune.web.body_limit.BodyLimit`), before anything is parsed. A signature
header that is not plain ASCII ``t=<digits>,v1=<hex>`` is a malformed signature (401).

Restarts: see :mod:`kern_finetune.service.jobs` (a job a killed service left running is re-run once, then
failed with the reason ``"interrupted by service restart"``).

Modules: :mod:`.signing` (the signature and the secret), :mod:`.trigger` (a trigger body's checks),
:mod:`.runner` (what runs one job), :mod:`.worker` (the thread running queued jobs), :mod:`.app` (the HTTP
API), :mod:`.server` (one service per data dir, in a thread or the foreground).
"""

from __future__ import annotations

from .app import MAX_BODY_BYTES, create_app
from .runner import JobContext, JobRunner, default_runner
from .server import RunningService, run_service, serve_in_thread
from .signing import SECRET_ENV, SIGNATURE_HEADER, TOLERANCE_S, SignatureError, load_secret, sign, verify_signature
from .worker import JobWorker

__all__ = [
    "SIGNATURE_HEADER",
    "SECRET_ENV",
    "TOLERANCE_S",
    "MAX_BODY_BYTES",
    "SignatureError",
    "sign",
    "verify_signature",
    "load_secret",
    "JobContext",
    "JobRunner",
    "default_runner",
    "JobWorker",
    "create_app",
    "RunningService",
    "serve_in_thread",
    "run_service",
]

