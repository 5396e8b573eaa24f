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
is checked: :class:`kern_finetune.body_limit.BodyLimit`), before anything is parsed. A signature
header that is not plain ASCII ``t=<digits>,v1=<hex>`` is a malformed signature (401).

Restarts: see :mod:`kern_finetune.jobs` (a job a killed service left running is re-run once, then
failed with the reason ``"interrupted by service restart"``).
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import hmac
import json
import logging
import os
import re
import socket
import stat
import threading
import time
import traceback
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from ._net import bind_socket
from .body_limit import BodyLimit
from .config import RunConfig
from .errors import ConfigError, KernFinetuneError
from .jobs import FAILED, QUEUED, RUNNING, SUCCEEDED, UP_TO_DATE, Job, JobStore

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

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Kern-Signature"
SECRET_ENV = "KERN_FINETUNE_WEBHOOK_SECRET"
TOLERANCE_S = 300
"""A signature's timestamp may be at most this many seconds in the past or in the future."""
MAX_BODY_BYTES = 64 * 1024
MIN_SECRET_BYTES = 16
_TIMESTAMP_RE = re.compile(r"[0-9]{1,12}", re.ASCII)
_MAX_HEADER_CHARS = 4096
_PROJECT_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_TRIGGER_KEYS = {"project_id", "options", "force", "min_new_labels"}
_SERVICE_OWNED_OPTIONS = {"cache_dir"}


# -- signatures ----------------------------------------------------------------------------------------


class SignatureError(KernFinetuneError):
    """A request's signature is missing, malformed, forged or stale."""


def _as_bytes(value: str | bytes) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


def _digest(secret: bytes, timestamp: int, body: bytes) -> str:
    return hmac.new(secret, str(timestamp).encode("ascii") + b"." + body, hashlib.sha256).hexdigest()


def sign(secret: str | bytes, body: str | bytes, timestamp: int | None = None) -> str:
    """The ``X-Kern-Signature`` value for ``body`` (the exact bytes sent; ``b""`` for a GET).

    >>> sign("0123456789abcdef", b'{"project_id": "p1"}', timestamp=1700000000)
    't=1700000000,v1=a8b1...'  # doctest: +SKIP
    """
    ts = int(time.time()) if timestamp is None else int(timestamp)
    return f"t={ts},v1={_digest(_as_bytes(secret), ts, _as_bytes(body))}"


def verify_signature(
    secret: str | bytes,
    body: bytes,
    header: str | None,
    *,
    now: float | None = None,
    tolerance_s: int = TOLERANCE_S,
) -> int:
    """Check an ``X-Kern-Signature`` header against ``body``; returns its timestamp.

    Several ``v1=`` entries are allowed (a sender rotating secrets); one must match. Raises
    :class:`SignatureError` with a short reason (never the expected value)."""
    if not header:
        raise SignatureError(f"missing {SIGNATURE_HEADER} header")
    if not isinstance(header, str) or not header.isascii() or len(header) > _MAX_HEADER_CHARS:
        raise SignatureError(f"malformed {SIGNATURE_HEADER} header")
    timestamp: int | None = None
    candidates: list[bytes] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            raise SignatureError(f"malformed {SIGNATURE_HEADER} header")
        if key == "t":
            if not _TIMESTAMP_RE.fullmatch(value):
                raise SignatureError("malformed timestamp in signature header")
            timestamp = int(value)
        elif key == "v1":
            candidates.append(value.strip().lower().encode("ascii"))
    if timestamp is None or not candidates:
        raise SignatureError(f"{SIGNATURE_HEADER} needs t=<unix seconds> and v1=<hex hmac>")
    now = time.time() if now is None else now
    if abs(now - timestamp) > tolerance_s:
        raise SignatureError(f"signature timestamp outside the allowed window of {tolerance_s} s (stale or clock skew)")
    expected = _digest(_as_bytes(secret), timestamp, body).encode("ascii")
    ok = False
    for candidate in candidates:  # compare against every candidate: no early exit
        ok |= hmac.compare_digest(expected, candidate)
    if not ok:
        raise SignatureError("signature does not match")
    return timestamp


def load_secret(secret_file: str | Path | None = None, *, environ: Mapping[str, str] | None = None) -> bytes:
    """The shared webhook secret: from ``secret_file`` (whitespace stripped) or ``$KERN_FINETUNE_WEBHOOK_SECRET``.

    Raises :class:`ConfigError` when neither is set or the secret is shorter than 16 bytes. Warns when the
    file is readable by group or others. Never logs the secret."""
    environ = os.environ if environ is None else environ
    if secret_file is not None:
        path = Path(secret_file).expanduser()
        try:
            raw = path.read_bytes()
            mode = path.stat().st_mode
        except OSError as exc:
            raise ConfigError(f"cannot read the secret file {path}: {exc.strerror}") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("secret file %s is accessible by group/others; chmod 600 it", path)
        secret = raw.strip()
        origin = f"secret file {path}"
    elif environ.get(SECRET_ENV):
        secret = environ[SECRET_ENV].strip().encode("utf-8")
        origin = f"${SECRET_ENV}"
    else:
        raise ConfigError(
            f"no webhook secret: pass --secret-file FILE or set ${SECRET_ENV} "
            "(create one with: openssl rand -hex 32 > webhook.secret && chmod 600 webhook.secret)"
        )
    if len(secret) < MIN_SECRET_BYTES:
        raise ConfigError(f"the webhook secret from {origin} is too short (at least {MIN_SECRET_BYTES} bytes)")
    return secret


# -- trigger validation --------------------------------------------------------------------------------


_FIELD_TYPES = {f.name: f.type for f in dataclasses.fields(RunConfig)}
_HINTS = typing.get_type_hints(RunConfig)


def _type_ok(value: Any, hint: Any) -> bool:
    """Whether a JSON value fits a RunConfig field type (bool is no number; a path is a string)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is list:
        # RunConfig.from_dict also accepts "a,b" for list[str]
        return isinstance(value, str) or (isinstance(value, list) and all(isinstance(v, str) for v in value))
    if isinstance(hint, type) and issubclass(hint, os.PathLike):
        return isinstance(value, str)
    return True


def _validate_trigger(payload: Any) -> tuple[str, dict[str, Any], bool, int]:
    """Check a decoded trigger body; raises :class:`ConfigError` with the reason."""
    if not isinstance(payload, dict):
        raise ConfigError("the body must be a JSON object")
    unknown = sorted(set(payload) - _TRIGGER_KEYS)
    if unknown:
        raise ConfigError(f"unknown field(s): {', '.join(unknown)}; known: {', '.join(sorted(_TRIGGER_KEYS))}")
    project_id = payload.get("project_id")
    if not isinstance(project_id, str) or not _PROJECT_ID_RE.match(project_id):
        raise ConfigError("project_id must be a string of 1-128 letters, digits, '_', '.', '-'")
    options = payload.get("options", {})
    if options is None:
        options = {}
    if not isinstance(options, dict):
        raise ConfigError("options must be a JSON object of RunConfig fields")
    owned = sorted(_SERVICE_OWNED_OPTIONS & set(options))
    if owned:
        raise ConfigError(f"option(s) {', '.join(owned)} are set by the service, not by a trigger")
    for name, value in options.items():
        if name in _HINTS and not _type_ok(value, _HINTS[name]):
            raise ConfigError(f"option {name} has the wrong type: expected {_FIELD_TYPES[name]}, got {value!r}")
    try:
        RunConfig.from_dict(options).validate()
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid options: {exc}") from None
    force = payload.get("force", False)
    if not isinstance(force, bool):
        raise ConfigError("force must be true or false")
    min_new_labels = payload.get("min_new_labels", 1)
    if not isinstance(min_new_labels, int) or isinstance(min_new_labels, bool) or min_new_labels < 0:
        raise ConfigError("min_new_labels must be an integer >= 0")
    return project_id, options, force, min_new_labels


# -- running jobs --------------------------------------------------------------------------------------


@dataclass
class JobContext:
    """What a job runner gets for one job."""

    job_id: str
    project_id: str
    config: RunConfig
    force: bool
    min_new_labels: int
    out_dir: Path
    """Where the project's runs live: ``<data-dir>/projects/<project_id>``."""
    progress: Callable[[str], None]
    """Report a stage / progress line; it shows in ``GET /v1/jobs/{id}``."""


JobRunner = Callable[[JobContext], "Mapping[str, Any] | None"]
"""Runs one job. Returns a JSON-able mapping: ``up_to_date`` (bool; the job ends ``up_to_date``),
``metrics`` (shown once done), ``timings`` and anything else (shown under ``result``). Raising ends
the job ``failed`` with the exception's message as reason."""


def _jsonable(value: Any) -> Any:
    """Best-effort conversion of a result object to JSON-able data."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):  # numpy scalars and (small) arrays
        if getattr(value, "size", 1) > 1000:
            return f"<array of shape {tuple(getattr(value, 'shape', ()))}>"
        try:
            return value.tolist()
        except Exception:  # noqa: BLE001
            return str(value)
    return str(value)


def default_runner(secrets_path: str | Path) -> JobRunner:
    """The production runner: log in with ``secrets_path`` (SDK-style secrets.json) and run
    :func:`kern_finetune.sync.sync_project` for the job's project."""
    secrets_path = Path(secrets_path).expanduser()

    def _run(ctx: JobContext) -> Mapping[str, Any]:
        from .refinery.api import RefineryClient  # imported lazily: heavy, and only the worker needs them
        from .sync import sync_project

        ctx.progress("logging in to the host")
        client = RefineryClient.from_secrets(secrets_path)
        result = sync_project(
            client,
            ctx.project_id,
            ctx.config,
            out_dir=ctx.out_dir,
            force=ctx.force,
            min_new_labels=ctx.min_new_labels,
            progress=ctx.progress,
        )
        return _sync_result_to_dict(result)

    return _run


def _sync_result_to_dict(result: Any) -> dict[str, Any]:
    """Map a :class:`kern_finetune.sync.SyncResult` onto the runner's result mapping.

    ``up_to_date`` from its status; the run's metrics without the private plot data (keys starting
    with ``_``); never the vectors."""
    status = str(getattr(result, "status", ""))
    out: dict[str, Any] = {
        "status": status,
        "up_to_date": status.replace("-", "_") == "up_to_date",
        "message": getattr(result, "message", None),
        "changed_labels": getattr(result, "changed_labels", None),
        "n_labels": getattr(result, "n_labels", None),
        "fingerprint": getattr(result, "fingerprint", None),
        "previous_fingerprint": getattr(result, "previous_fingerprint", None),
    }
    run = getattr(result, "run", None)
    if run is not None:
        metrics = getattr(run, "metrics", None) or {}
        out["metrics"] = _jsonable({k: v for k, v in metrics.items() if not str(k).startswith("_")})
        out["embedding_name"] = getattr(run, "embedding_name", None)
        out["out_dir"] = str(getattr(run, "out_dir", ""))
        seconds = metrics.get("seconds")
        if isinstance(seconds, Mapping):
            out["timings"] = _jsonable(seconds)
    push = getattr(result, "push", None)
    if push is not None:
        out["push"] = _jsonable(push)
    return out


class JobWorker:
    """The one thread that runs queued jobs, oldest first."""

    def __init__(self, store: JobStore, runner: JobRunner, data_dir: Path, *, poll_s: float = 1.0) -> None:
        self.store = store
        self.runner = runner
        self.data_dir = Path(data_dir)
        self.poll_s = poll_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="kern-finetune-worker", daemon=True)
        self.current_job: str | None = None

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the thread to stop after the current job (a job it leaves running is recovered at restart)."""
        self._stop.set()
        with self.store._wakeup:  # noqa: SLF001 - wake the waiting loop
            self.store._wakeup.notify_all()  # noqa: SLF001
        self._thread.join(timeout)

    def is_alive(self) -> bool:
        """Whether the thread runs."""
        return self._thread.is_alive()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                job = self.store.claim_next()
            except Exception:  # noqa: BLE001 - a locked/broken DB must not kill the worker
                log.exception("cannot read the job queue")
                job = None
            if job is None:
                self.store.wait_for_work(self.poll_s)
                continue
            self._run(job)

    def _run(self, job: Job) -> None:
        self.current_job = job.id
        log.info("job %s: sync of project %s started (attempt %d)", job.id, job.project_id, job.attempts)

        def progress(message: str) -> None:
            try:
                self.store.progress(job.id, str(message))
            except Exception:  # noqa: BLE001 - progress is best effort
                log.debug("progress update failed", exc_info=True)

        try:
            config = RunConfig.from_dict(job.options).validate()
            ctx = JobContext(
                job_id=job.id,
                project_id=job.project_id,
                config=config,
                force=job.force,
                min_new_labels=job.min_new_labels,
                out_dir=self.data_dir / "projects" / job.project_id,
                progress=progress,
            )
            raw = self.runner(ctx)
            result = _jsonable(dict(raw)) if raw is not None else {}
            state = UP_TO_DATE if result.get("up_to_date") else SUCCEEDED
            self.store.finish(job.id, state, result=result)
            log.info("job %s: %s", job.id, state)
        except KernFinetuneError as exc:
            log.warning("job %s failed: %s", job.id, exc)
            self.store.finish(job.id, FAILED, error=f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # noqa: BLE001 - one bad job must not kill the worker
            log.error("job %s crashed: %s\n%s", job.id, exc, traceback.format_exc())
            self.store.finish(job.id, FAILED, error=f"internal error: {type(exc).__name__}: {exc}")
        finally:
            self.current_job = None


# -- HTTP ----------------------------------------------------------------------------------------------


def create_app(store: JobStore, secret: bytes, *, worker: JobWorker | None = None, max_body_bytes: int = MAX_BODY_BYTES
) -> FastAPI:
    """The FastAPI application (signature checks, size limit, job endpoints)."""
    app = FastAPI(title="kern-finetune triggers", docs_url=None, redoc_url=None, openapi_url=None)

    def _error(status: int, error: str, detail: str) -> JSONResponse:
        return JSONResponse({"error": error, "detail": detail}, status_code=status)

    # the size limit is enforced while the body streams in, before the signature is checked
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes, render=lambda status, detail: {
        "error": "payload_too_large" if status == 413 else "bad_request", "detail": detail})

    async def _read_body(request: Request) -> bytes:
        return await request.body()  # BodyLimit ends the request with 413 past max_body_bytes

    async def _authenticated_body(request: Request) -> bytes | JSONResponse:
        body = await _read_body(request)
        try:
            verify_signature(secret, body, request.headers.get(SIGNATURE_HEADER))
        except SignatureError as exc:
            log.warning("refused %s %s from %s: %s", request.method, request.url.path,
                        request.client.host if request.client else "?", exc)
            return _error(401, "unauthorized", str(exc))
        return body

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "worker": "alive" if worker is None or worker.is_alive() else "dead"}

    @app.post("/v1/jobs")
    async def trigger(request: Request) -> JSONResponse:
        body = await _authenticated_body(request)
        if isinstance(body, JSONResponse):
            return body
        try:
            payload = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return _error(400, "bad_request", f"body is not JSON: {exc}")
        except RecursionError:
            return _error(400, "bad_request", "body is nested too deeply")
        try:
            project_id, options, force, min_new_labels = _validate_trigger(payload)
        except ConfigError as exc:
            return _error(422, "invalid_trigger", str(exc))
        job, created = store.submit(project_id, options, force=force, min_new_labels=min_new_labels)
        if created:
            log.info("job %s queued for project %s", job.id, project_id)
        else:
            log.info("trigger for project %s joined its %s job %s", project_id, job.state, job.id)
        return JSONResponse(
            {"created": created, "job": job.to_public()},
            status_code=202 if created else 200,
            headers={"Location": f"/v1/jobs/{job.id}"},
        )

    @app.get("/v1/jobs/{job_id}")
    async def get_job(job_id: str, request: Request) -> JSONResponse:
        body = await _authenticated_body(request)
        if isinstance(body, JSONResponse):
            return body
        job = store.get(job_id)
        if job is None:
            return _error(404, "not_found", f"no job {job_id}")
        return JSONResponse({"job": job.to_public()})

    @app.get("/v1/jobs")
    async def list_jobs(request: Request) -> JSONResponse:
        body = await _authenticated_body(request)
        if isinstance(body, JSONResponse):
            return body
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

    return app


# -- processes -----------------------------------------------------------------------------------------


class _DataDirLock:
    """An exclusive ``flock`` on ``<data-dir>/service.lock``: one service per data dir (freed by the OS
    when the process dies, however it dies)."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "service.lock"
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise ConfigError(f"another kern-finetune serve uses the data dir {self.path.parent}") from None
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


def _bind(host: str, port: int) -> socket.socket:
    sock = bind_socket(host, port)
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


@dataclass
class RunningService:
    """A started service: its URL, store and worker; :meth:`stop` ends it."""

    url: str
    store: JobStore
    worker: JobWorker
    _server: Any
    _thread: threading.Thread | None
    _lock: _DataDirLock
    _sock: socket.socket

    def stop(self) -> None:
        """Stop serving and the worker (a running job is left to the restart recovery)."""
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(10)
        self.worker.stop()
        self._sock.close()
        self._lock.release()

    def __enter__(self) -> RunningService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _prepare(
    data_dir: str | Path, secret: bytes, runner: JobRunner, host: str, port: int, log_level: str
) -> tuple[RunningService, Callable[[], None]]:
    import uvicorn

    data_dir = Path(data_dir).expanduser()
    data_dir.mkdir(parents=True, exist_ok=True)
    lock = _DataDirLock(data_dir)
    lock.acquire()
    try:
        store = JobStore(data_dir / "jobs.sqlite3")
        for job in store.recover():
            if job.state == QUEUED:
                log.warning("job %s (project %s) was interrupted by a restart: re-queued", job.id, job.project_id)
            else:
                log.warning("job %s (project %s) failed: %s", job.id, job.project_id, job.error)
        worker = JobWorker(store, runner, data_dir)
        app = create_app(store, secret, worker=worker)
        sock = _bind(host, port)
    except BaseException:
        lock.release()
        raise
    actual_host, actual_port = sock.getsockname()[:2]
    url = f"http://{'[' + actual_host + ']' if ':' in actual_host else actual_host}:{actual_port}"
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, lifespan="off", access_log=False))
    service = RunningService(url, store, worker, server, None, lock, sock)
    (data_dir / "service.json").write_text(json.dumps({"url": url, "pid": os.getpid()}) + "\n")
    worker.start()
    return service, lambda: server.run(sockets=[sock])


def serve_in_thread(
    data_dir: str | Path,
    secret: str | bytes,
    runner: JobRunner,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    log_level: str = "warning",
) -> RunningService:
    """Start the service in a background thread (``port=0``: any free port; see ``.url``)."""
    service, run = _prepare(data_dir, _as_bytes(secret), runner, host, port, log_level)
    thread = threading.Thread(target=run, name="kern-finetune-service", daemon=True)
    service._thread = thread  # noqa: SLF001
    thread.start()
    deadline = time.time() + 30
    while not service._server.started:  # noqa: SLF001
        if not thread.is_alive() or time.time() > deadline:
            service.stop()
            raise ConfigError(f"the trigger service on {service.url} did not start")
        time.sleep(0.02)
    return service


def run_service(
    data_dir: str | Path,
    secret: bytes,
    runner: JobRunner,
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    log_level: str = "info",
) -> None:
    """Serve in the foreground until SIGINT/SIGTERM."""
    service, run = _prepare(data_dir, secret, runner, host, port, log_level)
    print(f"kern-finetune serve: listening on {service.url} (data dir {Path(data_dir).expanduser()})", flush=True)
    try:
        run()
    finally:
        service.worker.stop(timeout=1.0)
        service._sock.close()  # noqa: SLF001
        service._lock.release()  # noqa: SLF001
