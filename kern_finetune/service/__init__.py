"""The trigger service: a signed webhook that queues syncs, one worker that runs them (API, signature, job
coalescing and restarts: docs/triggers.md).

``kern-finetune serve`` runs :func:`run_service`; tests and embedders use :func:`serve_in_thread`.
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

