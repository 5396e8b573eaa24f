"""A small, faithful stand-in for a refinery host, for client tests over real HTTP on 127.0.0.1.

It speaks what ``docs/refinery-api.md`` and ``docs/push-contract.md`` describe: the Ory Kratos API
login flow, ``Authorization: Bearer`` + ``identifier`` headers, ``error_code`` bodies, the
double-encoded export and the staged/served embedding upload. On top it can misbehave on request
(:meth:`FakeHost.fail`): answer 500, sleep past the client's timeout, drop the connection before or
after doing the work, or answer 401 as if the session had expired.

Not the product's host (that is ``kern_finetune.host``); this one exists so the client can be tested
on its own and quickly, with faults the real one does not fake.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

LOGIN_FLOW = "/.ory/kratos/public/self-service/login/api"
LOGIN_ACTION = "/.ory/kratos/public/self-service/login"


@dataclass
class Fault:
    method: str
    path: re.Pattern[str]
    action: str  # "500" | "sleep:<s>" | "drop" | "drop-after" | "401"
    times: int


@dataclass
class Request:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes


@dataclass
class FakeHost:
    users: dict[str, str] = field(default_factory=dict)
    forbidden: set[str] = field(default_factory=set)
    projects: dict[str, dict[str, Any]] = field(default_factory=dict)
    export_override: dict[str, bytes] = field(default_factory=dict)
    tokens: dict[str, str] = field(default_factory=dict)  # token -> user
    served: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # project -> name -> emb
    staged: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> emb
    faults: list[Fault] = field(default_factory=list)
    log: list[Request] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    # ---- set-up -------------------------------------------------------------------------------
    def add_project(self, project_id: str, records: list[dict[str, Any]], *, name: str = "Test project") -> None:
        attrs = [k for k in records[0] if "__" not in k]
        self.projects[project_id] = {
            "details": {
                "name": name,
                "description": "fake",
                "tokenizer": "en_core_web_sm",
                "attributes": [
                    {"name": a, "data_type": "INTEGER" if a == "running_id" else "TEXT", "is_primary_key": a == "running_id"}
                    for a in attrs
                ],
                "knowledge_base_ids": [],
            },
            "records": records,
        }
        self.served.setdefault(project_id, {})

    def fail(self, method: str, path_regex: str, action: str, times: int = 1) -> None:
        self.faults.append(Fault(method, re.compile(path_regex), action, times))

    def expire_tokens(self) -> None:
        self.tokens.clear()

    def served_vectors(self, project_id: str, name: str) -> dict[str, list[float]] | None:
        emb = self.served.get(project_id, {}).get(name)
        return None if emb is None else emb["vectors"]

    def requests_to(self, method: str, pattern: str) -> list[Request]:
        rx = re.compile(pattern)
        return [r for r in self.log if r.method == method and rx.search(r.path)]

    # ---- dispatch -------------------------------------------------------------------------------
    def _take_fault(self, method: str, path: str) -> str | None:
        with self.lock:
            for f in self.faults:
                if f.times > 0 and f.method == method and f.path.search(path):
                    f.times -= 1
                    return f.action
        return None

    def handle(self, req: Request) -> tuple[int, Any]:
        path = req.path
        if req.method == "GET" and path == LOGIN_FLOW:
            flow = uuid.uuid4().hex
            return 200, {"id": flow, "type": "api", "ui": {"action": f"{self.url}{LOGIN_ACTION}?flow={flow}", "method": "POST"}}
        if req.method == "POST" and path == LOGIN_ACTION:
            if "flow" not in req.query:
                return 400, {"error": {"message": "missing flow"}}
            body = json.loads(req.body or b"{}")
            user = body.get("password_identifier") or body.get("identifier")
            if body.get("method") != "password" or self.users.get(user) != body.get("password"):
                return 400, {"ui": {"messages": [{"id": 4000006, "text": "The provided credentials are invalid.", "type": "error"}]}}
            token = "tok-" + uuid.uuid4().hex
            self.tokens[token] = user
            return 200, {"session_token": token, "session": {"identity": {"traits": {"email": user}}}}
        if not path.startswith("/api/project/"):
            return 404, {"detail": "not found"}
        auth = req.headers.get("authorization", "")
        token = auth[7:] if auth.startswith("Bearer ") else None
        if token is None or token not in self.tokens or req.headers.get("identifier") != token:
            return 401, {"error_code": "UNRECOGNIZED_USER"}
        if self.tokens[token] in self.forbidden:
            return 403, {"error_code": "FORBIDDEN_USER"}
        parts = path[len("/api/project/"):].strip("/").split("/")
        pid = parts[0]
        if pid not in self.projects:
            return 404, {"error_code": "PROJECT_NOT_FOUND"}
        rest = parts[1:]
        proj = self.projects[pid]
        if req.method == "GET" and not rest:
            return 200, proj["details"]
        if req.method == "GET" and rest == ["export"]:
            if pid in self.export_override:
                return 200, self.export_override[pid]
            records = proj["records"]
            if "num_samples" in req.query:
                records = records[: int(req.query["num_samples"][0])]
            return 200, json.dumps(records)  # a JSON string holding the JSON list: double-encoded
        if rest and rest[0] == "embeddings":
            return self._embeddings(req, pid, rest[1:])
        if req.method == "POST" and rest == ["similarity"]:
            body = json.loads(req.body)
            emb = self._find(pid, body["embedding"])
            if emb is None:
                return 404, {"error_code": "EMBEDDING_NOT_FOUND"}
            q = emb["vectors"].get(str(body["record_id"]))
            if q is None:
                return 404, {"error_code": "RECORD_NOT_FOUND"}
            dists = sorted(
                (math.dist(q, v), rid) for rid, v in emb["vectors"].items() if rid != str(body["record_id"])
            )[: int(body.get("limit", 100))]
            return 200, {"record_ids": [r for _, r in dists], "scores": [d for d, _ in dists]}
        return 404, {"detail": "no such route"}

    def _find(self, pid: str, key: str) -> dict[str, Any] | None:
        for emb in self.served[pid].values():
            if key in (emb["name"], emb["id"]):
                return emb
        return None

    def _embeddings(self, req: Request, pid: str, rest: list[str]) -> tuple[int, Any]:
        ids = {str(r["running_id"]) for r in self.projects[pid]["records"]}
        if req.method == "GET" and not rest:
            return 200, [_public(e) for e in self.served[pid].values()]
        if req.method == "POST" and not rest:
            spec = json.loads(req.body)
            emb = {**spec, "id": str(uuid.uuid4()), "state": "INITIALIZING", "project": pid, "vectors": {}}
            self.staged[emb["id"]] = emb
            return 201, _public(emb)
        emb_id = rest[0]
        emb = self.staged.get(emb_id)
        served = next((e for e in self.served[pid].values() if e["id"] == emb_id), None)
        if req.method == "DELETE" and len(rest) == 1:
            if emb is None:
                return 404, {"error_code": "EMBEDDING_NOT_FOUND"}
            del self.staged[emb_id]
            return 200, {"deleted": emb_id}
        if req.method == "PUT" and rest[1:] == ["tensors"]:
            if emb is None:
                return 404, {"error_code": "EMBEDDING_NOT_FOUND"}
            body = json.loads(req.body)
            for t in body["tensors"]:
                data = t["data"]
                if len(data) != emb["dimension"] or not all(math.isfinite(x) for x in data):
                    return 422, {"error_code": "INVALID_TENSOR", "detail": f"bad vector for {t['record_id']}"}
                if str(t["record_id"]) not in ids:
                    return 422, {"error_code": "UNKNOWN_RECORD", "detail": f"unknown record {t['record_id']}"}
            for t in body["tensors"]:
                emb["vectors"][str(t["record_id"])] = t["data"]
            emb["state"] = "ENCODING"
            return 200, {"received": len(body["tensors"]), "stored": len(emb["vectors"])}
        if req.method == "POST" and rest[1:] == ["finalize"]:
            if served is not None:  # idempotent: a repeated finalize of the served version
                return 200, _public(served)
            if emb is None:
                return 404, {"error_code": "EMBEDDING_NOT_FOUND"}
            if set(emb["vectors"]) != ids:
                return 409, {"error_code": "EMBEDDING_INCOMPLETE", "detail": f"{len(emb['vectors'])} of {len(ids)}"}
            emb["state"] = "FINISHED"
            with self.lock:
                del self.staged[emb_id]
                self.served[pid][emb["name"]] = emb
            return 200, _public(emb)
        return 404, {"detail": "no such route"}


def _public(emb: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in emb.items() if k not in ("vectors", "project")}


def _handler(host: FakeHost) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:  # quiet
            pass

        def _serve(self) -> None:
            parts = urlsplit(self.path)
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            req = Request(self.command, parts.path, parse_qs(parts.query), {k.lower(): v for k, v in self.headers.items()}, body)
            host.log.append(req)
            action = host._take_fault(self.command, parts.path)
            if action == "drop":
                self.close_connection = True
                self.connection.shutdown(2)
                return
            if action and action.startswith("sleep:"):
                time.sleep(float(action.split(":", 1)[1]))
            if action == "500":
                return self._send(500, {"detail": "internal error"})
            if action == "401":
                return self._send(401, {"error_code": "UNRECOGNIZED_USER"})
            status, payload = host.handle(req)
            if action == "drop-after":  # the work is done, the answer is lost
                self.close_connection = True
                self.connection.shutdown(2)
                return
            self._send(status, payload)

        def _send(self, status: int, payload: Any) -> None:
            raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        do_GET = do_POST = do_PUT = do_DELETE = _serve

    return Handler


class Running:
    """A started fake host: ``.url``, ``.host``; ``stop()``."""

    def __init__(self, host: FakeHost) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(host))
        self.server.daemon_threads = True
        self.host = host
        host.url = self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
