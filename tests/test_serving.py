"""kern_finetune.web.serving: what the local host and the trigger service share, on real sockets, files and SQLite."""

from __future__ import annotations

import socket
import sqlite3
import stat
from pathlib import Path

import pytest
import requests
from fastapi import FastAPI

from kern_finetune.errors import ConfigError
from kern_finetune.web.serving import (
    DataDirLock,
    ServerThread,
    atomic_write_text,
    format_url,
    immediate_transaction,
    listening_socket,
)


def test_format_url_brackets_ipv6_only() -> None:
    assert format_url("127.0.0.1", 4455) == "http://127.0.0.1:4455"
    assert format_url("localhost", 80) == "http://localhost:80"
    assert format_url("::1", 8765) == "http://[::1]:8765"


def test_listening_socket_takes_a_free_port_and_refuses_a_busy_one() -> None:
    with listening_socket("127.0.0.1", 0) as sock:
        port = sock.getsockname()[1]
        assert port > 0
        with socket.create_connection(("127.0.0.1", port), timeout=10):
            pass  # it listens before any server runs
        with pytest.raises(ConfigError, match=f"cannot listen on 127.0.0.1:{port}"):
            listening_socket("127.0.0.1", port)
    with pytest.raises(ConfigError, match="a port is 0"):
        listening_socket("127.0.0.1", 70000)


def test_server_thread_serves_then_stops() -> None:
    app = FastAPI()

    @app.get("/ping")
    def ping() -> dict[str, str]:
        return {"pong": "yes"}

    sock = listening_socket("127.0.0.1", 0)
    server = ServerThread(app, sock, name="test-serving")
    assert server.app is app
    try:
        assert server.start(timeout=60)
        assert server.is_alive()
        url = format_url("127.0.0.1", server.port)
        assert requests.get(url + "/ping", timeout=30).json() == {"pong": "yes"}
    finally:
        server.stop()
        sock.close()
    assert not server.is_alive()
    with pytest.raises(requests.ConnectionError):
        requests.get(url + "/ping", timeout=5)


def test_data_dir_lock_admits_one_holder(tmp_path: Path) -> None:
    first = DataDirLock(tmp_path, "x.lock", holder="test server")
    first.acquire()
    second = DataDirLock(tmp_path, "x.lock", holder="test server")
    with pytest.raises(ConfigError, match=f"another test server uses the data dir {tmp_path}"):
        second.acquire()
    first.release()
    second.acquire()  # free again once released
    second.release()
    second.release()  # releasing twice is harmless


def test_atomic_write_text_leaves_the_whole_file_with_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "secrets.json"
    atomic_write_text(path, '{"a": 1}\n')
    assert path.read_text() == '{"a": 1}\n'
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    atomic_write_text(path, "second\n", mode=0o644)
    assert path.read_text() == "second\n" and stat.S_IMODE(path.stat().st_mode) == 0o644
    assert sorted(p.name for p in path.parent.iterdir()) == ["secrets.json"]  # no temporary file left


def test_atomic_write_text_keeps_the_old_file_when_writing_fails(tmp_path: Path) -> None:
    path = tmp_path / "service.json"
    path.write_text("old\n")
    with pytest.raises(TypeError):
        atomic_write_text(path, None)  # type: ignore[arg-type]
    assert path.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["service.json"]


def test_immediate_transaction_commits_or_rolls_back(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "t.sqlite3", isolation_level=None)
    conn.execute("CREATE TABLE t (v INTEGER)")
    with immediate_transaction(conn):
        conn.execute("INSERT INTO t VALUES (1)")
    with pytest.raises(RuntimeError):
        with immediate_transaction(conn):
            conn.execute("INSERT INTO t VALUES (2)")
            raise RuntimeError("boom")
    assert [r[0] for r in conn.execute("SELECT v FROM t")] == [1]
    assert not conn.in_transaction
    conn.close()
