"""Outputs are atomic (issue 16.3): a run writes into a temporary folder beside ``--out`` and replaces it as
a whole only once everything is written; a failed run leaves the earlier output as it was and no half
folder; ``--out`` naming a file or a folder of other files is a one-line error before any work."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from kern_finetune.cli import main
from kern_finetune.config import RunConfig
from kern_finetune.errors import ConfigError
from kern_finetune.pipeline import run_pipeline
from kern_finetune.output.save import RUN_MARKER, RUN_OUTPUTS, check_out_dir, staged_output



def _snapshot(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder``, by relative path."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _config(cache: Path, **kw) -> RunConfig:
    return RunConfig(mode="head", task="Topic", text_attributes=["Title"], gold_attribute="Class Index", epochs=2,
                     cache_dir=cache, **kw)


@pytest.fixture(scope="module")
def records(subset_records) -> list[dict]:
    return subset_records[:300]


def test_a_failed_run_leaves_the_earlier_output_whole(records, shared_cache: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "runs" / "latest"
    first = run_pipeline(records, _config(shared_cache), out_dir=out)
    assert first.out_dir == out and first.model_dir == out / "model"
    assert {p.name for p in out.iterdir()} == RUN_OUTPUTS  # label_issues.csv: the label check is on by default
    before = _snapshot(out)

    def broken_report(*_args, **_kw):
        raise RuntimeError("injected failure while writing the report")

    monkeypatch.setattr("kern_finetune.output.write.write_report", broken_report)
    with pytest.raises(RuntimeError, match="injected failure"):
        run_pipeline(records, _config(shared_cache, seed=7, noise_filter="off"), out_dir=out)
    assert _snapshot(out) == before  # model, vectors, metrics and report all from the first run
    assert [p.name for p in out.parent.iterdir()] == ["latest"]  # no temporary folder left beside it

    # a successful run replaces the folder as a whole: no file of the earlier run survives
    monkeypatch.undo()
    second = run_pipeline(records, _config(shared_cache, seed=7, noise_filter="off"), out_dir=out)
    assert {p.name for p in out.iterdir()} == RUN_OUTPUTS - {"label_issues.csv"}
    assert json.loads((out / "metrics.json").read_text())["config"]["seed"] == 7
    assert second.metrics["label_fingerprint"] == json.loads((out / "metrics.json").read_text())["label_fingerprint"]
    assert [p.name for p in out.parent.iterdir()] == ["latest"]


def test_staged_output_replaces_or_keeps(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with staged_output(out) as stage:
        (stage / "metrics.json").write_text("1")
        assert not out.exists()  # nothing visible until the block ends
    assert (out / "metrics.json").read_text() == "1"
    with pytest.raises(KeyboardInterrupt), staged_output(out) as stage:
        (stage / "metrics.json").write_text("2")
        raise KeyboardInterrupt
    assert (out / "metrics.json").read_text() == "1" and sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    with staged_output(out) as stage:
        (stage / "vectors.npz").write_text("3")
    assert sorted(p.name for p in out.iterdir()) == [RUN_MARKER, "vectors.npz"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_out_dir_checks(tmp_path: Path) -> None:
    assert check_out_dir(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(ConfigError, match="is a file"):
        check_out_dir(tmp_path / "a-file")
    with pytest.raises(ConfigError, match="is a file"):
        check_out_dir(tmp_path / "a-file" / "sub")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("precious")
    with pytest.raises(ConfigError, match="notes.txt"):
        check_out_dir(mine)
    with pytest.raises(ConfigError), staged_output(mine):
        pass
    assert (mine / "notes.txt").read_text() == "precious"
    (tmp_path / "link").symlink_to(tmp_path / "new")
    with pytest.raises(ConfigError, match="symbolic link"):
        check_out_dir(tmp_path / "link")


def test_the_current_folder_is_never_replaced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    for target in (".", "..", str(work)):
        with pytest.raises(ConfigError, match="current folder"):
            check_out_dir(Path(target))
    with staged_output(Path("runs") / "x") as stage:  # a sub-folder is fine
        (stage / "metrics.json").write_text("{}")
    assert (work / "runs" / "x" / "metrics.json").exists() and Path.cwd() == work


@pytest.mark.parametrize("kind", ["file", "foreign folder", "under a file"])
def test_run_with_a_bad_out_is_one_line(kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    export = tmp_path / "export.json"
    export.write_text(json.dumps([{"running_id": str(i), "Title": f"t {i}", "__Topic__MANUAL": "ab"[i % 2]}
                                  for i in range(12)]))
    target = tmp_path / "target"
    if kind == "file":
        target.write_text("not a folder")
    elif kind == "foreign folder":
        target.mkdir()
        (target / "thesis.tex").write_text("keep me")
    else:
        target.write_text("not a folder")
        target = target / "run"
    code = main(["run", "--export", str(export), "--out", str(target), "--cache-dir", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "--out" in err or "is a file" in err
    assert not list(tmp_path.glob(".target*"))
