"""Output folders written whole (staged, then swapped in), and the per-record vectors: a failed run leaves
nothing half-written."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..errors import ConfigError

__all__ = ["save_vectors", "load_vectors", "atomic_dir", "replace_dir", "check_out_dir", "staged_output", "RUN_OUTPUTS", "RUN_MARKER"]

RUN_OUTPUTS = frozenset({"metrics.json", "report.html", "model", "vectors.npz", "label_issues.csv", ".kern-finetune-run.json"})
"""What a run writes into its output folder (the last: :data:`RUN_MARKER`, which lists every path written)."""


def atomic_dir(final: Path) -> Path:
    """A fresh temporary sibling of ``final``; move it into place with :func:`replace_dir`."""
    final.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))


def replace_dir(tmp: Path, final: Path) -> None:
    """Move the folder ``tmp`` to ``final``, replacing what is there (renamed aside first, then removed)."""
    if final.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{final.name}-old-", dir=final.parent))
        final.replace(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)


RUN_MARKER = ".kern-finetune-run.json"
"""The file every output folder gets: it lists every relative path the run wrote there (folders and files,
recursively). A non-empty folder is replaced only when this file is there and lists everything in it."""
_MARKER_TOOL = "kern-finetune"


def _tree_paths(folder: Path) -> list[str]:
    """Every relative path under ``folder``, sorted, the marker excepted; symbolic links are never followed."""
    out: list[str] = []

    def fail(exc: OSError) -> None:
        raise exc

    for root, dirs, files in os.walk(folder, onerror=fail):
        rel = Path(root).relative_to(folder)
        out.extend((rel / name).as_posix() for name in (*dirs, *files))
    return sorted(p for p in out if p != RUN_MARKER)


def _read_marker(folder: Path) -> dict | None:
    """The marker's content when ``folder`` holds our marker as a regular file, else None."""
    path = folder / RUN_MARKER
    try:
        if path.is_symlink() or not path.is_file():
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("tool") != _MARKER_TOOL or not isinstance(data.get("paths"), list):
        return None
    return data


def _foreign_paths(folder: Path) -> list[str]:
    """What in ``folder`` a run did not write: everything when the marker is missing, else what it does not list."""
    paths = _tree_paths(folder)
    if not paths:
        return []
    marker = _read_marker(folder)
    if marker is None or marker.get("staging"):
        return paths
    listed = {str(p) for p in marker["paths"]}
    return [p for p in paths if p not in listed]


def _modes() -> tuple[int, int]:
    """``(folder mode, file mode)`` an ordinary tool creates under the current umask (0755 / 0644 under 022)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o777 & ~umask, 0o666 & ~umask


def _seal(stage: Path, fh: io.TextIOBase) -> None:
    """Finish a staging folder: ordinary permissions (mkdtemp makes 0700, mkstemp 0600) on everything in it,
    then the marker listing every path, written through ``fh`` (the locked marker file, same inode)."""
    dir_mode, file_mode = _modes()
    for root, dirs, files in os.walk(stage):
        os.chmod(root, dir_mode)
        for name in files:
            path = os.path.join(root, name)
            if not os.path.islink(path):
                os.chmod(path, file_mode)
    fh.seek(0)
    fh.truncate()
    json.dump({"tool": _MARKER_TOOL, "version": 1, "paths": _tree_paths(stage)}, fh, indent=1)
    fh.flush()


def _clean_stale_stages(final: Path) -> None:
    """Remove ``.<name>-new-*`` / ``.<name>-old-*`` folders beside ``final`` that a killed run of ours left:
    ours by their marker, stale because no live run holds the marker's lock."""
    import fcntl

    try:
        siblings = list(final.parent.iterdir())
    except OSError:
        return
    for path in siblings:
        if not (path.name.startswith(f".{final.name}-new-") or path.name.startswith(f".{final.name}-old-")):
            continue
        if path.is_symlink() or not path.is_dir() or _read_marker(path) is None:
            continue
        try:
            with open(path / RUN_MARKER, "r+", encoding="utf-8") as fh:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # held by a live run: not stale
                shutil.rmtree(path)
        except OSError:
            continue


def check_out_dir(out_dir: Path) -> Path:
    """Check, before any work, that a run may write ``out_dir``; returns it.

    It may be missing, an empty folder, or an earlier run's folder whose :data:`RUN_MARKER` lists every path in
    it. Anything else is a :class:`ConfigError`: a run never deletes what it did not write.
    """
    out_dir = Path(out_dir)
    here, target = Path.cwd(), Path(os.path.abspath(out_dir))
    if target == here or target in here.parents:
        raise ConfigError(f"the output folder {out_dir} is the current folder or holds it; name a sub-folder (--out)")
    if out_dir.is_symlink():
        raise ConfigError(f"the output folder {out_dir} is a symbolic link; name the folder itself (--out)")
    if out_dir.exists():
        if not out_dir.is_dir():
            raise ConfigError(f"the output folder {out_dir} is a file; name a folder (--out)")
        try:
            foreign = _foreign_paths(out_dir)
        except OSError as exc:
            raise ConfigError(f"cannot read the output folder {out_dir}: {exc.strerror}") from None
        if foreign:
            shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            why = "files a run did not write" if _read_marker(out_dir) else f"files and no {RUN_MARKER} of a run"
            raise ConfigError(f"the output folder {out_dir} holds {why} ({shown}); "
                              "name a new folder or an earlier run's folder (--out)")
    for parent in out_dir.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"cannot create the output folder {out_dir}: {parent} is a file")
            break
    return out_dir


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    rc = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(a))


def _new_stage(final: Path) -> tuple[Path, io.TextIOBase]:
    """A fresh ``.<name>-new-*`` folder beside ``final`` with our marker in it, locked while the run lives."""
    import fcntl

    final.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{final.name}-new-", dir=final.parent))
    fh = open(stage / RUN_MARKER, "w+", encoding="utf-8")  # noqa: SIM115 (closed by staged_output)
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        json.dump({"tool": _MARKER_TOOL, "version": 1, "staging": True, "pid": os.getpid(), "paths": []}, fh)
        fh.flush()
    except BaseException:
        fh.close()
        shutil.rmtree(stage, ignore_errors=True)
        raise
    return stage, fh


@contextlib.contextmanager
def staged_output(out_dir: Path) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``out_dir``; once the block ends without an exception it gets
    :data:`RUN_MARKER` and ordinary permissions and replaces ``out_dir`` as a whole (one ``renameat2`` exchange
    where the OS has it, else two renames). On an exception (SIGTERM included) it is removed and ``out_dir``
    is left as it was; a folder a killed run left beside it is removed by the next run.
    """
    final = Path(os.path.abspath(check_out_dir(Path(out_dir))))  # "." has no name to put beside
    try:
        _clean_stale_stages(final)
        stage, fh = _new_stage(final)
    except OSError as exc:
        raise ConfigError(f"cannot write the output folder {final}: {exc.strerror}") from None
    try:
        yield stage
        _seal(stage, fh)
        check_out_dir(final)  # still ours to replace (nobody put other files there meanwhile)
        if final.exists() and _exchange(stage, final):
            shutil.rmtree(stage, ignore_errors=True)  # now holds the earlier output
        else:
            replace_dir(stage, final)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    finally:
        fh.close()


def save_vectors(path: Path, ids: list[str], vectors: np.ndarray) -> None:
    """``vectors.npz`` with ``ids`` (str) and ``vectors`` (float32, L2-normalised), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("wb") as fh:
        np.savez_compressed(fh, ids=np.array(ids, dtype=str), vectors=vectors.astype(np.float32))
    tmp.replace(path)


def load_vectors(path: Path) -> tuple[list[str], np.ndarray]:
    data = np.load(path, allow_pickle=False)
    return [str(i) for i in data["ids"]], data["vectors"]


def write_json(path: Path, obj: object) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False))
    tmp.replace(path)
