"""The second round of probing (issue 30), each case replayed on real files through the CLI's ``main``.

Nothing a user owns is ever lost, and every failure the user can fix is one line naming the file or value
and the fix (never "internal error")."""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
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
        choose_door("snapshot", snapshot=src, write_snapshot=tmp_path / "link.zip")
    with pytest.raises(ConfigError, match="inside the output folder"):
        choose_door("snapshot", snapshot=src, write_snapshot=tmp_path / "out" / "o.zip",
                    out_dir=tmp_path / "out")
    assert choose_door("snapshot", snapshot=src, write_snapshot=tmp_path / "o.zip") == "snapshot"


# --- 2. the --out guard: nothing under --out that the tool did not write is ever deleted -------------------------

def _small_export(records: list[dict], path: Path) -> Path:
    import json

    path.write_text(json.dumps(records))
    return path


@pytest.fixture(scope="module")
def base_records(subset_records) -> list[dict]:
    """120 records of the sample (about 60 manual labels), as the probe used."""
    return subset_records[:120]


def _run_args(export: Path, out: Path, cache: Path, *extra: str) -> list[str]:
    return ["run", "--export", str(export), "--task", "Topic", "--mode", "head", "--out", str(out),
            "--cache-dir", str(cache), "--epochs", "2", "--spread", "0", "--smooth", "0", *extra]


@pytest.mark.parametrize("case", ["hidden files", "a user's model and report", "no marker, run-like names"])
def test_out_without_our_marker_is_refused(case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    u = tmp_path / "u"
    if case == "hidden files":
        (u / ".model-backup").mkdir(parents=True)
        (u / ".model-backup" / "w.bin").write_text("x")
        (u / ".notes.tmp").write_text("d")
    elif case == "a user's model and report":
        (u / "model").mkdir(parents=True)
        (u / "model" / "pytorch_model.bin").write_text("weights")
        (u / "report.html").write_text("<p>mine</p>")
    else:
        u.mkdir()
        for name in ("metrics.json", "vectors.npz", "label_issues.csv"):
            (u / name).write_text(name)
    before = _tree(u)
    export = _small_export([{"running_id": str(i), "Title": f"t {i}", "__Topic__MANUAL": "ab"[i % 2]}
                            for i in range(12)], tmp_path / "e.json")
    code = main(_run_args(export, u, tmp_path / "cache"))
    err = _one_line_error(capsys, code)
    assert str(u) in err and "--out" in err and ".kern-finetune-run.json" in err
    assert _tree(u) == before and [p.name for p in tmp_path.iterdir() if p.name.startswith(".u")] == []


@pytest.mark.parametrize("user_path", ["model/.notes", "model/sub/deep.txt", ".hidden", "notes.txt"])
def test_out_of_an_earlier_run_with_a_user_file_inside_is_refused(user_path: str, tmp_path: Path) -> None:
    from kern_finetune.errors import ConfigError
    from kern_finetune.output.save import RUN_MARKER, check_out_dir, staged_output

    out = tmp_path / "out"
    with staged_output(out) as stage:
        (stage / "model").mkdir()
        (stage / "model" / "w.bin").write_text("ours")
        (stage / "metrics.json").write_text("{}")
    assert check_out_dir(out) == out  # an earlier run's folder: ours to replace
    target = out / user_path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("the user's")
    before = _tree(out)
    with pytest.raises(ConfigError, match="did not write"):
        check_out_dir(out)
    with pytest.raises(ConfigError), staged_output(out):
        pass
    assert _tree(out) == before
    target.unlink()
    (out / RUN_MARKER).write_text("not json")  # a damaged marker: nothing is ours any more
    with pytest.raises(ConfigError, match=RUN_MARKER):
        check_out_dir(out)


# --- 13. SIGTERM: the staging folder is removed, and a killed run's leftover is cleaned on the next run ------------

def test_sigterm_during_a_run_leaves_no_staging_folder(base_records, shared_cache: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    import signal

    export = _small_export(base_records, tmp_path / "base.json")

    def killed(*_a, **_kw):
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("SIGTERM did not stop the run")

    monkeypatch.setattr("kern_finetune.output.write.write_report", killed)
    before = signal.getsignal(signal.SIGTERM)
    code = main(_run_args(export, tmp_path / "out", shared_cache))
    err = capsys.readouterr().err
    assert code == 143 and "terminated" in err and "internal error" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.json"]
    assert signal.getsignal(signal.SIGTERM) == before  # main() puts the caller's handler back


def test_stale_staging_folders_of_ours_are_cleaned_and_live_ones_kept(tmp_path: Path) -> None:
    import fcntl
    import json

    from kern_finetune.output.save import RUN_MARKER, staged_output

    def stage(name: str, marker: bool) -> Path:
        path = tmp_path / name
        (path / "model").mkdir(parents=True)
        (path / "model" / "w.bin").write_text("half")
        if marker:
            (path / RUN_MARKER).write_text(json.dumps({"tool": "kern-finetune", "version": 1, "staging": True,
                                                       "paths": []}))
        return path

    stale, live, foreign = stage(".out-new-stale", True), stage(".out-new-live", True), stage(".out-new-user", False)
    old = stage(".out-old-stale", True)
    other = stage(".other-new-x", True)  # another output folder's: not this run's business
    with open(live / RUN_MARKER, "r+") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)  # a run that is still alive
        with staged_output(tmp_path / "out") as s:
            (s / "metrics.json").write_text("{}")
        assert not stale.exists() and not old.exists()
        assert live.exists() and foreign.exists() and other.exists()


# --- 14. output folders and files readable by others (umask respected) -------------------------------------------

def test_outputs_are_readable_by_others(base_records, shared_cache: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    import json
    import stat

    from kern_finetune.output.save import RUN_MARKER

    export = _small_export(base_records, tmp_path / "base.json")
    out = tmp_path / "out"
    old = os.umask(0o022)
    try:
        assert main(_run_args(export, out, shared_cache)) == 0, capsys.readouterr().err
        assert main(_run_args(export, out, shared_cache, "--seed", "7")) == 0, capsys.readouterr().err  # replaces it
    finally:
        os.umask(old)
    marker = json.loads((out / RUN_MARKER).read_text())
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.name != RUN_MARKER)
    assert marker["paths"] == written and "model/config.json" in written
    for p in [out, *out.rglob("*")]:
        mode = stat.S_IMODE(p.stat().st_mode)
        assert mode == (0o755 if p.is_dir() else 0o644), (p, oct(mode))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.json", "out"]


# --- 15. label_issues.csv never holds a live spreadsheet formula ----------------------------------------------------

def test_label_issues_csv_neutralises_formula_cells(tmp_path: Path) -> None:
    import csv

    from kern_finetune.labels.label_check import write_label_issues

    hostile = ["=HYPERLINK(\"http://x\")", "+1+1", "-2+3", "@SUM(A1)", "\tTab", "\rCR", "Sports", "a=b"]
    path = tmp_path / "label_issues.csv"
    write_label_issues(path, {"ids": ["=1", "7", "-3", "x", "y", "z", "w", "v"], "given": hostile,
                              "suggested": list(reversed(hostile)), "probability_given": [0.125] * 8})
    rows = list(csv.reader(path.open(newline="", encoding="utf-8")))[1:]
    for row in rows:
        for cell in row[:3]:
            assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), row
    assert [r[1] for r in rows] == ["'" + h if h[0] in "=+-@\t\r" else h for h in hostile]
    assert rows[1][0] == "7" and rows[0][3] == "0.125"


# --- 16. a zip member named ../../x.json is not carried into the written snapshot -----------------------------------

@pytest.mark.parametrize("member", ["../../x.json", "/abs/x.json", "..\\\\evil\\\\x.json"])
def test_written_snapshot_has_a_plain_member_name(member: str, tmp_path: Path, shared_cache: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    import zipfile

    from kern_finetune.refinery.snapshot import read_snapshot, write_snapshot

    with zipfile.ZipFile(SNAPSHOT) as zf:
        (info,) = [i for i in zf.infolist() if i.filename.endswith(".json")]
        raw = zf.read(info)
    src = tmp_path / "evil.zip"
    with zipfile.ZipFile(src, "w") as zf:
        zf.writestr(member, raw)
    if member.startswith("../"):  # the whole way, once, through the CLI
        out = tmp_path / "with.zip"
        code = main(["run", "--export", str(src), "--task", "topic", "--mode", "head", "--out", str(tmp_path / "run"),
                     "--cache-dir", str(shared_cache), "--epochs", "1", "--spread", "0", "--smooth", "0",
                     "--write-snapshot", str(out)])
        printed = capsys.readouterr().out
        assert code == 0 and "is not a plain file name" in printed
    else:
        snap = read_snapshot(src)
        ids = [str(r["running_id"]) for r in snap.records]
        out = tmp_path / "with.zip"
        written = write_snapshot(src, out, ids=ids, vectors=np.ones((len(ids), 4)), model="m")
        assert any("not a plain file name" in n for n in written.notices)
    with zipfile.ZipFile(out) as zf:
        names = zf.namelist()
    assert names == ["x.json"], names


# --- 12. the seed's range is checked at the config boundary: the flag and the webhook's option check ------------------

@pytest.mark.parametrize("seed", ["-1", "99999999999"])
def test_a_seed_out_of_range_is_one_line(seed: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from kern_finetune.config import RunConfig
    from kern_finetune.errors import ConfigError

    export = _small_export([{"running_id": str(i), "Title": f"t {i}", "__Topic__MANUAL": "ab"[i % 2]}
                            for i in range(12)], tmp_path / "e.json")
    code = main(_run_args(export, tmp_path / "out", tmp_path / "cache", "--seed", seed))
    err = _one_line_error(capsys, code)
    assert "seed" in err and seed in err and "4294967295" in err
    with pytest.raises(ConfigError, match="seed must be in"):
        RunConfig.from_options({"task": "Topic", "seed": int(seed)}, trigger=True)
    assert not (tmp_path / "out").exists()


# --- 9. ids and names are checked whole (no trailing newline), and a bad project id never reaches a URL ------------

def test_project_ids_and_embedding_names_are_checked_whole(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from kern_finetune.config import RunConfig
    from kern_finetune.errors import ConfigError
    from kern_finetune.refinery.api import RefineryClient
    from kern_finetune.service.trigger import validate_trigger

    for pid in ("abc\n", "../../etc", "a/b", "", "-x"):
        with pytest.raises(ConfigError, match="project_id"):
            validate_trigger({"project_id": pid, "options": {"task": "Topic"}})
    assert validate_trigger({"project_id": "abc", "options": {}})[0] == "abc"
    for name in ("../../../etc/x\n", "a/b", "x\n", " x", "x" * 201):
        with pytest.raises(ConfigError, match="embedding_name"):
            RunConfig(embedding_name=name).validate()
        with pytest.raises(ConfigError, match="embedding_name"):
            validate_trigger({"project_id": "abc", "options": {"embedding_name": name}})
    RunConfig(embedding_name="Title-classification-kern-finetune-all-MiniLM-L6-v2").validate()

    client = RefineryClient("http://127.0.0.1:9", "u", "p", project_id="../../x")
    with pytest.raises(ConfigError, match=r"project id .*'\.\./\.\./x'"):  # before any request: no host blamed
        client.get_export()

    for bad in ("a/b", "../../etc", "x\n"):
        code = main(["host", "--export", str(tmp_path / "none.json"), "--project-id", bad, "--port", "0",
                     "--data-dir", str(tmp_path / "host")])
        err = _one_line_error(capsys, code)
        assert "--project-id" in err and repr(bad) in err
    assert not (tmp_path / "host").exists()


# --- 4. the input cap holds for every stream, not only regular files -----------------------------------------------

def test_the_input_cap_holds_for_dev_zero(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("KERN_FINETUNE_MAX_INPUT_MB", "2")
    code = main(["run", "--export", "/dev/zero", "--mode", "head", "--out", str(tmp_path / "out"),
                 "--cache-dir", str(tmp_path / "cache")])
    err = _one_line_error(capsys, code, want=1)
    assert "/dev/zero holds more than 2 MiB" in err and "KERN_FINETUNE_MAX_INPUT_MB" in err


# --- 17. messages that say what is wrong: gzip by its bytes, CSV named as CSV, empty texts as empty ------------------

def test_gzip_is_told_by_its_bytes_not_its_suffix(base_records, tmp_path: Path) -> None:
    import gzip
    import json

    from kern_finetune.refinery.export import load_export

    for name in ("export.json.GZ", "export.json", "export"):
        path = tmp_path / name
        path.write_bytes(gzip.compress(json.dumps(base_records[:5]).encode()))
        assert load_export(path) == base_records[:5]
    plain = tmp_path / "plain.json.gz"  # a plain file named .gz reads as what it is
    plain.write_text(json.dumps(base_records[:3]))
    assert load_export(plain) == base_records[:3]


@pytest.mark.parametrize("name", ["records.csv", "records.json"])
def test_a_csv_export_is_named_as_csv(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    export = tmp_path / name
    export.write_text("running_id,Title,Topic\n1,hello,Sports\n2,world,World\n")
    code = main(["run", "--export", str(export), "--out", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "c")])
    err = _one_line_error(capsys, code, want=1)
    assert "looks like CSV" in err and ".json" in err and "snapshot (.zip)" in err and str(export) in err


def test_all_empty_texts_say_the_texts_are_empty(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    export = _small_export([{"running_id": str(i), "Title": "", "Body": None, "__Topic__MANUAL": "ab"[i % 2]}
                            for i in range(20)], tmp_path / "e.json")
    code = main(_run_args(export, tmp_path / "out", tmp_path / "cache", "--text-attributes", "Title,Body"))
    err = _one_line_error(capsys, code, want=1)
    assert "text is empty" in err and "'Title', 'Body'" in err and "--text-attributes" in err
    assert "threshold" not in err


# --- 18. labels that differ only by case or spaces: one warning line naming them ------------------------------------

def test_labels_differing_by_case_or_spaces_are_named(base_records, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from kern_finetune.errors import SelectionError

    records = [dict(r) for r in base_records]
    for i, r in enumerate(records):
        for col in ("__Topic__MANUAL", "__Topic__WEAK_SUPERVISION"):
            if r.get(col) == "Sports" and i % 2 == 0:
                r[col] = "sports"
            elif r.get(col) == "World" and i % 2 == 1:
                r[col] = "World "
    export = _small_export(records, tmp_path / "e.json")

    def stop(*_args, **_kwargs):
        raise SelectionError("stopped after the selection (test)")

    monkeypatch.setattr("kern_finetune.pipeline.Encoder", stop)
    main(_run_args(export, tmp_path / "out", tmp_path / "cache"))
    warnings = [line for line in capsys.readouterr().out.splitlines() if "warning:" in line]
    assert len(warnings) == 1, warnings
    assert "'Sports' = 'sports'" in warnings[0] and "'World' = 'World '" in warnings[0]


# --- 10. a gold attribute that is not a class, and too few test records for top_1k ----------------------------------

def test_a_gold_attribute_that_is_no_class_is_warned(base_records, shared_cache: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    import json

    export = _small_export(base_records, tmp_path / "base.json")
    code = main(_run_args(export, tmp_path / "out", shared_cache, "--gold-attribute", "Title", "--text-attributes",
                          "Description"))
    out = capsys.readouterr().out
    assert code == 0
    assert "gold attribute 'Title'" in out and "does not look like a class attribute" in out
    notes = json.loads((tmp_path / "out" / "metrics.json").read_text())["evaluation_notes"]
    assert any("test records: top_" in n for n in notes)


# --- 8. a class with a single label is set aside with a warning, not a failure of the whole project -----------------

def test_a_class_with_one_label_is_set_aside(base_records, shared_cache: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    import json

    records = [dict(r) for r in base_records]
    records[0]["__Topic__MANUAL"] = "Brand new"  # a labeler just created this label
    export = _small_export(records, tmp_path / "e.json")
    code = main(_run_args(export, tmp_path / "out", shared_cache, "--gold-attribute", "Class Index"))
    out = capsys.readouterr().out
    assert code == 0
    assert "warning: 1 class(es) with fewer than 2 labels set aside for this run: 'Brand new' (1)" in out
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert "Brand new" not in metrics["train_class_counts"] and metrics["skipped"]["class_too_small"] == 1


# --- 11. a damaged cache is set aside and rebuilt; a cache that cannot be used is one line ---------------------------

def test_a_garbage_cache_file_is_set_aside_and_rebuilt(base_records, tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    from kern_finetune.vectors.encode import Encoder

    cache = tmp_path / "cache"
    cache.mkdir()
    db = cache / f"vectors-{Encoder(cache_dir=cache).identity}.sqlite"
    db.write_bytes(os.urandom(4096))
    export = _small_export(base_records[:40], tmp_path / "e.json")
    code = main(_run_args(export, tmp_path / "out", cache, "--noise-filter", "off"))
    err = capsys.readouterr().err
    assert code == 0 and "internal error" not in err, err
    (line,) = [r.getMessage() for r in caplog.records if "is damaged" in r.getMessage()]  # on stderr in a shell
    assert str(db) in line and "set aside as" in line
    assert len(list(cache.glob("*.damaged-*"))) == 1 and db.exists()


def test_damaged_cache_rows_are_encoded_again(tmp_path: Path) -> None:
    import sqlite3

    from kern_finetune.vectors.encode import Encoder

    texts = ["one text", "another text", "a third text", "the fourth"]
    fresh = Encoder(cache_dir=tmp_path / "a").encode(texts, progress=False)
    enc = Encoder(cache_dir=tmp_path / "b")
    enc.encode(texts, progress=False)
    import hashlib

    key = [hashlib.sha1(t.encode()).hexdigest() for t in texts]
    with sqlite3.connect(tmp_path / "b" / f"vectors-{enc.identity}.sqlite") as db:
        db.execute("UPDATE vec SET data = ? WHERE key = ?", (np.full(fresh.shape[1], np.nan, np.float32).tobytes(), key[0]))
        db.execute("UPDATE vec SET data = ? WHERE key = ?", (np.ones(3, np.float32).tobytes(), key[1]))
        db.execute("UPDATE vec SET data = ? WHERE key = ?", (np.zeros(fresh.shape[1], np.float32).tobytes(), key[2]))
    again = Encoder(cache_dir=tmp_path / "b")
    got = again.encode(texts, progress=False)
    assert again.n_encoded_ == 3 and again.n_cached_ == 1
    assert np.allclose(got, fresh, atol=1e-5)


def test_a_cache_folder_that_is_a_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "cache").write_text("not a folder")
    export = _small_export([{"running_id": str(i), "Title": f"t {i}", "__Topic__MANUAL": "ab"[i % 2]}
                            for i in range(12)], tmp_path / "e.json")
    code = main(_run_args(export, tmp_path / "out", tmp_path / "cache"))
    err = _one_line_error(capsys, code)
    assert "vector cache folder" in err and "--cache-dir" in err


@pytest.mark.parametrize("which", ["jobs", "host"])
def test_a_damaged_jobs_or_host_db_is_set_aside_and_rebuilt(which: str, tmp_path: Path,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    if which == "jobs":
        from kern_finetune.service.jobs import JobStore

        path = tmp_path / "jobs.sqlite3"
        path.write_bytes(os.urandom(4096))
        JobStore(path)
    else:
        from kern_finetune.host.db import DB_FILE, HostDB

        path = tmp_path / DB_FILE
        path.write_bytes(b"SQLite format 3\x00" + os.urandom(4080))  # a damaged header
        HostDB.open(tmp_path).conn.close()
    (aside,) = tmp_path.glob(f"{path.name}.damaged-*")
    assert aside.stat().st_size == 4096 and path.exists()
    assert any("is damaged" in r.getMessage() and str(path) in r.getMessage() for r in caplog.records)
