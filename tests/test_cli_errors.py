"""The CLI's promise: one line on stderr and a non-zero exit, never a traceback (unless ``-v``)."""

from __future__ import annotations

import pytest

from kern_finetune import cli
from kern_finetune.errors import SelectionError


def _boom(exc: BaseException):
    def run(_args):
        raise exc
    return run


def test_an_unexpected_exception_is_one_line(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("kern_finetune.commands.run._run", _boom(RuntimeError("disk on fire\nsecond line")))
    assert cli.main(["run", "--export", "x.json"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "internal error: RuntimeError: disk on fire" in err and "second line" not in err


def test_verbose_shows_the_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("kern_finetune.commands.run._run", _boom(RuntimeError("disk on fire")))
    with pytest.raises(RuntimeError, match="disk on fire"):
        cli.main(["-v", "run", "--export", "x.json"])


def test_a_user_error_keeps_its_exit_code(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("kern_finetune.commands.run._run", _boom(SelectionError("too few labels; every class needs at least 2")))
    assert cli.main(["run", "--export", "x.json"]) == 1
    assert capsys.readouterr().err == "kern-finetune: error: too few labels; every class needs at least 2\n"
