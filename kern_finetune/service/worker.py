"""The worker: the one thread that runs queued jobs, oldest first."""

from __future__ import annotations

import logging
import threading
import traceback
from pathlib import Path

from ..errors import KernFinetuneError
from .jobs import FAILED, SUCCEEDED, UP_TO_DATE, Job, JobStore, job_config
from .runner import JobContext, JobRunner, jsonable

__all__ = ["JobWorker"]

log = logging.getLogger(__name__)


class JobWorker:
    def __init__(self, store: JobStore, runner: JobRunner, data_dir: Path, *, poll_s: float = 1.0) -> None:
        self.store = store
        self.runner = runner
        self.data_dir = Path(data_dir)
        self.poll_s = poll_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="kern-finetune-worker", daemon=True)

    def start(self) -> None:
        """Start the thread."""
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the thread to stop after the current job (a job it leaves running is recovered at restart)."""
        self._stop.set()
        self.store.wake()  # the loop may be waiting for work
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
        log.info("job %s: sync of project %s started (attempt %d)", job.id, job.project_id, job.attempts)

        def progress(message: str) -> None:
            try:
                self.store.progress(job.id, str(message))
            except Exception:  # noqa: BLE001 - progress is best effort
                log.debug("progress update failed", exc_info=True)

        try:
            config = job_config(job.options)  # unattended: --mode auto gets the night's budget unless named
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
            result = jsonable(dict(raw)) if raw is not None else {}
            state = UP_TO_DATE if result.get("up_to_date") else SUCCEEDED
            self.store.finish(job.id, state, result=result)
            log.info("job %s: %s", job.id, state)
        except KernFinetuneError as exc:
            log.warning("job %s failed: %s", job.id, exc)
            self.store.finish(job.id, FAILED, error=f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # noqa: BLE001 - one bad job must not kill the worker
            log.error("job %s crashed: %s\n%s", job.id, exc, traceback.format_exc())
            self.store.finish(job.id, FAILED, error=f"internal error: {type(exc).__name__}: {exc}")
