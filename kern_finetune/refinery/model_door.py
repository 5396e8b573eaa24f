"""The model door with no click: a versioned model folder in the embedder's volume, created, awaited, swapped.

:func:`check_door` runs before anything is pulled or encoded; :func:`deliver` after the pipeline. Each folder
name is new (``<base>-v<N>``) because the gateway drops, without a word, a task whose embedding name exists;
the previous embedding is deleted only once the new one is ``FINISHED``. What refinery's code allows, read in
its sources: ``docs/model-door.md``.
"""

from __future__ import annotations

import os
import posixpath
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import AuthError, ConfigError, KernFinetuneError, DoorError
from .columns import HUGGINGFACE, embedding_name
from .gateway import Gateway

__all__ = ["ModelDoorTarget", "Delivered", "check_door", "deliver", "wait_finished", "reserve_folder", "folder_base", "DEFAULT_MOUNT"]

DEFAULT_MOUNT = "/models"
"""Where ``docs/model-door.md`` mounts the models volume inside the embedder container."""

ProgressFn = Callable[[str], None]


@dataclass(frozen=True)
class ModelDoorTarget:
    """Where the model door puts a model folder and how long it waits for refinery's embedder."""

    models_dir: Path
    """The folder on this machine that is mounted into the embedder (``--models-dir``)."""
    models_mount: str = DEFAULT_MOUNT
    """The same folder's path inside the embedder container (``--models-mount``)."""
    wait_s: float = 1800.0
    """Longest wait for the new embedding to be ``FINISHED`` (``--model-wait``)."""
    poll_s: float = 5.0
    """Seconds between two reads of ``embeddings-by-project``."""

    def __post_init__(self) -> None:
        if not posixpath.isabs(self.models_mount):
            raise ConfigError(f"--models-mount must be an absolute path inside the embedder, got {self.models_mount!r}")
        if self.wait_s <= 0 or self.poll_s <= 0:
            raise ConfigError("--model-wait and the poll interval must be positive")


@dataclass
class Delivered:
    """What :func:`deliver` left in refinery: the new embedding, and the previous ones it removed or could not."""

    embedding_id: str
    name: str
    folder: Path
    model: str
    deleted: list[str] = field(default_factory=list)
    leftover: list[str] = field(default_factory=list)
    """Earlier kern-finetune embeddings still in refinery because their delete was refused."""
    delete_error: str = ""

    def state(self) -> dict[str, Any]:
        """The sync state's ``model_door`` entry."""
        return {"embedding_id": self.embedding_id, "embedding": self.name, "folder": str(self.folder),
                "model": self.model, "leftover": list(self.leftover)}


def _fail(step: str, reason: str, todo: str, previous: str | None, cls: type[KernFinetuneError] = DoorError) -> KernFinetuneError:
    """The one line a refused step raises."""
    kept = f"; the previous embedding {previous!r} stays in place" if previous else "; nothing was changed in refinery"
    return cls(f"model door, step {step}: {reason.rstrip('.')}; {todo}{kept}")


def folder_base(attribute: str) -> str:
    """The versioned folders' common name: ``kern-finetune-<attribute>`` with only ``[A-Za-z0-9._-]``."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "-", attribute).strip("-.") or "attribute"
    return f"kern-finetune-{safe}"


def reserve_folder(models_dir: Path, base: str, taken: set[str] | None = None) -> Path:
    """Create and return the next free ``<base>-v<N>`` under ``models_dir`` (N above every existing version;
    ``taken``: folder names refinery already has an embedding for). ``mkdir`` is atomic: an existing folder is
    never reused."""
    pattern = re.compile(re.escape(base) + r"-v(\d+)$")
    numbers = [int(m.group(1)) for p in models_dir.iterdir() if (m := pattern.match(p.name))]
    n = max(numbers, default=0) + 1
    while True:
        path = models_dir / f"{base}-v{n}"
        if path.name not in (taken or set()):
            try:
                path.mkdir()
                return path
            except FileExistsError:
                pass
        n += 1


def check_models_dir(models_dir: Path) -> None:
    """ConfigError unless ``models_dir`` is a folder this process can create folders in."""
    if not models_dir.is_dir():
        raise _fail("models dir", f"--models-dir {models_dir} is not a folder",
                    "create it and mount it into refinery's embedder (docs/model-door.md)", None, ConfigError)
    if not os.access(models_dir, os.W_OK | os.X_OK):
        raise _fail("models dir", f"--models-dir {models_dir} is not writable by this user",
                    "give this user write access to it", None, ConfigError)


def check_door(gateway: Gateway, project_id: str, target: ModelDoorTarget, previous: str | None = None) -> None:
    """Before anything is pulled or encoded: the models dir is writable, the browser login works and the project
    answers through the gateway with that session."""
    check_models_dir(Path(target.models_dir))
    try:
        gateway.login()
    except KernFinetuneError as exc:
        raise _fail("login", str(exc), "use the user name and password of refinery's login page", previous,
                    AuthError) from None
    try:
        gateway.attributes(project_id, idempotent=False)
    except KernFinetuneError as exc:
        raise _fail("project", str(exc), f"check that project {project_id} belongs to this user's organisation",
                    previous, type(exc) if isinstance(exc, AuthError) else DoorError) from None


def deliver(gateway: Gateway, project_id: str, model_dir: Path, attribute: str, target: ModelDoorTarget, *,
            previous: dict[str, Any] | None, say: ProgressFn, sleep: Callable[[float], None] = time.sleep) -> Delivered:
    """Copy ``model_dir`` into the next versioned folder, create the embedding on ``attribute``, wait for it, then
    delete the previous kern-finetune embedding(s) (``previous``: the last sync's ``model_door`` state)."""
    prev_name = (previous or {}).get("embedding")
    try:
        attribute_id = _attribute_id(gateway, project_id, attribute)
        taken = {str(n.get("name")) for n in gateway.embeddings(project_id)}
    except KernFinetuneError as exc:
        raise _fail("project", str(exc), "check the project in refinery", prev_name) from None
    if attribute_id is None:
        raise _fail("create", f"the project has no attribute {attribute!r}", "name the text attribute of the task",
                    prev_name)
    base = folder_base(attribute)
    mount = target.models_mount.rstrip("/") or "/"
    prefix = embedding_name(attribute, model=posixpath.join(mount, ""), platform=HUGGINGFACE, short=False)
    taken_folders = {n[len(prefix):] for n in taken if n.startswith(prefix)}  # a name refinery would drop
    folder = reserve_folder(Path(target.models_dir), base, taken_folders)
    shutil.copytree(model_dir, folder, dirs_exist_ok=True)  # into the folder just made; never an existing one
    model = posixpath.join(mount, folder.name)
    name = embedding_name(attribute, model=model, platform=HUGGINGFACE, short=False)
    say(f"         model door: copied the model to {folder} (the embedder sees {model})")
    try:
        gateway.create_embedding(project_id, attribute_id, model)
    except KernFinetuneError as exc:
        raise _fail("create", str(exc), "create it by hand in the project's settings, or run the sync again",
                    prev_name) from None
    say(f"         model door: created {name!r}; waiting for refinery's embedder (at most {target.wait_s:.0f} s)")
    embedding_id = wait_finished(gateway, project_id, name, target, prev_name, sleep)
    done = Delivered(embedding_id, name, folder, model)
    _delete_previous(gateway, project_id, previous, done, say)
    return done


def _attribute_id(gateway: Gateway, project_id: str, attribute: str) -> str | None:
    for item in gateway.attributes(project_id):
        if item.get("name") == attribute and item.get("id"):
            return str(item["id"])
    return None


def wait_finished(gateway: Gateway, project_id: str, name: str, target: ModelDoorTarget, prev_name: str | None = None,
                  sleep: Callable[[float], None] = time.sleep) -> str:
    """The new embedding's id once it is FINISHED; one line naming FAILED or the timeout otherwise."""
    deadline = time.monotonic() + target.wait_s
    state = "not started"
    while True:
        try:
            node = next((n for n in gateway.embeddings(project_id) if n.get("name") == name), None)
        except KernFinetuneError as exc:
            raise _fail("wait", str(exc), "look at the embedding in the project's settings", prev_name) from None
        if node is not None:
            state = str(node.get("state"))
            if state == "FINISHED":
                return str(node["id"])
            if state == "FAILED":
                raise _fail("wait", f"refinery's embedder could not compute {name!r} (state FAILED)",
                            "check that the models volume is mounted where --models-mount says and the "
                            "refinery-embedder logs (docs/model-door.md)", prev_name)
        if time.monotonic() >= deadline:
            raise _fail("wait", f"{name!r} is not FINISHED after {target.wait_s:.0f} s (state {state})",
                        "raise --model-wait, or delete it in the project's settings if it never finishes", prev_name)
        sleep(target.poll_s)


def _delete_previous(gateway: Gateway, project_id: str, previous: dict[str, Any] | None, done: Delivered,
                     say: ProgressFn) -> None:
    """Delete the last sync's embedding and any leftovers, now that ``done`` is FINISHED; a refusal is kept in
    ``done.leftover`` / ``done.delete_error`` (the caller stores the new state, then reports it)."""
    prev = previous or {}
    ids = [i for i in [prev.get("embedding_id"), *prev.get("leftover", [])] if i and i != done.embedding_id]
    for eid in dict.fromkeys(ids):
        try:
            gateway.delete_embedding(project_id, str(eid))
            still = any(str(n.get("id")) == str(eid) for n in gateway.embeddings(project_id))
        except KernFinetuneError as exc:
            done.leftover.append(str(eid))
            done.delete_error = done.delete_error or str(exc)
            continue
        if still:
            done.leftover.append(str(eid))
            done.delete_error = done.delete_error or f"embedding {eid} is still listed after its delete"
        else:
            done.deleted.append(str(eid))
            say(f"         model door: deleted the previous embedding {eid}")
