"""``--help`` shows the options a user sets and fits a screen; ``--help-all`` shows every option.

Line counts are taken at 80 columns (argparse wraps option help to the terminal's width; a wider terminal
gives fewer lines)."""

from __future__ import annotations

import dataclasses

import pytest

from kern_finetune.cli import main
from kern_finetune.config import BASIC_OPTIONS, RunConfig, flag_of, run_options

MAX_LINES = 60


def _help(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, *argv: str) -> str:
    monkeypatch.setenv("COLUMNS", "80")
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    assert exit_info.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("command", ["run", "sync", "demo"])
def test_help_fits_a_screen(command: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    text = _help(capsys, monkeypatch, command, "--help")
    lines = text.splitlines()
    assert len(lines) <= MAX_LINES, f"{command} --help has {len(lines)} lines (at most {MAX_LINES}):\n{text}"
    assert "--help-all" in text


def test_run_help_shows_what_a_user_sets(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    text = _help(capsys, monkeypatch, "run", "--help")
    for flag in ("--export", "--task", "--text-attributes", "--threshold", "--gold-attribute", "--out", "--mode",
                 "--device", "--write-snapshot"):
        assert flag in text, flag
    for flag in ("--loss", "--epochs", "--smooth", "--spread", "--cache-dir", "--json"):
        assert flag not in text, f"{flag} is an advanced option: --help-all lists it"


def test_sync_help_shows_the_doors_and_their_paths(capsys: pytest.CaptureFixture[str],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    text = _help(capsys, monkeypatch, "sync", "--help")
    for flag in ("--secrets", "--task", "--door", "--models-dir", "--snapshot", "--write-snapshot", "--out",
                 "--mode", "--force"):
        assert flag in text, flag
    assert "--timeout" not in text and "--loss" not in text


@pytest.mark.parametrize("command", ["run", "sync", "demo"])
def test_help_all_lists_every_option(command: str, capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    text = _help(capsys, monkeypatch, command, "--help-all")
    for name, opt, _typ, _default in run_options():
        assert flag_of(name, opt) in text, f"{command} --help-all lacks {flag_of(name, opt)}"
    assert "--json" in text


def test_basic_options_are_run_options() -> None:
    assert BASIC_OPTIONS <= {f.name for f in dataclasses.fields(RunConfig)}
