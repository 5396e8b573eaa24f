"""Request-size limits enforced while the body streams in, before any route or auth reads it (issue 16.1).

Both servers run in this process (threads), so the test process's own RSS is the servers' memory: a
150 MB chunked upload without credentials must be refused without it growing by 20 MB.
"""

from __future__ import annotations

import json
import select
import socket
import threading
from pathlib import Path
from typing import Any

import requests

from kern_finetune.host import serve_in_thread as host_in_thread
from kern_finetune.service import SIGNATURE_HEADER, serve_in_thread, sign

USER = "labeler@example.org"
PASSWORD = "correct horse battery staple"
SECRET = "test-secret-0123456789abcdef"
MB = 1 << 20


def _rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


class _PeakRss:
    """Samples this process's RSS every 10 ms while active; ``.growth`` is the peak over the start value."""

    def __enter__(self) -> _PeakRss:
        self.start = self.peak = _rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, _rss_bytes())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())

    @property
    def growth(self) -> int:
        return self.peak - self.start


def _offer_chunked(url: str, method: str, path: str, total: int, headers: dict[str, str] | None = None
                   ) -> tuple[int, dict[str, Any], int]:
    """Send ``total`` bytes as a chunked body (1 MiB chunks) on a raw socket, reading the answer as soon
    as one arrives (then keep offering the rest, as a careless client would). Returns (status, JSON body,
    bytes sent before the answer came)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    head = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}", "Transfer-Encoding: chunked",
            "Content-Type: application/json"] + [f"{k}: {v}" for k, v in (headers or {}).items()]
    chunk = b"[" * MB
    frame = b"%x\r\n" % len(chunk) + chunk + b"\r\n"
    answer = b""
    sent_at_answer = -1
    with socket.create_connection((host, int(port)), timeout=60) as sock:
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode())
        sent = 0
        try:
            while sent < total:
                sock.sendall(frame)
                sent += len(chunk)
                if sent_at_answer < 0 and select.select([sock], [], [], 0)[0]:
                    sent_at_answer = sent
                    answer += sock.recv(65536)
            sock.sendall(b"0\r\n\r\n")
        except OSError:  # the server may close the connection once it has answered
            pass
        if sent_at_answer < 0:
            sent_at_answer = sent
        sock.settimeout(60)
        while b"\r\n\r\n" not in answer or len(answer.split(b"\r\n\r\n", 1)[1]) < _content_length(answer):
            data = sock.recv(65536)
            if not data:
                break
            answer += data
    status_line, rest = answer.split(b"\r\n", 1)
    body = rest.split(b"\r\n\r\n", 1)[1]
    return int(status_line.split()[1]), json.loads(body[: _content_length(answer)]), sent_at_answer


def _content_length(answer: bytes) -> int:
    head = answer.split(b"\r\n\r\n", 1)[0].lower()
    for line in head.split(b"\r\n"):
        if line.startswith(b"content-length:"):
            return int(line.split(b":", 1)[1])
    return 1 << 30


def _export(path: Path) -> Path:
    records = [{"running_id": str(i), "Title": f"title {i}", "__Topic__MANUAL": ["a", "b"][i % 2]} for i in range(20)]
    path.write_text(json.dumps(records), encoding="utf-8")
    return path


def _login(url: str) -> str:
    action = requests.get(url + "/.ory/kratos/public/self-service/login/api", timeout=30).json()["ui"]["action"]
    r = requests.post(action, json={"method": "password", "password": PASSWORD, "identifier": USER}, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["session_token"]


def test_host_refuses_a_150mb_chunked_upload_without_a_token_in_flat_memory(tmp_path: Path) -> None:
    with host_in_thread(_export(tmp_path / "export.json"), data_dir=tmp_path / "state", user_name=USER,
                        password=PASSWORD) as host:
        path = f"/api/project/{host.project_id}/associations"
        requests.get(host.url + "/health", timeout=30)  # warm up the server before measuring
        with _PeakRss() as rss:
            status, body, sent = _offer_chunked(host.url, "POST", path, 150 * MB)
        assert status == 401, body  # refused for want of a token (a client with an expired one logs in again)
        # refused as oathkeeper refuses a request without a valid token (docs/host.md), before the body is read
        assert body["error"]["code"] == 401 and body["error"]["message"] == "Access credentials are invalid", body
        assert rss.growth < 20 * MB, f"RSS grew by {rss.growth / MB:.1f} MB"
        # still serving, and the same request with a token gets past the anonymous limit
        token = _login(host.url)
        status, body, _ = _offer_chunked(host.url, "POST", path, 1 * MB, {"Authorization": f"Bearer {token}"})
        assert status != 413 and status < 500, (status, body)
        # an announced Content-Length over the limits: refused before the body is sent
        for headers, status, limit in (({}, 401, "65536"), ({"Authorization": "Bearer expired"}, 401, "65536"),
                                       ({"Authorization": f"Bearer {token}"}, 413, str(64 * MB))):
            r = requests.post(host.url + path, headers={"Content-Length": str(64 * MB + 1), **headers}, data=b"",
                             timeout=30)
            detail = r.json()["error"]["reason"] if status == 401 else r.json()["detail"]
            assert r.status_code == status and limit in detail, r.text
        r = requests.post(host.url + path, headers={"Content-Length": "12x"}, timeout=30)
        assert r.status_code == 400, r.text


def test_service_refuses_a_150mb_chunked_upload_without_a_signature_in_flat_memory(tmp_path: Path) -> None:
    calls: list[Any] = []
    with serve_in_thread(tmp_path / "data", SECRET, calls.append) as svc:
        requests.get(svc.url + "/healthz", timeout=30)
        with _PeakRss() as rss:
            status, body, _ = _offer_chunked(svc.url, "POST", "/v1/jobs", 150 * MB)
        assert status == 413 and body["error"] == "payload_too_large", body
        assert rss.growth < 20 * MB, f"RSS grew by {rss.growth / MB:.1f} MB"
        # a signed chunked body over the limit is refused the same way, and nothing is queued
        status, body, _ = _offer_chunked(svc.url, "POST", "/v1/jobs", 1 * MB, {SIGNATURE_HEADER: sign(SECRET, b"x")})
        assert status == 413, body
        assert svc.store.count() == 0 and calls == []
