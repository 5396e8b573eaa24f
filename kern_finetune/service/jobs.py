"""The webhook service's job store: one SQLite file, safe across threads and process restarts.

A job is one sync of one project: ``queued -> running -> succeeded | up_to_date | failed``. A project's jobs
run one at a time, in order; a trigger joins an active job only when it asks for the same sync (the options
as the worker would run them, :func:`job_config`; ``force``; ``min_new_labels``), else it queues after them
(:meth:`JobStore.submit`). Every state change is one transaction, so a killed service leaves at worst a job
``running``, which :meth:`JobStore.recover` re-queues or fails. Why, and what callers see: docs/triggers.md.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import SYNC_TIME_BUDGET, RunConfig
from ..errors import ConfigError, KernFinetuneError
from ..web.serving import immediate_transaction, is_damaged, set_aside

__all__ = [
    "Job",
    "JobStore",
    "QUEUED",
    "RUNNING",
    "SUCCEEDED",
    "UP_TO_DATE",
    "FAILED",
    "FINAL_STATES",
    "MAX_ATTEMPTS",
    "INTERRUPTED_REASON",
    "MAX_QUEUED_PER_PROJECT",
    "QueueFullError",
    "job_config",
]

QUEUED = "queued"
RUNNING = "running"
SUCCEEDED = "succeeded"
UP_TO_DATE = "up_to_date"
FAILED = "failed"
FINAL_STATES = (SUCCEEDED, UP_TO_DATE, FAILED)

MAX_ATTEMPTS = 2
"""How many times a job may start; a job interrupted by a restart on its last attempt is failed."""
INTERRUPTED_REASON = "interrupted by service restart"
MAX_QUEUED_PER_PROJECT = 8
"""Jobs of one project that may wait at once (each with settings of its own)."""
_MAX_LOG_LINES = 50

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    project_id TEXT NOT NULL,
    options TEXT NOT NULL,
    force INTEGER NOT NULL DEFAULT 0,
    min_new_labels INTEGER NOT NULL DEFAULT 1,
    state TEXT NOT NULL,
    stage TEXT,
    log TEXT NOT NULL DEFAULT '[]',
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    restarts INTEGER NOT NULL DEFAULT 0,
    rerun_requested INTEGER NOT NULL DEFAULT 0,
    followed_by TEXT,
    follows TEXT,
    result TEXT,
    error TEXT
);
CREATE INDEX IF NOT EXISTS jobs_project_state ON jobs (project_id, state);
CREATE INDEX IF NOT EXISTS jobs_state_created ON jobs (state, created_at);
"""


class QueueFullError(KernFinetuneError):
    """A trigger with settings of its own found :data:`MAX_QUEUED_PER_PROJECT` jobs of its project waiting."""


def job_config(options: dict[str, Any]) -> RunConfig:
    """The settings a job with these options runs with: unattended, ``--mode auto`` gets
    :data:`~kern_finetune.config.SYNC_TIME_BUDGET` unless the options name a ``time_budget``."""
    return RunConfig.from_options({"time_budget": SYNC_TIME_BUDGET, **options})


def _settings(options: dict[str, Any], force: bool, min_new_labels: int) -> tuple[str, bool, int]:
    """What makes two triggers the same sync (options as the worker runs them)."""
    try:
        resolved: Any = job_config(options).to_dict()
    except ConfigError:  # options the trigger check would refuse: compared as given
        resolved = options
    return json.dumps(resolved, sort_keys=True, default=str), bool(force), int(min_new_labels)


@dataclass
class Job:
    """One row of the store, as the service reports it."""

    id: str
    project_id: str
    options: dict[str, Any]
    state: str
    created_at: float
    force: bool = False
    min_new_labels: int = 1
    stage: str | None = None
    log: list[dict[str, Any]] = field(default_factory=list)
    started_at: float | None = None
    finished_at: float | None = None
    attempts: int = 0
    restarts: int = 0
    rerun_requested: bool = False
    followed_by: str | None = None
    follows: str | None = None
    result: dict[str, Any] | None = None
    error: str | None = None

    def to_public(self, *, now: float | None = None) -> dict[str, Any]:
        """The JSON the service answers with (timings in seconds; metrics only once finished)."""
        now = time.time() if now is None else now
        started, finished = self.started_at, self.finished_at
        timings: dict[str, Any] = {
            "created_at": self.created_at,
            "started_at": started,
            "finished_at": finished,
            "queued_s": round((started or (finished or now)) - self.created_at, 3),
            "run_s": None if started is None else round((finished or now) - started, 3),
        }
        if self.result and isinstance(self.result.get("timings"), dict):
            timings["sync"] = self.result["timings"]
        body: dict[str, Any] = {
            "id": self.id,
            "project_id": self.project_id,
            "state": self.state,
            "stage": self.stage,
            "progress": self.log[-10:],
            "options": self.options,
            "force": self.force,
            "min_new_labels": self.min_new_labels,
            "timings": timings,
            "attempts": self.attempts,
            "restarts": self.restarts,
            "rerun_requested": self.rerun_requested,
            "follows": self.follows,
            "followed_by": self.followed_by,
        }
        if self.state in (SUCCEEDED, UP_TO_DATE):
            body["metrics"] = (self.result or {}).get("metrics")
            body["result"] = {k: v for k, v in (self.result or {}).items() if k not in ("metrics", "timings")}
        if self.state == FAILED:
            body["error"] = self.error
        return body


def _row_to_job(row: sqlite3.Row) -> Job:
    data = dict(row)  # the columns are Job's fields
    data.update(options=json.loads(data["options"]), log=json.loads(data["log"] or "[]"), force=bool(data["force"]),
                rerun_requested=bool(data["rerun_requested"]),
                result=json.loads(data["result"]) if data["result"] else None)
    return Job(**data)


class JobStore:
    """Jobs in ``<data_dir>/jobs.sqlite3``. Every method opens its own short connection."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._wakeup = threading.Condition()
        try:
            self._create()
        except sqlite3.DatabaseError as exc:
            if not is_damaged(exc):
                raise ConfigError(f"cannot use the job store {self.path}: {exc}; free disk space or make it writable") from None
            set_aside(self.path, exc)  # the jobs it held are lost; the next triggers queue afresh
            self._create()

    def _create(self) -> None:
        with self._connect() as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(_SCHEMA)

    # -- plumbing ------------------------------------------------------------------------------------

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        conn.row_factory = sqlite3.Row
        try:
            yield conn
        finally:
            conn.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._connect() as conn, immediate_transaction(conn):
            yield conn

    def wake(self) -> None:
        """Wake every thread blocked in :meth:`wait_for_work` (a new job, or a worker asked to stop)."""
        with self._wakeup:
            self._wakeup.notify_all()

    @staticmethod
    def _insert(
        conn: sqlite3.Connection,
        project_id: str,
        options: dict[str, Any],
        force: bool,
        min_new_labels: int,
        follows: str | None = None,
    ) -> str:
        job_id = uuid.uuid4().hex
        conn.execute(
            "INSERT INTO jobs (id, project_id, options, force, min_new_labels, state, stage, created_at, follows)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (job_id, project_id, json.dumps(options), int(force), min_new_labels, QUEUED, "queued", time.time(), follows),
        )
        return job_id

    # -- API -----------------------------------------------------------------------------------------

    def submit(
        self, project_id: str, options: dict[str, Any], *, force: bool = False, min_new_labels: int = 1
    ) -> tuple[Job, bool]:
        """Queue a sync of ``project_id``, or return the project's active job that does the same sync.

        Returns ``(job, created)``. A queued job with the same settings is preferred; a running one is marked
        ``rerun_requested`` (:meth:`finish` then queues one follow-up, so labels that came after it read the
        export are not lost). Other settings queue a new job after the active ones (``follows``), or raise
        :class:`QueueFullError` when :data:`MAX_QUEUED_PER_PROJECT` of the project's jobs already wait."""
        wanted = _settings(options, force, min_new_labels)
        with self._transaction() as conn:
            active = conn.execute(
                "SELECT id, state, options, force, min_new_labels FROM jobs WHERE project_id = ? AND state IN (?, ?)"
                " ORDER BY created_at",
                (project_id, QUEUED, RUNNING),
            ).fetchall()
            same = [r for r in active
                    if _settings(json.loads(r["options"]), bool(r["force"]), int(r["min_new_labels"])) == wanted]
            queued = [r for r in active if r["state"] == QUEUED]
            join = next((r for r in same if r["state"] == QUEUED), None) or next(iter(same), None)
            if join is not None:
                if join["state"] == RUNNING:
                    conn.execute("UPDATE jobs SET rerun_requested = 1 WHERE id = ?", (join["id"],))
                job_id, created = join["id"], False
            elif len(queued) >= MAX_QUEUED_PER_PROJECT:
                raise QueueFullError(
                    f"project {project_id} already has {len(queued)} queued jobs with other settings; trigger again "
                    f"once one has started (GET /v1/jobs?project_id={project_id}&state=queued)")
            else:
                follows = active[-1]["id"] if active else None
                job_id = self._insert(conn, project_id, options, force, min_new_labels, follows=follows)
                created = True
        if created:
            self.wake()
        job = self.get(job_id)
        assert job is not None
        return job, created

    def get(self, job_id: str) -> Job | None:
        """The job with this id, or None."""
        with self._connect() as conn:
            row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else _row_to_job(row)

    def list(self, *, project_id: str | None = None, state: str | None = None, limit: int = 100) -> list[Job]:
        """Jobs, newest first, optionally filtered."""
        sql, args = "SELECT * FROM jobs WHERE 1=1", []
        if project_id is not None:
            sql, args = sql + " AND project_id = ?", [*args, project_id]
        if state is not None:
            sql, args = sql + " AND state = ?", [*args, state]
        sql += " ORDER BY created_at DESC LIMIT ?"
        with self._connect() as conn:
            rows = conn.execute(sql, (*args, limit)).fetchall()
        return [_row_to_job(r) for r in rows]

    def count(self, *states: str) -> int:
        """How many jobs are in any of ``states`` (all jobs when none given)."""
        with self._connect() as conn:
            if not states:
                return conn.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]
            marks = ",".join("?" * len(states))
            return conn.execute(f"SELECT COUNT(*) FROM jobs WHERE state IN ({marks})", states).fetchone()[0]

    def claim_next(self) -> Job | None:
        """Move the oldest queued job to ``running`` and return it (None when the queue is empty); a project
        with a running job waits, so that its jobs run one at a time, in order."""
        with self._transaction() as conn:
            row = conn.execute(
                "SELECT id FROM jobs WHERE state = ? AND project_id NOT IN (SELECT project_id FROM jobs WHERE state = ?)"
                " ORDER BY created_at LIMIT 1", (QUEUED, RUNNING),
            ).fetchone()
            if row is None:
                return None
            conn.execute(
                "UPDATE jobs SET state = ?, stage = 'starting', started_at = ?, finished_at = NULL,"
                " attempts = attempts + 1 WHERE id = ?",
                (RUNNING, time.time(), row["id"]),
            )
        return self.get(row["id"])

    def wait_for_work(self, timeout: float) -> None:
        """Block until a job is submitted or ``timeout`` seconds pass."""
        with self._wakeup:
            self._wakeup.wait(timeout)

    def progress(self, job_id: str, message: str) -> None:
        """Record a progress message: it joins the job's (bounded) log and becomes its stage."""
        with self._transaction() as conn:
            self._append_log(conn, job_id, message)

    @staticmethod
    def _append_log(conn: sqlite3.Connection, job_id: str, message: str, *, stage: bool = True) -> None:
        message = str(message).strip()[:500]
        row = conn.execute("SELECT log FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            return
        log = json.loads(row["log"] or "[]")
        log.append({"t": round(time.time(), 3), "message": message})
        log_json = json.dumps(log[-_MAX_LOG_LINES:])
        if stage:
            conn.execute("UPDATE jobs SET stage = ?, log = ? WHERE id = ?", (message, log_json, job_id))
        else:
            conn.execute("UPDATE jobs SET log = ? WHERE id = ?", (log_json, job_id))

    def finish(
        self, job_id: str, state: str, *, result: dict[str, Any] | None = None, error: str | None = None
    ) -> Job:
        """End a running job in ``state``; queue its follow-up when a trigger came in while it ran."""
        if state not in FINAL_STATES:
            raise ValueError(f"not a final state: {state!r}")
        follow_up = None
        with self._transaction() as conn:
            row = conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise KeyError(job_id)
            conn.execute(
                "UPDATE jobs SET state = ?, stage = ?, finished_at = ?, result = ?, error = ? WHERE id = ?",
                (state, state, time.time(), json.dumps(result, default=str) if result is not None else None,
                 error, job_id),
            )
            if row["rerun_requested"]:
                follow_up = self._insert(
                    conn, row["project_id"], json.loads(row["options"]), bool(row["force"]),
                    int(row["min_new_labels"]), follows=job_id,
                )
                conn.execute("UPDATE jobs SET followed_by = ? WHERE id = ?", (follow_up, job_id))
        if follow_up:
            self.wake()
        job = self.get(job_id)
        assert job is not None
        return job

    def recover(self) -> list[Job]:
        """At start-up: re-queue jobs a killed service left ``running`` (or fail them after
        :data:`MAX_ATTEMPTS` starts). Returns the jobs it touched."""
        touched = []
        with self._transaction() as conn:
            rows = conn.execute("SELECT id, attempts FROM jobs WHERE state = ?", (RUNNING,)).fetchall()
            now = time.time()
            for row in rows:
                touched.append(row["id"])
                self._append_log(conn, row["id"], INTERRUPTED_REASON, stage=False)
                if row["attempts"] >= MAX_ATTEMPTS:
                    conn.execute(
                        "UPDATE jobs SET state = ?, stage = ?, finished_at = ?, restarts = restarts + 1,"
                        " error = ? WHERE id = ?",
                        (FAILED, FAILED, now,
                         f"{INTERRUPTED_REASON} ({row['attempts']} times); not retried again", row["id"]),
                    )
                else:
                    conn.execute(
                        "UPDATE jobs SET state = ?, stage = ?, restarts = restarts + 1 WHERE id = ?",
                        (QUEUED, f"re-queued: {INTERRUPTED_REASON}", row["id"]),
                    )
        if touched:
            self.wake()
        return [j for j in (self.get(i) for i in touched) if j is not None]
