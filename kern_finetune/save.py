"""Output folders written whole (staged, then swapped in), and the per-record vectors.

The model folder itself is written by :mod:`kern_finetune.model_folder`. Everything is written to a
temporary folder first and moved into place at the end: a failed run leaves nothing half-written.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .errors import ConfigError

__all__ = ["save_vectors", "load_vectors", "atomic_dir", "check_out_dir", "staged_output", "RUN_OUTPUTS"]

RUN_OUTPUTS = frozenset({"metrics.json", "report.html", "model", "vectors.npz", "label_issues.csv"})
"""What a run writes into its output folder; a folder holding only these is an earlier run's output."""


def atomic_dir(final: Path) -> Path:
    """A fresh temporary sibling of ``final``; move it into place with :func:`_replace_dir`."""
    final.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))


def _replace_dir(tmp: Path, final: Path) -> None:
    if final.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{final.name}-old-", dir=final.parent))
        final.replace(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(final)


def _is_our_leftover(name: str) -> bool:
    """Temporary names this module writes (``.x.tmp`` files, ``.model-*`` folders)."""
    return name.startswith(".") and (name.endswith(".tmp") or name.startswith(".model-"))


def check_out_dir(out_dir: Path) -> Path:
    """Check, before any work, that a run may write ``out_dir``; returns it.

    It may be missing, an empty folder, or an earlier run's folder (only :data:`RUN_OUTPUTS` in it), which
    the new run replaces as a whole. A file, or a folder holding anything else, is a :class:`ConfigError`:
    a run never deletes what it did not write.
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
            foreign = sorted(p.name for p in out_dir.iterdir() if p.name not in RUN_OUTPUTS and not _is_our_leftover(p.name))
        except OSError as exc:
            raise ConfigError(f"cannot read the output folder {out_dir}: {exc.strerror}") from None
        if foreign:
            shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
            raise ConfigError(f"the output folder {out_dir} holds files a run did not write ({shown}); "
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


@contextlib.contextmanager
def staged_output(out_dir: Path) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``out_dir``; once the block ends without an exception it
    replaces ``out_dir`` as a whole (in one ``renameat2`` exchange where the OS has it, else two renames).

    On an exception the temporary folder is removed and ``out_dir`` (an earlier run's output, or nothing)
    is left exactly as it was. Check ``out_dir`` with :func:`check_out_dir` first.
    """
    final = Path(os.path.abspath(check_out_dir(Path(out_dir))))  # "." has no name to put beside
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=f".{final.name}-new-", dir=final.parent))
    except OSError as exc:
        raise ConfigError(f"cannot write the output folder {final}: {exc.strerror}") from None
    try:
        yield stage
        check_out_dir(final)  # still ours to replace (nobody put other files there meanwhile)
        if final.exists() and _exchange(stage, final):
            shutil.rmtree(stage, ignore_errors=True)  # now holds the earlier output
        else:
            _replace_dir(stage, final)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


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
