"""HTTP client for a refinery(-compatible) host: login, project, record export, embedding push.

The request shapes are those of ``docs/refinery-api.md`` (read from the public refinery SDK and
gateway code) plus the upload contract of ``docs/push-contract.md``.

Credentials come from, in this order of precedence (see :func:`client_from_options`):

- a refinery SDK-style ``secrets.json``: ``{"user_name", "password", "project_id", "uri"}``
  (:meth:`RefineryClient.from_secrets`);
- environment variables (:meth:`RefineryClient.from_env`):

  ``KERN_FINETUNE_USER``      the user name (e-mail) to log in with
  ``KERN_FINETUNE_PASSWORD``  its password
  ``KERN_FINETUNE_URI``       the host, default ``http://localhost:4455`` (a self-hosted refinery)
  ``KERN_FINETUNE_PROJECT``   optional default project id

Reliability rules:

- every request has a timeout (``timeout`` seconds; the export, which can be large, gets
  ``export_timeout``);
- *idempotent* requests (every GET, the tensor-chunk PUT, which is an upsert, the finalize POST, which
  the host must answer with 200 when the version is already served, and DELETE) are retried on
  connection errors, timeouts and 5xx, ``retries`` times, sleeping ``backoff * 2**attempt`` seconds in
  between; the embedding-create POST is retried only when the connection could not be opened at all
  (the request never reached the host), so a retry can never stage two versions;
- a 401 on an API call, whatever its body (refinery's proxy answers ``{"error_code": ...}``, but an
  expired token is refused earlier by oathkeeper with its own body), triggers one fresh login and one
  repeat of the call; a second 401 is an :class:`AuthError` that says the fresh session was refused;
- refinery's proxy turns every gateway status it does not map into ``200`` with body ``null``
  (refinery-gateway-proxy ``app.py``): such an answer is a gateway failure, retried like a 5xx and then
  raised as :class:`HostUnavailableError` that says so, never handed on as data;
- host ``error_code``\\ s map onto :mod:`kern_finetune.errors`: ``UNRECOGNIZED_USER`` /
  ``FORBIDDEN_USER`` -> :class:`AuthError`, ``PROJECT_NOT_FOUND`` -> :class:`ProjectNotFoundError`,
  exhausted retries -> :class:`HostUnavailableError`;
- the password and the session token never appear in logs, exception messages or ``repr``: they are
  sent only in the login body and the ``Authorization``/``identifier`` headers, and every message the
  client builds passes through a scrubber that masks both. Userinfo written into the URI
  (``http://user:PW@host``) is dropped with a warning: never sent, shown, logged or stored
  (:func:`kern_finetune._net.redact_uri`); credentials come from the secrets file or the environment.

Writing vectors: the ``api`` door (``docs/push-contract.md``) is an extension proposed for refinery's
issues #24 / #48 that a refinery-compatible host (``kern-finetune host``) may implement; no refinery
version has it. :meth:`RefineryClient.offers_push_extension` asks the host before anything is encoded.
"""

from __future__ import annotations

import base64
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urljoin, urlsplit

import numpy as np
import requests

from .errors import (
    AuthError,
    ConfigError,
    ExportError,
    HostError,
    HostUnavailableError,
    KernFinetuneError,
    ProjectNotFoundError,
    PushError,
)
from ._net import host_identity, redact_uri
from .refinery.columns import PLATFORM, Record, embedding_name, model_short_name
from .refinery.export import parse_export_payload

__all__ = [
    "DEFAULT_URI",
    "ENV_USER",
    "ENV_PASSWORD",
    "ENV_URI",
    "ENV_PROJECT",
    "RefineryClient",
    "PushResult",
    "SimilarRecords",
    "client_from_options",
]

log = logging.getLogger(__name__)

DEFAULT_URI = "http://localhost:4455"
ENV_USER = "KERN_FINETUNE_USER"
ENV_PASSWORD = "KERN_FINETUNE_PASSWORD"
ENV_URI = "KERN_FINETUNE_URI"
ENV_PROJECT = "KERN_FINETUNE_PROJECT"
_LOGIN_PATH = "/.ory/kratos/public/self-service/login/api"
_AUTH_CODES = {"UNRECOGNIZED_USER", "FORBIDDEN_USER"}
_MASK = "***"

ProgressFn = Callable[[str], None]


@dataclass(frozen=True)
class PushResult:
    """What a finished push left on the host: the served embedding version."""

    embedding_id: str
    name: str
    count: int
    dimension: int
    chunks: int
    state: str = "FINISHED"


@dataclass(frozen=True)
class SimilarRecords:
    """A host's similarity-search answer, ranked as the host ranked it.

    refinery's data browser returns at most 100 records within the embedding's similarity
    threshold, the query record first (distance 0); ``query_included`` says whether this host did.
    ``threshold`` is None where the host applies none.
    """

    record_id: str
    record_ids: list[str]
    scores: list[float]
    threshold: float | None
    embedding: str

    @property
    def query_included(self) -> bool:
        return bool(self.record_ids) and self.record_ids[0] == self.record_id

    @property
    def neighbours(self) -> list[str]:
        """The results other than the query record."""
        return [r for r in self.record_ids if r != self.record_id]


@dataclass
class _Attempt:
    """Outcome of one HTTP exchange (private)."""

    response: requests.Response | None = None
    error: str = ""
    retryable: bool = False
    gateway_null: bool = False


class RefineryClient:
    """Speak to one refinery(-compatible) host as one user.

    ``session`` may be any :class:`requests.Session` (tests swap the transport with it). The client
    logs in lazily, on the first API call, or explicitly with :meth:`login`. ``project_id`` is the
    default project for calls that take ``project_id=None``.
    """

    def __init__(
        self,
        uri: str,
        user_name: str,
        password: str,
        *,
        timeout: float = 30.0,
        export_timeout: float | None = None,
        retries: int = 3,
        backoff: float = 0.5,
        session: requests.Session | None = None,
        project_id: str | None = None,
    ) -> None:
        if not uri:
            raise ConfigError("no host URI given")
        self.identity = host_identity(uri)  # validates; ConfigError for a URI that names no host
        """The host however its URI is spelled (:func:`kern_finetune._net.host_identity`)."""
        if not user_name or not password:
            raise ConfigError("user name and password are both required to log in")
        if timeout <= 0 or retries < 0 or backoff < 0:
            raise ConfigError("timeout must be positive, retries and backoff not negative")
        # Userinfo (http://user:PW@host) is dropped: never sent (requests would turn it into a Basic
        # header over our bearer token), shown, logged or stored. Credentials come from secrets/env.
        self._uri_password = urlsplit(uri).password
        if "@" in urlsplit(uri).netloc:
            log.warning("ignoring the user name/password written into the host URI; use --secrets or the environment")
        self._base = redact_uri(uri.strip()).rstrip("/")
        self.uri = self._base
        """The host URI as requests go to it and messages show it: without userinfo."""
        self.user_name = user_name
        self._password = password
        self.timeout = float(timeout)
        self.export_timeout = float(export_timeout if export_timeout is not None else max(timeout, 300.0))
        self.retries = int(retries)
        self.backoff = float(backoff)
        self.session = session if session is not None else requests.Session()
        self.project_id = project_id
        self._token: str | None = None
        self._sleep: Callable[[float], None] = time.sleep

    # ----------------------------------------------------------------------------------------------
    # construction from secrets / environment

    @classmethod
    def from_secrets(cls, path: str | Path, *, uri: str | None = None, **kwargs: Any) -> RefineryClient:
        """Build from a refinery SDK-style ``secrets.json`` (``uri`` overrides the file's)."""
        path = Path(path)
        try:
            content = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"secrets file not found: {path}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"cannot read secrets file {path}: {type(exc).__name__}") from None
        except json.JSONDecodeError as exc:
            # never echo the file's content: it holds the password
            raise ConfigError(f"secrets file {path} is not valid JSON (line {exc.lineno})") from None
        if not isinstance(content, dict):
            raise ConfigError(f"secrets file {path} must hold a JSON object")
        missing = [k for k in ("user_name", "password") if not content.get(k)]
        if missing:
            raise ConfigError(f"secrets file {path} lacks {', '.join(missing)}")
        return cls(
            uri or content.get("uri") or DEFAULT_URI,
            str(content["user_name"]),
            str(content["password"]),
            project_id=kwargs.pop("project_id", None) or content.get("project_id"),
            **kwargs,
        )

    @classmethod
    def from_env(cls, *, uri: str | None = None, **kwargs: Any) -> RefineryClient:
        """Build from ``KERN_FINETUNE_USER`` / ``_PASSWORD`` / ``_URI`` / ``_PROJECT``."""
        user, password = os.environ.get(ENV_USER), os.environ.get(ENV_PASSWORD)
        if not user or not password:
            raise ConfigError(
                f"no credentials: pass --secrets FILE or set {ENV_USER} and {ENV_PASSWORD}"
            )
        return cls(
            uri or os.environ.get(ENV_URI) or DEFAULT_URI,
            user,
            password,
            project_id=kwargs.pop("project_id", None) or os.environ.get(ENV_PROJECT) or None,
            **kwargs,
        )

    def __repr__(self) -> str:
        state = "logged in" if self._token else "not logged in"
        return f"RefineryClient(uri={self.uri!r}, user_name={self.user_name!r}, {state})"

    __str__ = __repr__

    # ----------------------------------------------------------------------------------------------
    # secrets hygiene

    def _scrub(self, text: str) -> str:
        """Mask the password and the token wherever they might appear in ``text``."""
        for secret in (self._password, self._token, self._uri_password):
            if secret:
                text = text.replace(secret, _MASK)
        return text

    # ----------------------------------------------------------------------------------------------
    # login

    @property
    def logged_in(self) -> bool:
        return self._token is not None

    def login(self) -> None:
        """Ory Kratos API flow: fetch a login flow, post the password to its action URL, keep the token."""
        self._token = None
        flow_url = self._base + _LOGIN_PATH
        resp = self._send("GET", flow_url, headers={"Accept": "application/json"}, idempotent=True, what="login flow")
        if resp.status_code != 200:
            raise self._error_for(resp, what="login flow")
        try:
            action = resp.json()["ui"]["action"]
            if not isinstance(action, str) or not action:
                raise TypeError
        except (ValueError, KeyError, TypeError):
            raise AuthError(f"{self.uri} did not answer the login flow with ui.action: is it a refinery host?") from None
        action = urljoin(self._base + "/", action)
        body = {"method": "password", "password": self._password, "password_identifier": self.user_name}
        # Creating a session is harmless to repeat: retried like an idempotent call.
        resp = self._send(
            "POST",
            action,
            headers={"Accept": "application/json", "content-type": "application/json"},
            data=json.dumps(body),
            idempotent=True,
            what="login",
        )
        token = None
        if resp.status_code == 200:
            try:
                token = resp.json().get("session_token")
            except (ValueError, AttributeError):
                token = None
        if resp.status_code in (400, 401, 403) or (resp.status_code == 200 and not token):
            raise AuthError(f"login refused for user {self.user_name!r} at {self.uri}: check user name and password")
        if resp.status_code != 200:
            raise self._error_for(resp, what="login")
        self._token = str(token)
        log.info("logged in to %s as %s", self.uri, self.user_name)

    # ----------------------------------------------------------------------------------------------
    # transport

    def _headers(self) -> dict[str, str]:
        assert self._token is not None
        return {
            "Authorization": f"Bearer {self._token}",
            "identifier": self._token,
            "content-type": "application/json",
            "Accept": "application/json",
        }

    def _send(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str],
        data: str | bytes | None = None,
        params: dict[str, Any] | None = None,
        idempotent: bool,
        what: str,
        timeout: float | None = None,
        null_ok: bool = False,
    ) -> requests.Response:
        """One request with retries/backoff; returns the last response (any status) or raises
        :class:`HostUnavailableError` when no usable answer came back.

        ``200`` with body ``null`` is refinery's proxy passing on a gateway failure: retried like a
        5xx (when ``idempotent``), then raised, unless ``null_ok`` (the door probe reads it itself).
        """
        timeout = timeout or self.timeout
        path = urlsplit(url).path
        last = ""
        gateway_null = False
        for attempt in range(self.retries + 1):
            outcome = self._once(method, url, headers=headers, data=data, params=params, timeout=timeout,
                                 idempotent=idempotent, null_ok=null_ok)
            gateway_null = outcome.gateway_null
            if outcome.response is not None and not outcome.retryable and not gateway_null:
                return outcome.response
            last = outcome.error
            if outcome.response is not None and not gateway_null:
                last = f"HTTP {outcome.response.status_code}"
            if not outcome.retryable or attempt == self.retries:
                break
            delay = self.backoff * (2**attempt)
            log.warning("%s %s: %s; retry %d/%d in %.1fs", method, path, last, attempt + 1, self.retries, delay)
            self._sleep(delay)
        tries = attempt + 1
        if gateway_null:
            raise HostUnavailableError(self._scrub(
                f"{what}: the refinery gateway behind {self.uri} failed ({method} {path} answered 200 with body "
                f"null, the proxy's answer for any gateway error; {tries} attempt(s)): see the refinery-gateway logs"
            ))
        raise HostUnavailableError(self._scrub(f"{what} failed at {self.uri}{path} after {tries} attempt(s): {last}"))

    def _once(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str],
        data: str | bytes | None,
        params: dict[str, Any] | None,
        timeout: float,
        idempotent: bool,
        null_ok: bool = False,
    ) -> _Attempt:
        path = urlsplit(url).path
        try:
            resp = self.session.request(
                method, url, headers=headers, data=data, params=params, timeout=(min(timeout, 10.0), timeout),
                allow_redirects=False,
            )
        except requests.exceptions.ConnectTimeout:
            return _Attempt(error="connect timeout", retryable=True)
        except requests.exceptions.Timeout:
            return _Attempt(error=f"no answer within {timeout:g}s", retryable=idempotent)
        except requests.exceptions.ConnectionError as exc:
            never_sent = _never_sent(exc)
            return _Attempt(error=_describe_connection_error(exc), retryable=idempotent or never_sent)
        except requests.exceptions.RequestException as exc:
            return _Attempt(error=type(exc).__name__, retryable=False)
        log.debug("%s %s -> %d", method, path, resp.status_code)
        if resp.status_code >= 500:
            return _Attempt(response=resp, retryable=idempotent)
        if resp.status_code == 200 and not null_ok and _is_null(resp):
            return _Attempt(response=resp, error="200 null", retryable=idempotent, gateway_null=True)
        return _Attempt(response=resp)

    def _request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: dict[str, Any] | None = None,
        idempotent: bool | None = None,
        what: str = "",
        timeout: float | None = None,
        ok: tuple[int, ...] = (200, 201, 204),
        null_ok: bool = False,
    ) -> requests.Response:
        """An authenticated API call: lazy login, one re-login on any 401, errors mapped onto our classes."""
        if idempotent is None:
            idempotent = method in ("GET", "PUT", "DELETE", "HEAD")
        what = what or f"{method} {path}"
        if self._token is None:
            self.login()
        data = body if isinstance(body, (str, bytes)) or body is None else json.dumps(body)
        url = self._base + path
        for relogin in (False, True):
            resp = self._send(method, url, headers=self._headers(), data=data, params=params,
                              idempotent=idempotent, what=what, timeout=timeout, null_ok=null_ok)
            # Any 401: the token is unknown or expired. refinery's proxy says so with
            # {"error_code": "UNRECOGNIZED_USER"}, but oathkeeper checks the bearer token first and
            # refuses an expired one with its own body ({"error": {"code": 401, ...}}), or, where its
            # redirect error handler applies (refinery's oathkeeper/access-rules.yml, the /api rule),
            # with a redirect to the login page: log in once more.
            refused = resp.status_code == 401 or _to_login(resp)
            if refused and not relogin:
                log.info("%s: session expired or refused (HTTP %d), logging in again", what, resp.status_code)
                self.login()
                continue
            if refused:
                reason = _error_code(resp) or _error_detail(resp) or (
                    "redirected to the login page" if _to_login(resp) else "no reason given")
                raise AuthError(self._scrub(
                    f"{what}: {self.uri} refused a fresh session of user {self.user_name!r} (HTTP "
                    f"{resp.status_code} again after logging in anew: {reason}); check that this user may use "
                    "the API of this project"
                ))
            break
        if resp.status_code in ok:
            return resp
        raise self._error_for(resp, what=what)

    def _error_for(self, resp: requests.Response, *, what: str) -> HostError:
        """Map a non-success response onto the error tree (message scrubbed, no body dump)."""
        code = _error_code(resp)
        detail = _error_detail(resp)
        suffix = f": {detail}" if detail else ""
        if code in _AUTH_CODES or resp.status_code in (401, 403):
            reason = code or f"HTTP {resp.status_code}"
            return AuthError(self._scrub(f"{what}: the host refused user {self.user_name!r} ({reason}){suffix}"))
        if code == "PROJECT_NOT_FOUND":
            return ProjectNotFoundError(self._scrub(f"{what}: project not found on {self.uri}{suffix}"))
        if resp.status_code >= 500:
            return HostUnavailableError(self._scrub(f"{what}: host error HTTP {resp.status_code}{suffix}"))
        if 300 <= resp.status_code < 400:
            where = redact_uri(resp.headers.get("location", "?"))
            return HostError(self._scrub(f"{what}: {self.uri} redirected to {where} (HTTP {resp.status_code}); "
                                         "pass the URI the host really answers on"))
        label = f"{code} " if code else ""
        return HostError(self._scrub(f"{what}: {label}HTTP {resp.status_code}{suffix}"))

    # ----------------------------------------------------------------------------------------------
    # reading

    def _project(self, project_id: str | None) -> str:
        pid = project_id or self.project_id
        if not pid:
            raise ConfigError("no project id: pass --project ID or put project_id in the secrets file")
        return str(pid)

    def get_project(self, project_id: str | None = None) -> dict[str, Any]:
        """``GET /api/project/{id}``: name, description, tokenizer, attributes, knowledge_base_ids."""
        pid = self._project(project_id)
        resp = self._request("GET", f"/api/project/{pid}", what="reading the project")
        data = _json(resp, what="project details")
        if isinstance(data, str):  # some hosts double-encode here too
            data = json.loads(data)
        if not isinstance(data, dict):
            raise HostError(f"project details are a {type(data).__name__}, expected an object")
        return data

    def get_export(self, project_id: str | None = None, num_samples: int | None = None) -> list[Record]:
        """``GET /api/project/{id}/export[?num_samples=N]``: the records, decoded twice.

        A malformed body raises :class:`~kern_finetune.errors.ExportError`.
        """
        pid = self._project(project_id)
        params = {"num_samples": int(num_samples)} if num_samples is not None else None
        resp = self._request(
            "GET", f"/api/project/{pid}/export", params=params, what="reading the export", timeout=self.export_timeout
        )
        try:
            return parse_export_payload(resp.content)
        except ExportError as exc:
            raise ExportError(f"export from {self.uri} is malformed: {exc}") from None

    def list_embeddings(self, project_id: str | None = None) -> list[dict[str, Any]]:
        """``GET /api/project/{id}/embeddings``: the served embeddings."""
        pid = self._project(project_id)
        data = _json(self._request("GET", f"/api/project/{pid}/embeddings", what="listing embeddings"), what="embeddings")
        if isinstance(data, dict) and isinstance(data.get("embeddings"), list):
            data = data["embeddings"]
        if not isinstance(data, list):
            raise HostError("embedding list is not a JSON list")
        return data

    def offers_push_extension(self, project_id: str | None = None) -> bool:
        """Does this host take vectors through the ``api`` door (``docs/push-contract.md``)?

        Asks ``GET /api/project/{id}/embeddings``: a JSON list means yes. ``404`` without
        ``PROJECT_NOT_FOUND`` (refinery's proxy answers ``{"detail": "Not Found"}`` for routes it lacks)
        or ``200 null`` (a gateway behind the proxy that lacks it) means no. Auth and project errors
        are raised as on any call. Cheap: nothing is encoded or sent but this one read.
        """
        pid = self._project(project_id)
        resp = self._request("GET", f"/api/project/{pid}/embeddings", what="asking for the push extension",
                             ok=(200, 404, 405), null_ok=True)
        if resp.status_code != 200:
            if _error_code(resp) == "PROJECT_NOT_FOUND":
                raise ProjectNotFoundError(f"asking for the push extension: project {pid} not found on {self.uri}")
            return False
        try:
            data = resp.json()
        except ValueError:
            return False
        if isinstance(data, dict):
            data = data.get("embeddings")
        return isinstance(data, list)

    def search_similar(
        self, embedding: str, record_id: str, *, limit: int | None = None, project_id: str | None = None
    ) -> SimilarRecords:
        """``POST /api/project/{id}/similarity`` (a read of the push extension, ``docs/push-contract.md``).

        The host answers as refinery's data browser does: at most 100 records within the embedding's
        similarity threshold, the query record first. ``limit`` (1..100) asks for fewer; None sends
        none (the host's default, 100).
        """
        pid = self._project(project_id)
        body: dict[str, Any] = {"embedding": embedding, "record_id": str(record_id)}
        if limit is not None:
            body["limit"] = int(limit)
        resp = self._request(
            "POST", f"/api/project/{pid}/similarity", body=body, idempotent=True,  # a read
            what="similarity search",
        )
        data = _json(resp, what="similarity result")
        ids = data.get("record_ids") if isinstance(data, dict) else None
        if not isinstance(ids, list):
            raise HostError("similarity result lacks record_ids")
        scores = data.get("scores")
        threshold = data.get("threshold")
        return SimilarRecords(
            record_id=str(data.get("record_id", record_id)),
            record_ids=[str(i) for i in ids],
            scores=[float(x) for x in scores] if isinstance(scores, list) and len(scores) == len(ids) else [],
            threshold=float(threshold) if isinstance(threshold, (int, float)) and not isinstance(threshold, bool) else None,
            embedding=str(data.get("embedding", embedding)),
        )

    def similarity(
        self, embedding: str, record_id: str, *, limit: int | None = None, project_id: str | None = None
    ) -> list[str]:
        """The record ids of :meth:`search_similar`, in the host's order (the query first)."""
        return self.search_similar(embedding, record_id, limit=limit, project_id=project_id).record_ids

    # ----------------------------------------------------------------------------------------------
    # pushing (docs/push-contract.md)

    def create_embedding(self, project_id: str, spec: dict[str, Any]) -> dict[str, Any]:
        """Stage a new embedding version (not retried once the request may have reached the host)."""
        resp = self._request(
            "POST", f"/api/project/{project_id}/embeddings", body=spec, idempotent=False, what="creating the embedding"
        )
        data = _json(resp, what="created embedding")
        if not isinstance(data, dict) or not data.get("id"):
            raise PushError("the host did not return an id for the new embedding")
        return data

    def upload_tensors(self, project_id: str, embedding_id: str, chunk: int, tensors: list[dict[str, Any]]) -> dict[str, Any]:
        """Upload one chunk (an upsert by record id, so retried freely)."""
        body = _dumps_chunk(chunk, tensors)
        resp = self._request(
            "PUT",
            f"/api/project/{project_id}/embeddings/{embedding_id}/tensors",
            body=body,
            idempotent=True,
            what=f"uploading chunk {chunk}",
        )
        data = _json(resp, what="chunk receipt")
        return data if isinstance(data, dict) else {}

    def finalize_embedding(self, project_id: str, embedding_id: str, count: int) -> dict[str, Any]:
        """Make the staged version the served one. Retried: the host answers a repeat with 200."""
        resp = self._request(
            "POST",
            f"/api/project/{project_id}/embeddings/{embedding_id}/finalize",
            body={"count": int(count)},
            idempotent=True,
            what="finalizing the embedding",
        )
        data = _json(resp, what="finalize result")
        return data if isinstance(data, dict) else {}

    def delete_embedding(self, project_id: str, embedding_id: str) -> bool:
        """Drop a staged version; best effort, never raises. True when the host confirmed."""
        try:
            self._request(
                "DELETE", f"/api/project/{project_id}/embeddings/{embedding_id}", what="dropping the staged embedding",
                ok=(200, 202, 204, 404),
            )
            return True
        except KernFinetuneError as exc:
            log.warning("could not drop staged embedding %s: %s", embedding_id, exc)
            return False

    def push_embedding(
        self,
        project_id: str | None,
        name: str | None,
        ids: list[str] | list[Any],
        vectors: np.ndarray,
        *,
        attribute: str,
        model: str,
        chunk_size: int = 1000,
        progress: ProgressFn | None = None,
        tensor_format: str = "json",
    ) -> PushResult:
        """Create, upload in chunks, finalize; on any failure drop the staged version and raise.

        ``name`` None -> :func:`kern_finetune.refinery.columns.embedding_name`. Vectors are L2-normalised here again
        (defensively: the host ranks by Euclidean distance). Until finalize succeeds the previously
        served embedding of that name stays served and nothing of the new one is visible.
        Raises :class:`PushError` (host refused), :class:`HostUnavailableError` (host kept failing),
        or :class:`AuthError` / :class:`ProjectNotFoundError`.

        ``tensor_format`` ``"json"`` sends ``data`` as a list of floats (the contract's base form);
        ``"b64"`` sends ``data_b64``, base64 of little-endian float32 (the contract's optional compact
        form, about a third of the bytes; the local host accepts it).
        """
        if tensor_format not in ("json", "b64"):
            raise ConfigError(f"tensor_format must be 'json' or 'b64', got {tensor_format!r}")
        pid = self._project(project_id)
        say = progress or (lambda _msg: None)
        name = name or embedding_name(attribute, model=model)
        ids_s, unit = _prepare_vectors(ids, vectors)
        if chunk_size < 1:
            raise ConfigError(f"chunk_size must be at least 1, got {chunk_size}")
        n, dim = unit.shape
        n_chunks = math.ceil(n / chunk_size)
        spec = {
            "name": name,
            "attribute": attribute,
            "type": "ON_ATTRIBUTE",
            "custom": True,
            "dimension": int(dim),
            "platform": PLATFORM,
            "model": model_short_name(model),
            "count": int(n),
        }
        say(f"push: staging {name!r} ({n} vectors, {dim} dims) on {self.uri}")
        try:
            created = self.create_embedding(pid, spec)
        except HostError as exc:
            raise _as_push_error(exc, name) from None
        emb_id = str(created["id"])
        stage = "upload"
        try:
            for k in range(n_chunks):
                lo, hi = k * chunk_size, min(n, (k + 1) * chunk_size)
                tensors = [_tensor(ids_s[i], unit[i], tensor_format) for i in range(lo, hi)]
                receipt = self.upload_tensors(pid, emb_id, k, tensors)
                got = receipt.get("received", hi - lo)
                if got != hi - lo:
                    raise PushError(f"chunk {k}: host received {got} of {hi - lo} vectors")
                say(f"push: chunk {k + 1}/{n_chunks} ({hi} of {n} vectors)")
            stage = "finalize"
            final = self.finalize_embedding(pid, emb_id, n)
            state = str(final.get("state", "FINISHED"))
            if state != "FINISHED":
                raise PushError(f"finalize left the embedding in state {state}")
        except Exception as exc:  # noqa: BLE001 - any failure must drop the staged version
            if stage == "finalize" and self._is_served(pid, emb_id, name):
                # the finalize went through but its answer was lost: the push did succeed
                log.info("finalize answer lost, but %s is served: push succeeded", name)
                say(f"push: {name!r} is served")
                return PushResult(emb_id, name, n, dim, n_chunks)
            dropped = self.delete_embedding(pid, emb_id)
            note = "staged version dropped" if dropped else "staged version left for the host to expire"
            say(f"push: failed during {stage} ({note}); the previous embedding stays served")
            if isinstance(exc, KernFinetuneError):
                raise _as_push_error(exc, name, note=note) from None
            raise PushError(self._scrub(f"pushing {name!r} failed during {stage}: {type(exc).__name__}: {exc} ({note})")) from None
        say(f"push: {name!r} is served ({n} vectors)")
        return PushResult(emb_id, name, n, dim, n_chunks, state)

    def _is_served(self, project_id: str, embedding_id: str, name: str) -> bool:
        """Best effort: is ``embedding_id`` now the served version of ``name``?"""
        try:
            served = self.list_embeddings(project_id)
        except KernFinetuneError:
            return False
        return any(str(e.get("id")) == embedding_id and e.get("state", "FINISHED") == "FINISHED" for e in served)


def client_from_options(
    *, uri: str | None = None, secrets: str | Path | None = None, **kwargs: Any
) -> RefineryClient:
    """The client a command line asks for: ``--secrets FILE`` if given, else the environment;
    ``--uri`` overrides the URI of either."""
    if secrets:
        return RefineryClient.from_secrets(secrets, uri=uri, **kwargs)
    return RefineryClient.from_env(uri=uri, **kwargs)


# --------------------------------------------------------------------------------------------------
# helpers


def _prepare_vectors(ids: list[Any], vectors: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Check ids and vectors, L2-normalise; returns (ids as strings, unit rows rounded to 7 places).

    Rounding to 7 decimals keeps float32 precision and cuts the JSON to a third of full reprs.
    """
    arr = np.asarray(vectors, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise PushError(f"vectors must be a non-empty n x d array, got shape {arr.shape}")
    if len(ids) != arr.shape[0]:
        raise PushError(f"{len(ids)} ids but {arr.shape[0]} vectors")
    ids_s = [str(i) for i in ids]
    if len(set(ids_s)) != len(ids_s):
        raise PushError("duplicate record ids: each record must get exactly one vector")
    if not np.isfinite(arr).all():
        raise PushError("vectors hold NaN or infinite values")
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    if (norms == 0).any():
        raise PushError(f"{int((norms == 0).sum())} zero vector(s) cannot be L2-normalised")
    return ids_s, np.round(arr / norms, 7)


def _tensor(record_id: str, row: np.ndarray, tensor_format: str) -> dict[str, Any]:
    if tensor_format == "b64":
        return {"record_id": record_id, "data_b64": base64.b64encode(row.astype("<f4").tobytes()).decode("ascii")}
    return {"record_id": record_id, "data": row.tolist()}


def _dumps_chunk(chunk: int, tensors: list[dict[str, Any]]) -> str:
    return json.dumps({"chunk": int(chunk), "tensors": tensors}, separators=(",", ":"))


def _as_push_error(exc: KernFinetuneError, name: str, note: str = "") -> KernFinetuneError:
    """Keep auth/project/availability errors as they are; any other host refusal becomes PushError."""
    if isinstance(exc, (AuthError, ProjectNotFoundError, HostUnavailableError, PushError)):
        if note and isinstance(exc, (HostUnavailableError, PushError)):
            return type(exc)(f"pushing {name!r}: {exc} ({note}; the previous embedding stays served)")
        return exc
    return PushError(f"the host refused embedding {name!r}: {exc}" + (f" ({note})" if note else ""))


def _to_login(resp: requests.Response) -> bool:
    """A redirect to a login page: how oathkeeper's redirect error handler refuses a session."""
    return 300 <= resp.status_code < 400 and "login" in resp.headers.get("location", "").lower()


def _is_null(resp: requests.Response) -> bool:
    """The body is JSON ``null``: what refinery's proxy answers for a gateway error."""
    return resp.content.strip() == b"null"


def _json(resp: requests.Response, *, what: str) -> Any:
    try:
        return resp.json()
    except ValueError:
        raise HostError(f"{what}: the host answered HTTP {resp.status_code} with a body that is not JSON") from None


def _error_code(resp: requests.Response) -> str | None:
    try:
        data = resp.json()
    except ValueError:
        return None
    if isinstance(data, dict):
        code = data.get("error_code")
        if code is None and isinstance(data.get("detail"), dict):
            code = data["detail"].get("error_code")
        return str(code) if code else None
    return None


def _error_detail(resp: requests.Response) -> str:
    """A short reason from the body (``detail`` / ``error_message``), never the whole body."""
    try:
        data = resp.json()
    except ValueError:
        return ""
    if not isinstance(data, dict):
        return ""
    for key in ("detail", "error_message", "message", "error"):
        value = data.get(key)
        if isinstance(value, dict):  # FastAPI's {"detail": {...}}, oathkeeper's {"error": {"message", ...}}
            value = value.get("detail") or value.get("message") or value.get("reason")
        if isinstance(value, str) and value:
            return value[:300]
    return ""


def _never_sent(exc: requests.exceptions.ConnectionError) -> bool:
    """True when the connection could not even be opened (refused / DNS): the host saw nothing."""
    text = repr(exc)
    return any(s in text for s in ("NewConnectionError", "Connection refused", "NameResolutionError"))


def _describe_connection_error(exc: requests.exceptions.ConnectionError) -> str:
    text = repr(exc)
    if "Connection refused" in text or "NewConnectionError" in text:
        return "connection refused"
    if "RemoteDisconnected" in text or "ConnectionResetError" in text or "aborted" in text:
        return "connection dropped"
    return "connection error"
