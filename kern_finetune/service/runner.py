"""Running one job: what a runner gets (:class:`JobContext`), the production runner (:func:`default_runner`),
and how a runner's result becomes JSON (:func:`jsonable`)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import RunConfig

if TYPE_CHECKING:
    from ..refinery.model_door import ModelDoorTarget
    from ..sync import SyncResult

__all__ = ["JobContext", "JobRunner", "default_runner", "jsonable"]


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


def jsonable(value: Any) -> Any:
    """Best-effort conversion of a result object to strict JSON-able data (non-finite numbers become null)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None  # NaN / inf (a figure with nothing to judge): strict JSON has no such number
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):  # numpy scalars and (small) arrays
        if getattr(value, "size", 1) > 1000:
            return f"<array of shape {tuple(getattr(value, 'shape', ()))}>"
        try:
            return jsonable(value.tolist())
        except Exception:  # noqa: BLE001
            return str(value)
    return str(value)


def default_runner(secrets_path: str | Path, model_target: ModelDoorTarget | None = None) -> JobRunner:
    """The production runner: log in with ``secrets_path`` (SDK-style secrets.json) and run
    :func:`kern_finetune.sync.sync_project` for the job's project through the model door (``model_target``: the
    embedder's models volume, so that refinery computes the new embedding; None: the job writes the folder)."""
    secrets_path = Path(secrets_path).expanduser()

    def _run(ctx: JobContext) -> Mapping[str, Any]:
        from ..refinery.api import RefineryClient  # imported lazily: heavy, and only the worker needs them
        from ..sync import sync_project

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
            door="model",
            model_target=model_target,
        )
        return _sync_result_to_dict(result)

    return _run


def _sync_result_to_dict(result: SyncResult) -> dict[str, Any]:
    """A sync's result as the job's: ``up_to_date`` from its status (``kept``: the verdict said worse, nothing
    was written, ``message`` says why); the run's metrics without the private plot data (keys starting with
    ``_``); never the vectors."""
    out: dict[str, Any] = {
        "status": result.status,
        "up_to_date": result.status == "up-to-date",
        "message": result.message,
        "changed_labels": result.changed_labels,
        "n_labels": result.n_labels,
        "fingerprint": result.fingerprint,
        "previous_fingerprint": result.previous_fingerprint,
        "verdict": jsonable(result.verdict),
        # the embedding as refinery names it (model door with a target: the one its embedder computed, not the
        # run's embedding_name), its id there, and the folder written
        "door": result.door,
        "embedding": result.embedding,
        "embedding_id": result.embedding_id,
        "written": str(result.written) if result.written else None,
    }
    run = result.run
    if run is not None:
        metrics = run.metrics
        out["metrics"] = jsonable({k: v for k, v in metrics.items() if not str(k).startswith("_")})
        out["embedding_name"] = run.embedding_name
        out["out_dir"] = str(run.out_dir)
        seconds = metrics.get("seconds")
        if isinstance(seconds, Mapping):
            out["timings"] = jsonable(seconds)
    return out
