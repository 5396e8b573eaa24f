"""``kern-finetune host``: options, credentials (never from argv), and a real foreground run."""

from __future__ import annotations

import argparse
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from kern_finetune.commands import host as host_command
from kern_finetune.errors import ConfigError
from kern_finetune.host import DEMO_PASSWORD, DEMO_USER

_RUN_HOST_ONLY = (
    "import argparse, sys\n"
    "from kern_finetune.commands import host\n"
    "p = argparse.ArgumentParser(); host.register(p.add_subparsers())\n"
    "a = p.parse_args(sys.argv[1:]); sys.exit(a.func(a))\n"
)


def _parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    host_command.register(parser.add_subparsers())
    return parser.parse_args(["host", *argv])


def test_defaults_are_loopback_and_demo_user(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(host_command.PASSWORD_ENV, raising=False)
    args = _parse("--export", "x.json")
    assert args.host == "127.0.0.1" and args.port == 4455
    assert not hasattr(args, "push_extension")  # the host always answers as a real refinery does
    with pytest.raises(SystemExit):
        _parse("--export", "x.json", "--no-push-extension")
    assert host_command._credentials(args) == (DEMO_USER, DEMO_PASSWORD)


def test_password_comes_from_file_or_env_never_argv(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(host_command.PASSWORD_ENV, raising=False)
    with pytest.raises(SystemExit):
        _parse("--password", "secret")
    with pytest.raises(ConfigError, match="needs a password"):
        host_command._credentials(_parse("--user-name", "me@x.org"))
    pw = tmp_path / "pw"
    pw.write_text("s3cret pass\n", encoding="utf-8")
    assert host_command._credentials(_parse("--user-name", "me@x.org", "--password-file", str(pw))) == ("me@x.org", "s3cret pass")
    monkeypatch.setenv(host_command.PASSWORD_ENV, "from-env")
    assert host_command._credentials(_parse("--user-name", "me@x.org")) == ("me@x.org", "from-env")
    empty = tmp_path / "empty"
    empty.write_text("", encoding="utf-8")
    with pytest.raises(ConfigError, match="empty"):
        host_command._credentials(_parse("--user-name", "me@x.org", "--password-file", str(empty)))


def test_secrets_file_is_written_atomically(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "secrets.json"
    path.parent.mkdir()
    path.write_text("old", encoding="utf-8")
    os.chmod(path, 0o644)
    host_command._write_secrets(path, {"user_name": "u", "password": "p", "project_id": "x", "uri": "http://h"})
    assert json.loads(path.read_text())["password"] == "p"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600  # the replaced file's mode does not carry over
    assert [p.name for p in path.parent.iterdir()] == ["secrets.json"]  # no temporary file left


def test_foreground_host_writes_secrets_and_serves(tmp_path: Path) -> None:
    export = tmp_path / "export.json"
    export.write_text(json.dumps([{"running_id": str(i), "Title": f"t{i}", "__Topic__MANUAL": None} for i in range(6)]))
    pw = tmp_path / "pw"
    pw.write_text("a long password\n", encoding="utf-8")
    secrets_path = tmp_path / "secrets.json"
    argv = ["host", "--export", str(export), "--port", "0", "--data-dir", str(tmp_path / "state"),
            "--user-name", "me@x.org", "--password-file", str(pw), "--write-secrets", str(secrets_path)]
    env = {k: v for k, v in os.environ.items() if k != host_command.PASSWORD_ENV}
    proc = subprocess.Popen([sys.executable, "-c", _RUN_HOST_ONLY, *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    try:
        deadline = time.monotonic() + 120
        while not secrets_path.exists():  # written to a temporary file, then renamed: complete once it exists
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, "host did not start"
            time.sleep(0.1)
        secrets = json.loads(secrets_path.read_text())
        assert stat.S_IMODE(secrets_path.stat().st_mode) == 0o600
        assert secrets["user_name"] == "me@x.org" and secrets["password"] == "a long password"
        uri = secrets["uri"]
        assert uri.startswith("http://127.0.0.1:") and not uri.endswith(":0")
        flow = requests.get(uri + "/.ory/kratos/public/self-service/login/api", timeout=10).json()
        token = requests.post(flow["ui"]["action"], timeout=10, json={
            "method": "password", "password": secrets["password"], "password_identifier": secrets["user_name"]
        }).json()["session_token"]
        headers = {"Authorization": f"Bearer {token}", "identifier": token}
        resp = requests.get(f"{uri}/api/project/{secrets['project_id']}/export", timeout=10, headers=headers)
        assert len(json.loads(resp.json())) == 6
        resp = requests.get(f"{uri}/api/project/{secrets['project_id']}/embeddings", timeout=10, headers=headers)
        assert resp.status_code == 404 and resp.json() == {"detail": "Not Found"}  # refinery's proxy lacks it
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert "a long password" not in out
    assert token not in out


def test_port_out_of_range_is_one_line(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "kern_finetune", "host", "--export", str(tmp_path / "x.json"),
                           "--data-dir", str(tmp_path / "state"), "--port", "99999"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "port" in proc.stderr, proc.stderr
