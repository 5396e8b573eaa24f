"""The second round of probing (issue 30), each case replayed on real files through the CLI's ``main``.

Nothing a user owns is ever lost, and every failure the user can fix is one line naming the file or value
and the fix (never "internal error")."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest

from kern_finetune.cli import main

SNAPSHOT = Path(__file__).resolve().parent / "data" / "ag_news_snapshot_small.zip"


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _tree(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (hidden ones too), by relative path; folders as ``dir``."""
    out = {}
    for p in sorted(folder.rglob("*")):
        out[str(p.relative_to(folder))] = "dir" if p.is_dir() else _digest(p)
    return out


def _one_line_error(capsys: pytest.CaptureFixture[str], code: int, want: int = 2) -> str:
    err = capsys.readouterr().err
    assert code == want, err
    assert err.count("\n") == 1 and "Traceback" not in err and "internal error" not in err, err
    return err


# --- 1. --write-snapshot onto the input -----------------------------------------------------------------------

@pytest.mark.parametrize("spelling", ["same", "dotdot", "symlink", "hardlink"])
def test_write_snapshot_onto_the_input_is_refused(spelling: str, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    src = tmp_path / "in" / "mysnap.zip"
    src.parent.mkdir()
    shutil.copyfile(SNAPSHOT, src)
    before = _digest(src)
    dst = {"same": src, "dotdot": tmp_path / "in" / ".." / "in" / "mysnap.zip",
           "symlink": tmp_path / "link.zip", "hardlink": tmp_path / "hard.zip"}[spelling]
    if spelling == "symlink":
        dst.symlink_to(src)
    elif spelling == "hardlink":
        os.link(src, dst)
    code = main(["run", "--export", str(src), "--task", "topic", "--mode", "head", "--out", str(tmp_path / "out"),
                 "--cache-dir", str(tmp_path / "cache"), "--write-snapshot", str(dst)])
    err = _one_line_error(capsys, code)
    assert "is the input snapshot" in err and "name a new file" in err and str(dst) in err
    assert _digest(src) == before and not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()


# --- 3. --write-snapshot that cannot be written: refused before any work ---------------------------------------

@pytest.mark.parametrize("kind", ["folder", "inside out", "under a file", "read-only file system"])
def test_write_snapshot_that_cannot_be_written_is_refused_first(kind: str, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    out.mkdir()  # an earlier run's output would be replaced by the run: it must stay as it is
    (out / "keep.txt").write_text("earlier")
    if kind == "folder":
        dst = tmp_path / "a-folder.zip"
        dst.mkdir()
        want = "is a folder"
    elif kind == "inside out":
        dst = out / "with.zip"
        want = "inside the output folder"
    elif kind == "under a file":
        (tmp_path / "plain").write_text("x")
        dst = tmp_path / "plain" / "with.zip"
        want = "is a file"
    else:
        dst = Path("/proc/kern-finetune-probe/with.zip")
        want = "not writable"
    code = main(["run", "--export", str(SNAPSHOT), "--task", "topic", "--mode", "head", "--out", str(out),
                 "--cache-dir", str(tmp_path / "cache"), "--write-snapshot", str(dst)])
    err = _one_line_error(capsys, code)
    assert want in err and str(dst) in err and "--write-snapshot" in err
    assert _tree(out) == {"keep.txt": _digest(out / "keep.txt")} and not (tmp_path / "cache").exists()


def test_sync_snapshot_door_refuses_the_input_and_out(tmp_path: Path) -> None:
    from kern_finetune.errors import ConfigError
    from kern_finetune.sync import choose_door

    src = tmp_path / "snap.zip"
    shutil.copyfile(SNAPSHOT, src)
    (tmp_path / "link.zip").symlink_to(src)
    with pytest.raises(ConfigError, match="is the input snapshot"):
        choose_door(None, "p", "snapshot", snapshot=src, write_snapshot=tmp_path / "link.zip")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="inside the output folder"):
        choose_door(None, "p", "snapshot", snapshot=src, write_snapshot=tmp_path / "out" / "o.zip",  # type: ignore[arg-type]
                    out_dir=tmp_path / "out")
    assert choose_door(None, "p", "snapshot", snapshot=src, write_snapshot=tmp_path / "o.zip") == "snapshot"  # type: ignore[arg-type]
