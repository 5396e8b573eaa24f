"""Re-train and write the embedding only when the labels changed: ``kern-finetune sync`` (``docs/sync.md``).

One sync: check the door -> pull the export -> select the labels the pipeline would train on -> fingerprint
them -> compare with the last *successful* sync of this project -> if nothing (or fewer than
``min_new_labels``) changed and not ``force``: "up to date", nothing trained or written -> else run the
pipeline, write the embedding through the door, and only then store the new fingerprint and label state.

Doors (no refinery version has an API that takes vectors): ``model`` (the model folder for refinery's
embedder; with a ``model_target`` the whole create / wait / delete loop, :mod:`kern_finetune.refinery.model_door`),
``snapshot`` (a copy of a project snapshot with our embedding added, imported as a new project), ``auto``
(snapshot when an output snapshot is named, else model). Each door is checked before anything is encoded.

State lives per host identity and project under ``state_dir`` (``state.json`` and an ``fcntl`` lock, so a
second sync of the same project fails at once and a crashed one leaves no stale lock). When the verdict
without gold says the new embedding is worse, the sync keeps the one in use (status ``kept``) unless
``force``.
"""

from __future__ import annotations

import dataclasses
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

from .web.net import check_project_id, host_identity
from .config import RunConfig
from .errors import ConfigError, DoorError, SyncBusyError
from .refinery.model_door import ModelDoorTarget, check_door, deliver
from .labels.prepare import Prepared, prepare
from .refinery.api import RefineryClient
from .refinery.gateway import Gateway
from .refinery.columns import Record, embedding_name, model_short_name

if TYPE_CHECKING:  # the pipeline pulls in torch and sklearn: import it only when a sync trains
    from .pipeline import RunResult

__all__ = [
    "DOORS",
    "SyncResult",
    "sync_project",
    "choose_door",
    "sync_state_dir",
    "model_door_steps",
    "STATE_FILE",
    "LOCK_FILE",
]

STATE_FILE = "state.json"
LOCK_FILE = "sync.lock"
MAX_VERDICTS = 100
"""Verdicts ``state.json`` keeps (the newest)."""
_STATE_VERSION = 2
DOORS = ("auto", "model", "snapshot")
"""``--door`` values: ``auto`` is snapshot when an output snapshot is named, else model."""

ProgressFn = Callable[[str], None]
PipelineFn = Callable[..., "RunResult"]


@dataclass
class SyncResult:
    """What one sync did. ``status``: ``"up-to-date"``, ``"written"``
    (snapshot or model door: a file or folder for the user to bring into refinery), ``"created"`` (model
    door with a target: refinery computed the new embedding and the previous one is gone) or ``"kept"`` (the
    verdict said worse: nothing written, the embedding in use stays)."""

    status: str
    project_id: str
    fingerprint: str
    previous_fingerprint: str | None
    changed_labels: int
    n_labels: int
    state_dir: Path
    message: str
    run: RunResult | None = field(default=None, repr=False)
    door: str = "model"
    attribute: str = ""
    """The attribute the embedding belongs to (what refinery names it after)."""
    written: Path | None = None
    """The snapshot zip (snapshot door) or model folder (model door) written."""
    embedding: str | None = None
    """The embedding's name: written, created, or (up to date) the one the last sync wrote."""
    embedding_id: str | None = None
    """The embedding's id in refinery when the model door created it (a ``model_target``)."""
    verdict: dict[str, Any] | None = None
    """The run's verdict without gold (``metrics.json``'s ``verdict``); None when nothing was trained."""


def sync_state_dir(uri: str, project_id: str, config: RunConfig) -> Path:
    """``<cache_dir>/sync/<12 hex of sha256(host identity)>/<project id>``: one per project, however
    the host's URI is spelled (:func:`kern_finetune.web.net.host_identity`)."""
    host_hash = hashlib.sha256(host_identity(uri).encode()).hexdigest()[:12]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in project_id) or "_"
    return Path(config.cache_dir) / "sync" / host_hash / safe


def choose_door(
    door: str = "auto",
    *,
    snapshot: Path | None = None,
    write_snapshot: Path | None = None,
    out_dir: Path | None = None,
) -> str:
    """The door this sync writes through (``snapshot`` or ``model``); see the module docstring. Checks the
    options (:class:`ConfigError`) before anything is pulled."""
    if door not in DOORS:
        raise ConfigError(f"--door must be one of {', '.join(DOORS)}, got {door!r}")
    if door == "model" and (snapshot is not None or write_snapshot is not None):
        raise ConfigError("--snapshot / --write-snapshot belong to --door snapshot (or auto), not --door model")
    if door == "snapshot" or (door == "auto" and write_snapshot is not None):
        _check_snapshot_options(snapshot, write_snapshot, out_dir)
    return "snapshot" if door == "snapshot" or write_snapshot is not None else "model"


def _check_snapshot_options(snapshot: Path | None, write_snapshot: Path | None, out_dir: Path | None) -> None:
    from .refinery.snapshot import check_snapshot_dst

    if snapshot is None or write_snapshot is None:
        raise ConfigError("the snapshot door needs --snapshot SRC.zip (exported in refinery) and --write-snapshot OUT.zip")
    if not Path(snapshot).is_file():
        raise ConfigError(f"--snapshot {snapshot}: no such file (export a project snapshot in refinery first)")
    check_snapshot_dst(write_snapshot, src=snapshot, out_dir=out_dir)


def model_door_steps(model_dir: Path, attribute: str, n_records: int) -> list[str]:
    """How the model folder reaches refinery's embedder (refinery-embedder ``util/embedders.py``)."""
    name = f"kern-finetune-{model_dir.resolve().parent.name or 'model'}"
    steps = [
        f"model door: {model_dir} is a sentence-transformers folder; refinery's embedder computes it itself:",
        f"  1. put the folder inside the refinery-embedder container, e.g. `docker cp {model_dir} "
        f"<refinery-embedder container>:/models/{name}` (or mount a volume there)",
        f"  2. in the project's settings add an embedding on attribute {attribute!r}: platform Hugging Face, "
        f"model `/models/{name}` (the gateway's POST /refinery-gateway/api/v1/embedding/<project id>/create-embedding "
        "with config platform 'huggingface', model = that path)",
    ]
    if n_records >= 64:
        steps.append(
            "  note: refinery reduces attribute-level embeddings of projects with 64 or more records to 64 "
            "dimensions by PCA before search (refinery-embedder util/embedders.py)"
        )
    return steps


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
    door: str = "auto",
    snapshot: Path | None = None,
    write_snapshot: Path | None = None,
    model_target: ModelDoorTarget | None = None,
) -> SyncResult:
    """Check the door, pull, compare, and (when labels changed) train and write; see the module docstring.

    ``pipeline`` defaults to :func:`kern_finetune.pipeline.run_pipeline` (it is handed the sync's ``Prepared``).
    ``door`` / ``snapshot`` / ``write_snapshot``: :func:`choose_door`; ``model_target``: the model door's folder
    and wait. Raises :class:`SyncBusyError` when another sync of the project holds the lock, and whatever the
    client / pipeline / door raise; a failed write stores nothing.
    """
    say = progress or (lambda _msg: None)
    pid, sdir = _project_and_state_dir(client, project_id, config, state_dir, min_new_labels)

    with _locked(sdir / LOCK_FILE, pid, client.uri):
        previous = _read_state(sdir / STATE_FILE)
        if door == "auto" and model_target is not None and write_snapshot is None:
            door = "model"  # what auto picks anyway; the target is checked as the model door's
        gateway = _check_model_door(client, pid, door, model_target, previous, say)
        chosen, records, source = _door_and_records(client, pid, config, door, snapshot, write_snapshot, say, out_dir=out_dir)
        if chosen == "model" and (config.smooth_weight != 0.0 or config.spread_strength != 0.0):
            # they shape only the written vectors; the folder carries the head beside the base share instead
            config = dataclasses.replace(config, smooth="0", spread="0")
            say("         model door: neighbour smoothing and search spread off (--smooth 0 --spread 0): they shape "
                "only written vectors (a snapshot); refinery's embedder computes each record's vector from the model folder")

        say("sync 2/4: compare the labels with the last sync")
        prepared = prepare(records, config)  # selected once: the pipeline trains on this very selection
        if chosen == "model" and len(prepared.text_attributes) > 1:
            config, prepared = _one_attribute(records, config, prepared, say)
        fingerprint, labels, attribute = prepared.fingerprint, prepared.labels, prepared.attribute
        key = _state_key(prepared.task.label, config, chosen, model_target)
        prev_fp = previous.get("fingerprint") if previous else None
        changed, why = _compare(previous, key, fingerprint, labels, min_new_labels,
                                _target(chosen, write_snapshot, Path(out_dir), model_target, previous))
        say(f"         {len(labels)} selected labels, {changed} changed since "
            f"{previous.get('synced_at', 'the last sync') if previous else 'never (first sync)'}")
        if not force and previous and (why := why or _still_kept(previous, key, fingerprint)):
            msg = f"up to date ({why}); embedding {previous.get('embedding', '?')!r} stays as written"
            say(f"sync: {msg}")
            return SyncResult("up-to-date", pid, fingerprint, prev_fp, changed, len(labels), sdir, msg,
                              door=chosen, attribute=attribute, embedding=previous.get("embedding"),
                              embedding_id=previous.get("embedding_id"))

        say("sync 3/4: fine-tune" + (" (forced)" if force else ""))
        result = (pipeline or _default_pipeline())(records, config, out_dir=Path(out_dir), progress=say,
                                                   prepared=prepared, **_judged_against(chosen, source, records, config))
        verdict = (result.metrics or {}).get("verdict")
        if _is_worse(verdict) and not force:
            return _keep(sdir, previous, client, pid, key, fingerprint, verdict, result, changed, len(labels),
                         chosen, attribute, say)
        model = model_short_name(result.base_model)

        out = _write_through(chosen, pid, result, config, attribute=attribute, model=model,
                             changed=changed, snapshot=snapshot, write_snapshot=write_snapshot, say=say, gateway=gateway,
                             model_target=model_target, previous=previous)
        # only a successful write reaches this point: now the new state may be stored
        _store(sdir, client, pid, key, chosen, fingerprint, labels, out, previous, verdict, forced=force)
        if out.delete_error:
            raise DoorError(out.delete_error)
        say(f"sync: {out.message}")
        return SyncResult(out.status, pid, fingerprint, prev_fp, changed, len(labels), sdir, out.message, run=result,
                          door=chosen, attribute=attribute, written=out.written, embedding=out.name,
                          embedding_id=out.embedding_id, verdict=verdict)


@dataclass
class _Written:
    """What step 4 wrote through the door (what the state and the result record)."""

    name: str
    status: str
    message: str
    written: Path | None = None
    embedding_id: str | None = None
    door_state: dict[str, Any] | None = None
    delete_error: str = ""
    """Set when the model door's new embedding is recorded but deleting the previous one was refused."""


def _default_pipeline() -> PipelineFn:
    from .pipeline import run_pipeline

    return run_pipeline


def _one_attribute(records: list[Record], config: RunConfig, prepared: Prepared,
                   say: ProgressFn) -> tuple[RunConfig, Prepared]:
    """The model door trains on the embedding's attribute alone: refinery's embedder embeds one attribute
    (``ON_ATTRIBUTE``), so a model trained on several joined would be fed texts unlike its training's."""
    config = dataclasses.replace(config, text_attributes=[prepared.attribute])
    say(f"         model door: refinery's embedder embeds one attribute, {prepared.attribute!r}: training on it "
        f"alone (not {' + '.join(prepared.text_attributes)}; --text-attributes names another)")
    return config, prepare(records, config)


def _check_model_door(client: RefineryClient, pid: str, door: str, target: ModelDoorTarget | None,
                      previous: dict[str, Any] | None, say: ProgressFn) -> Gateway | None:
    """The model door's check before anything is pulled (:func:`kern_finetune.refinery.model_door.check_door`); the
    gateway session to write through, or None (no target)."""
    if target is not None and door != "model":
        raise ConfigError("--models-dir belongs to --door model")
    if target is None:
        return None
    gateway = Gateway(client)
    prev_name = ((previous or {}).get("model_door") or {}).get("embedding")
    check_door(gateway, pid, target, prev_name)
    say(f"sync: model door: browser login ok, project {pid} answers, {target.models_dir} is writable "
        f"(the embedder sees it as {target.models_mount})")
    return gateway


def _deliver(gateway: Gateway, pid: str, result: RunResult, attribute: str, target: ModelDoorTarget,
             previous: dict[str, Any] | None, changed: int, say: ProgressFn) -> _Written:
    """Sync step 4 of the model door with a target: :func:`kern_finetune.refinery.model_door.deliver`."""
    say(f"sync 4/4: model door: hand {result.model_dir} to refinery's embedder")
    before = (previous or {}).get("model_door") if (previous or {}).get("door") == "model" else None
    done = deliver(gateway, pid, Path(result.model_dir), attribute, target, previous=before, say=say)
    gone = f"; deleted the previous embedding {', '.join(done.deleted)}" if done.deleted else ""
    message = (f"refinery computed {done.name!r} (id {done.embedding_id}) from {done.folder} after {changed} "
               f"label change(s){gone}")
    refused = ""
    if done.delete_error:
        refused = (f"model door, step delete: {done.name!r} is FINISHED and recorded, but deleting the previous "
                   f"embedding {', '.join(done.leftover)} was refused ({done.delete_error}); delete it in the "
                   "project's settings (the next sync tries again)")
    return _Written(done.name, "created", message, written=done.folder, embedding_id=done.embedding_id,
                    door_state=done.state(), delete_error=refused)


def _write_through(
    chosen: str, pid: str, result: RunResult, config: RunConfig, *, attribute: str,
    model: str, changed: int, snapshot: Path | None,
    write_snapshot: Path | None, say: ProgressFn, gateway: Gateway | None = None,
    model_target: ModelDoorTarget | None = None, previous: dict[str, Any] | None = None,
) -> _Written:
    """Sync step 4: write the run's vectors through the chosen door."""
    if chosen == "model" and gateway is not None and model_target is not None:
        return _deliver(gateway, pid, result, attribute, model_target, previous, changed, say)
    if chosen == "snapshot":
        assert snapshot is not None and write_snapshot is not None
        say(f"sync 4/4: write {write_snapshot} (snapshot door)")
        name = _write_snapshot(snapshot, write_snapshot, result, attribute=attribute, model=model, config=config)
        written, status = Path(write_snapshot), "written"
        msg = (f"wrote {written} with embedding {name!r} after {changed} label change(s); import it in "
               "refinery's UI as a new project (upload a project snapshot)")
    else:
        say("sync 4/4: model folder (model door)")
        name, written, status = result.embedding_name, Path(result.model_dir), "written"
        for line in model_door_steps(written, attribute, len(result.ids)):
            say(line)
        msg = f"wrote the model folder {written} after {changed} label change(s)"
    return _Written(name, status, msg, written=written)


def _project_and_state_dir(client: RefineryClient, project_id: str | None, config: RunConfig,
                           state_dir: Path | None, min_new_labels: int) -> tuple[str, Path]:
    """Check the sync's options; the project id and its (created) state folder."""
    config.validate()
    if min_new_labels < 0:
        raise ConfigError(f"min_new_labels must not be negative, got {min_new_labels}")
    pid = project_id or client.project_id
    if not pid:
        raise ConfigError("no project id: pass --project ID or put project_id in the secrets file")
    pid = check_project_id(str(pid), where="project id")
    sdir = Path(state_dir) if state_dir is not None else sync_state_dir(client.uri, pid, config)
    sdir.mkdir(parents=True, exist_ok=True)
    return pid, sdir


def _door_and_records(client: RefineryClient, pid: str, config: RunConfig, door: str, snapshot: Path | None,
                      write_snapshot: Path | None, say: ProgressFn, *,
                      out_dir: Path | None = None) -> tuple[str, list[Record], Any]:
    """Choose the door (before anything is pulled), then sync step 1: pull the export. Returns the door, the
    records and the source snapshot (snapshot door) or None."""
    chosen = choose_door(door, snapshot=snapshot, write_snapshot=write_snapshot, out_dir=out_dir)
    say(f"sync: door {chosen}")
    source = None
    if chosen == "snapshot":
        from .refinery.snapshot import read_snapshot

        source = read_snapshot(snapshot)  # type: ignore[arg-type]

    say(f"sync 1/4: pull the export of project {pid} from {client.uri}")
    t = time.perf_counter()
    records = client.get_export(pid)
    say(f"         {len(records)} records ({time.perf_counter() - t:.1f} s)")
    if source is not None:
        _check_same_records(source, records, config.id_attribute, snapshot)
    return chosen, records, source


def _store(sdir: Path, client: RefineryClient, pid: str, key: dict[str, Any], door: str, fingerprint: str,
           labels: dict[str, str], out: _Written, previous: dict[str, Any] | None, verdict: dict[str, Any] | None, *,
           forced: bool) -> None:
    """After a successful write: the new state, with this sync's verdict added to the history."""
    _write_state(sdir / STATE_FILE, {
        "version": _STATE_VERSION, "host": client.identity, "project_id": pid, "key": key, "door": door,
        "fingerprint": fingerprint, "labels": labels, "embedding": out.name, "embedding_id": out.embedding_id,
        "written": str(out.written) if out.written else None, "model_door": out.door_state,
        "synced_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "verdicts": _history(previous, verdict, fingerprint, "forced" if forced and _is_worse(verdict) else "written"),
    })


def _judged_against(door: str, source: Any, records: list[Record], config: RunConfig) -> dict[str, Any]:
    """What the pipeline's verdict judges (only what differs from its defaults, so stand-in pipelines keep
    their signature): the model door's folder as refinery computes it, and the project's current
    embedding when the source snapshot carries one."""
    extra: dict[str, Any] = {}
    if door == "model":
        extra["door"] = "model"
    if source is not None:
        from .evaluation.verdict import current_embedding

        found, _why = current_embedding(source, [str(r.get(config.id_attribute)) for r in records],
                                        id_attribute=config.id_attribute, prefer=config.embedding_name)
        if found is not None:
            extra["current"] = found
    return extra


def _is_worse(verdict: dict[str, Any] | None) -> bool:
    return bool(verdict) and verdict.get("verdict") == "worse"  # type: ignore[union-attr]


def _history(previous: dict[str, Any] | None, verdict: dict[str, Any] | None, fingerprint: str,
             outcome: str) -> list[dict[str, Any]]:
    """``state.json``'s ``verdicts``: the earlier ones plus this sync's (what it said and what the sync did)."""
    history = list((previous or {}).get("verdicts") or [])
    if verdict:
        entry = {"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "fingerprint": fingerprint,
                 "outcome": outcome}
        entry.update({k: verdict[k] for k in ("verdict", "conclusion", "reference", "n_heldout", "n_queries",
                                              "judged_per_query", "interval", "new", "raw", "current") if k in verdict})
        history.append(entry)
    return history[-MAX_VERDICTS:]


def _still_kept(previous: dict[str, Any] | None, key: dict[str, Any], fingerprint: str) -> str | None:
    """Why the sync is up to date when the last sync of these very labels kept the embedding in use, else None."""
    kept = (previous or {}).get("kept") or {}
    if kept.get("fingerprint") == fingerprint and kept.get("key") == key:
        return "labels unchanged since the verdict kept the embedding in use; --force writes the new one anyway"
    return None


def _keep(sdir: Path, previous: dict[str, Any] | None, client: RefineryClient, pid: str, key: dict[str, Any],
          fingerprint: str, verdict: dict[str, Any], result: RunResult, changed: int, n_labels: int, door: str,
          attribute: str, say: ProgressFn) -> SyncResult:
    """The verdict says worse: write nothing, keep the embedding in use, record the verdict, say why in one line."""
    prev = previous or {}
    state = dict(prev or {"version": _STATE_VERSION, "host": client.identity, "project_id": pid})
    state["verdicts"] = _history(previous, verdict, fingerprint, "kept")
    state["kept"] = {"fingerprint": fingerprint, "key": key, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    _write_state(sdir / STATE_FILE, state)
    in_use = prev.get("embedding") or f"the project's {verdict.get('reference', 'current')} embedding"
    msg = f"kept {in_use!r}: the new embedding is {verdict.get('conclusion', 'worse')}; --force writes it anyway"
    say(f"sync: {msg}")
    return SyncResult("kept", pid, fingerprint, prev.get("fingerprint"), changed, n_labels, sdir, msg, run=result,
                      door=door, attribute=attribute, embedding=prev.get("embedding"),
                      embedding_id=prev.get("embedding_id"), verdict=verdict)


def _compare(previous: dict[str, Any] | None, key: dict[str, Any], fingerprint: str, labels: dict[str, str],
             min_new_labels: int, target: Path | None) -> tuple[int, str | None]:
    """``(labels changed since the last sync, why it is up to date or None)``. A file door is up to date
    only while what it wrote is still where this sync would write it (``target``)."""
    same_key = bool(previous) and previous.get("key") == key  # type: ignore[union-attr]
    if not previous or not same_key:
        return len(labels), None
    changed = _count_changed(previous.get("labels", {}), labels)
    still_there = target is None or (previous.get("written") == str(target) and target.exists())
    if not still_there:
        return changed, None
    if fingerprint == previous.get("fingerprint"):
        return changed, "labels unchanged"
    if changed < min_new_labels:
        return changed, f"{changed} changed label(s) < --min-new-labels {min_new_labels}"
    return changed, None


def _target(door: str, write_snapshot: Path | None, out_dir: Path, model_target: ModelDoorTarget | None = None,
            previous: dict[str, Any] | None = None) -> Path | None:
    """What a file door writes (compared with the last sync's): the snapshot zip, the model folder, or (model
    door with a target) the versioned folder the last sync created, which must still be there."""
    if door == "snapshot" and write_snapshot is not None:
        return Path(write_snapshot)
    if door == "model":
        written = (previous or {}).get("written") if model_target is not None else None
        return Path(written) if written else out_dir / "model"
    return None


def _check_same_records(source: Any, records: list[Record], id_attribute: str, path: Path | None) -> None:
    """The snapshot door writes one vector per snapshot record: the project must hold the same records."""
    want = {str(r.get(id_attribute)) for r in source.records}
    have = {str(r.get(id_attribute)) for r in records}
    if want != have:
        raise ConfigError(
            f"--snapshot {path} holds other records than the project ({len(want - have)} only in the snapshot, "
            f"{len(have - want)} only in the project, by {id_attribute!r}): export a fresh snapshot of this project"
        )


def _write_snapshot(src: Path, dst: Path, result: RunResult, *, attribute: str, model: str, config: RunConfig) -> str:
    """The snapshot door: ``write_snapshot`` names the embedding refinery's way; returns that name."""
    from .refinery.snapshot import write_snapshot

    name = config.embedding_name or embedding_name(attribute, model=model)
    written = write_snapshot(
        src, dst, ids=result.ids, vectors=result.vectors, attribute=attribute, model=model,
        id_attribute=config.id_attribute, name=config.embedding_name,
    )
    if name not in written.embeddings:
        raise DoorError(f"read-back check: {dst} holds no embedding named {name!r}")
    return name


def _state_key(task: str, config: RunConfig, door: str, model_target: ModelDoorTarget | None = None) -> dict[str, Any]:
    key = {"task": task, "threshold": config.threshold, "id_attribute": config.id_attribute, "door": door}
    if model_target is not None:  # a folder the embedder computes is another target than a folder left on disk
        key["models_dir"] = str(Path(model_target.models_dir).resolve())
    return key


def _count_changed(old: dict[str, str], new: dict[str, str]) -> int:
    """Records whose selected label was added, removed or changed."""
    return sum(1 for k in set(old) | set(new) if old.get(k) != new.get(k))


def _read_state(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None  # missing or unreadable: a first sync (it retrains, never skips wrongly)
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

    with open(path, "a+", encoding="utf-8") as fh:
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
