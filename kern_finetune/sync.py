"""Re-train and re-push only when the labels changed: ``kern-finetune sync``.

One sync: pull the export -> select the labels the pipeline would train on (manual, plus weak labels
above the threshold) -> fingerprint them -> compare with what the last *successful* sync of this
project stored -> if nothing (or fewer than ``min_new_labels`` labels) changed and not ``force``:
"up to date", nothing trained or pushed -> else run the pipeline, push the embedding, and only then
store the new fingerprint and label state.

State lives per host and project in ``state_dir`` (default
``<config.cache_dir>/sync/<host-hash>/<project>/``): ``state.json`` (fingerprint, labels, embedding
pushed, when) and ``sync.lock``. The lock is an ``fcntl.flock`` taken without blocking: a second
sync of the same project while one runs raises :class:`SyncBusyError` at once. The kernel releases
the lock when the process ends, so a crashed sync leaves no stale lock behind.

What counts as the label state: ``{record id: selected label}`` plus the task, the threshold and the
id attribute (see :func:`kern_finetune.select.label_fingerprint`). Other training options are not
part of it: after changing e.g. ``--loss``, use ``--force``.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from .client import PushResult, RefineryClient
from .config import RunConfig
from .errors import ConfigError, SyncBusyError
from .export import Record, resolve_task
from .select import default_text_attributes, label_fingerprint, select_labels

if TYPE_CHECKING:  # the pipeline pulls in torch and sklearn: import it only when a sync trains
    from .pipeline import RunResult

__all__ = ["SyncResult", "sync_project", "sync_state_dir", "label_state", "STATE_FILE", "LOCK_FILE"]

STATE_FILE = "state.json"
LOCK_FILE = "sync.lock"
_STATE_VERSION = 1

ProgressFn = Callable[[str], None]
PipelineFn = Callable[..., "RunResult"]


@dataclass
class SyncResult:
    """What one sync did. ``status`` is ``"up-to-date"`` or ``"pushed"``."""

    status: str
    project_id: str
    fingerprint: str
    previous_fingerprint: str | None
    changed_labels: int
    n_labels: int
    state_dir: Path
    message: str
    run: RunResult | None = field(default=None, repr=False)
    push: PushResult | None = None

    @property
    def pushed(self) -> bool:
        return self.status == "pushed"


def sync_state_dir(uri: str, project_id: str, config: RunConfig) -> Path:
    """``<cache_dir>/sync/<12 hex of sha256(host uri)>/<project id>``."""
    host_hash = hashlib.sha256(uri.rstrip("/").lower().encode()).hexdigest()[:12]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in project_id) or "_"
    return Path(config.cache_dir) / "sync" / host_hash / safe


def label_state(records: list[Record], config: RunConfig) -> tuple[str, dict[str, str], str]:
    """``(fingerprint, {record id: label}, task label)`` of the labels the pipeline would select."""
    task = resolve_task(records, config.task)
    text_attrs = config.text_attributes or default_text_attributes(
        records, id_attribute=config.id_attribute, gold_attribute=config.gold_attribute
    )
    sel = select_labels(
        records, task, text_attributes=text_attrs, id_attribute=config.id_attribute,
        gold_attribute=None, threshold=config.threshold, val_fraction=config.val_fraction, seed=config.seed,
    )
    return label_fingerprint(sel, task.label, config.threshold), sel.label_state(), task.label


def sync_project(
    client: RefineryClient,
    project_id: str | None,
    config: RunConfig,
    *,
    out_dir: Path,
    force: bool = False,
    min_new_labels: int = 1,
    state_dir: Path | None = None,
    progress: ProgressFn | None = print,
    pipeline: PipelineFn | None = None,
    chunk_size: int = 1000,
    tensor_format: str = "json",
) -> SyncResult:
    """Pull, compare, and (when labels changed) train and push; see the module docstring.

    ``pipeline`` defaults to :func:`kern_finetune.pipeline.run_pipeline` (tests may inject a small
    one with the same signature). ``chunk_size`` / ``tensor_format`` go to
    :meth:`RefineryClient.push_embedding`. Raises :class:`SyncBusyError` when another sync of the project
    holds the lock, and whatever the client / pipeline raise; a failed push stores nothing.
    """
    say = progress or (lambda _msg: None)
    config.validate()
    if min_new_labels < 0:
        raise ConfigError(f"min_new_labels must not be negative, got {min_new_labels}")
    pid = project_id or client.project_id
    if not pid:
        raise ConfigError("no project id: pass --project ID or put project_id in the secrets file")
    pid = str(pid)
    sdir = Path(state_dir) if state_dir is not None else sync_state_dir(client.uri, pid, config)
    sdir.mkdir(parents=True, exist_ok=True)

    with _locked(sdir / LOCK_FILE, pid, client.uri):
        say(f"sync 1/4: pull the export of project {pid} from {client.uri}")
        t = time.perf_counter()
        records = client.get_export(pid)
        say(f"         {len(records)} records ({time.perf_counter() - t:.1f} s)")

        say("sync 2/4: compare the labels with the last sync")
        fingerprint, labels, task = label_state(records, config)
        previous = _read_state(sdir / STATE_FILE)
        prev_fp = previous.get("fingerprint") if previous else None
        same_key = bool(previous) and previous.get("key") == _state_key(task, config)
        changed = _count_changed(previous.get("labels", {}) if same_key and previous else {}, labels)
        if not same_key:
            changed = len(labels)
        say(f"         {len(labels)} selected labels, {changed} changed since "
            f"{previous.get('synced_at', 'the last sync') if previous else 'never (first sync)'}")
        if not force and previous and (fingerprint == prev_fp or changed < min_new_labels):
            why = "labels unchanged" if fingerprint == prev_fp else f"{changed} changed label(s) < --min-new-labels {min_new_labels}"
            msg = f"up to date ({why}); embedding {previous.get('embedding', '?')!r} stays served"
            say(f"sync: {msg}")
            return SyncResult("up-to-date", pid, fingerprint, prev_fp, changed, len(labels), sdir, msg)

        run = pipeline or _default_pipeline()
        say("sync 3/4: fine-tune" + (" (forced)" if force else ""))
        result = run(records, config, out_dir=Path(out_dir), progress=say)

        say(f"sync 4/4: push {result.embedding_name!r}")
        attribute = _attribute_of(result, config)
        model = str(result.extra.get("base_model_name") or config.base_model or "all-MiniLM-L6-v2")
        pushed = client.push_embedding(
            pid, result.embedding_name, result.ids, result.vectors, attribute=attribute, model=model,
            chunk_size=chunk_size, progress=say, tensor_format=tensor_format,
        )
        # only a successful push reaches this point: now the new state may be stored
        _write_state(sdir / STATE_FILE, {
            "version": _STATE_VERSION,
            "host": client.uri,
            "project_id": pid,
            "key": _state_key(task, config),
            "fingerprint": fingerprint,
            "labels": labels,
            "embedding": pushed.name,
            "embedding_id": pushed.embedding_id,
            "synced_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        })
        msg = f"pushed {pushed.name!r} ({pushed.count} vectors) after {changed} label change(s)"
        say(f"sync: {msg}")
        return SyncResult("pushed", pid, fingerprint, prev_fp, changed, len(labels), sdir, msg, run=result, push=pushed)


# ------------------------------------------------------------------------------------------------
# helpers


def _default_pipeline() -> PipelineFn:
    from .pipeline import run_pipeline

    return run_pipeline


def _attribute_of(result: RunResult, config: RunConfig) -> str:
    """The attribute the embedding is named after: ``<attribute>-classification-...``."""
    if "-classification-" in result.embedding_name:
        return result.embedding_name.split("-classification-", 1)[0]
    texts = result.metrics.get("text_attributes") or config.text_attributes or ["text"]
    return str(texts[0])


def _state_key(task: str, config: RunConfig) -> dict[str, Any]:
    return {"task": task, "threshold": config.threshold, "id_attribute": config.id_attribute}


def _count_changed(old: dict[str, str], new: dict[str, str]) -> int:
    """Records whose selected label was added, removed or changed."""
    return sum(1 for k in set(old) | set(new) if old.get(k) != new.get(k))


def _read_state(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return None  # unreadable state: treat as a first sync (it retrains, never skips wrongly)
    if not isinstance(data, dict) or data.get("version") != _STATE_VERSION:
        return None
    return data


def _write_state(path: Path, state: dict[str, Any]) -> None:
    """Atomic: a temporary file renamed into place."""
    fd, tmp = tempfile.mkstemp(prefix=".state.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(state, fh, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextmanager
def _locked(path: Path, project_id: str, uri: str) -> Iterator[None]:
    import fcntl

    fh = open(path, "a+", encoding="utf-8")
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                fh.seek(0)
                holder = fh.read().strip()
                raise SyncBusyError(
                    f"another sync of project {project_id} on {uri} is running"
                    + (f" ({holder})" if holder else "")
                    + f"; wait for it to finish (lock: {path})"
                ) from None
            raise
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} since {time.strftime('%H:%M:%S')}")
        fh.flush()
        try:
            yield
        finally:
            fh.seek(0)
            fh.truncate()
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
    finally:
        fh.close()
