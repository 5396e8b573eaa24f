"""HTTP to one refinery(-compatible) host as one user: login, retries, re-login, errors with context.

:class:`Transport` knows how to reach the host and stay logged in, not what the routes mean. Its rules
(timeouts, which calls are retried, one re-login on any 401, ``200 null`` as a gateway failure, error codes
onto :mod:`kern_finetune.errors`, secrets masked): "Reliability decisions" in ``docs/refinery-sdk.md``.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable
from urllib.parse import urljoin, urlsplit

import requests

from ..web.net import check_project_id, host_identity, redact_uri
from ..errors import AuthError, ConfigError, HostError, HostUnavailableError, ProjectNotFoundError

__all__ = ["Transport", "json_body", "error_code", "error_detail", "to_login", "SESSION_COOKIE",
           "CSRF_COOKIE_PREFIX"]

log = logging.getLogger(__name__)

_LOGIN_PATH = "/.ory/kratos/public/self-service/login/api"
_AUTH_CODES = {"UNRECOGNIZED_USER", "FORBIDDEN_USER"}
_MASK = "***"
SESSION_COOKIE = "ory_kratos_session"
"""Kratos's browser-session cookie (refinery ``oathkeeper/oathkeeper.yml``, ``cookie_session``: ``only``)."""
CSRF_COOKIE_PREFIX = "csrf_token"


@dataclass
class _Attempt:
    """Outcome of one HTTP exchange."""

    response: requests.Response | None = None
    error: str = ""
    retryable: bool = False
    gateway_null: bool = False


class Transport:
    """Reach one host as one user: lazy Kratos login, retried requests, one re-login on a refused session.
    ``project_id`` is the default project for calls that take ``project_id=None`` (:meth:`project`)."""

    def __init__(self, uri: str, user_name: str, password: str, *, timeout: float = 30.0,
                 export_timeout: float | None = None, retries: int = 3, backoff: float = 0.5,
                 session: requests.Session | None = None, project_id: str | None = None) -> None:
        if not uri:
            raise ConfigError("no host URI given")
        self.identity = host_identity(uri)  # validates; ConfigError for a URI that names no host
        """The host however its URI is spelled (:func:`kern_finetune.web.net.host_identity`)."""
        if not user_name or not password:
            raise ConfigError("user name and password are both required to log in")
        if timeout <= 0 or retries < 0 or backoff < 0:
            raise ConfigError("timeout must be positive, retries and backoff not negative")
        # Userinfo (http://user:PW@host) is dropped: never sent (requests would turn it into a Basic
        # header over our bearer token), shown, logged or stored. Credentials come from secrets/env.
        self._uri_password = urlsplit(uri).password
        if "@" in urlsplit(uri).netloc:
            log.warning("ignoring the user name/password written into the host URI; use --secrets or the environment")
        self.uri = redact_uri(uri.strip()).rstrip("/")
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

    def scrub(self, text: str) -> str:
        """``text`` with the password, the token and the session's login cookies masked wherever they appear."""
        for secret in (self._password, self._token, self._uri_password, *self._cookie_secrets()):
            if secret:
                text = text.replace(secret, _MASK)
        return text

    def _cookie_secrets(self) -> list[str]:
        """The values of the browser-session and CSRF cookies the session holds (longest first)."""
        values = [c.value for c in self.session.cookies
                  if c.value and (c.name == SESSION_COOKIE or c.name.startswith(CSRF_COOKIE_PREFIX))]
        return sorted(values, key=len, reverse=True)

    def password_body(self, **fields: str) -> str:
        """A JSON login body: ``fields`` plus the password (the only way the password leaves this object)."""
        return json.dumps({**fields, "password": self._password})

    def project(self, project_id: str | None) -> str:
        """The project a call is for: ``project_id``, else the default one."""
        pid = project_id or self.project_id
        if not pid:
            raise ConfigError("no project id: pass --project ID or put project_id in the secrets file")
        return check_project_id(pid, where="the project id (--project or the secrets file's project_id)")

    @property
    def logged_in(self) -> bool:
        return self._token is not None

    def login(self) -> None:
        """Ory Kratos API flow: fetch a login flow, post the password to its action URL, keep the token."""
        self._token = None
        resp = self.send("GET", self.uri + _LOGIN_PATH, headers={"Accept": "application/json"}, idempotent=True,
                         what="login flow")
        if resp.status_code != 200:
            raise self.error_for(resp, what="login flow")
        try:
            action = resp.json()["ui"]["action"]
            if not isinstance(action, str) or not action:
                raise TypeError
        except (ValueError, KeyError, TypeError):
            raise AuthError(f"{self.uri} did not answer the login flow with ui.action: is it a refinery host?") from None
        body = {"method": "password", "password": self._password, "password_identifier": self.user_name}
        # Creating a session is harmless to repeat: retried like an idempotent call.
        resp = self.send("POST", urljoin(self.uri + "/", action), data=json.dumps(body), idempotent=True, what="login",
                         headers={"Accept": "application/json", "content-type": "application/json"})
        token = None
        if resp.status_code == 200:
            try:
                token = resp.json().get("session_token")
            except (ValueError, AttributeError):
                token = None
        if resp.status_code in (400, 401, 403) or (resp.status_code == 200 and not token):
            raise AuthError(f"login refused for user {self.user_name!r} at {self.uri}: check user name and password")
        if resp.status_code != 200:
            raise self.error_for(resp, what="login")
        self._token = str(token)
        log.info("logged in to %s as %s", self.uri, self.user_name)

    def request(self, method: str, path: str, *, body: Any = None, params: dict[str, Any] | None = None,
                idempotent: bool | None = None, what: str = "", timeout: float | None = None,
                ok: tuple[int, ...] = (200, 201, 204)) -> requests.Response:
        """An authenticated API call: lazy login, one re-login on any 401, a status outside ``ok`` raised
        (:meth:`error_for`). ``body``: sent as is when ``str``/``bytes``, else as JSON; ``idempotent``: by default
        True for GET, PUT, DELETE and HEAD."""
        if idempotent is None:
            idempotent = method in ("GET", "PUT", "DELETE", "HEAD")
        what = what or f"{method} {path}"
        if self._token is None:
            self.login()
        data = body if isinstance(body, (str, bytes)) or body is None else json.dumps(body)
        for relogin in (False, True):
            resp = self.send(method, self.uri + path, headers=self._headers(), data=data, params=params,
                             idempotent=idempotent, what=what, timeout=timeout)
            # Any 401 whatever its body, or oathkeeper's redirect to the login page: log in once more
            # (docs/refinery-sdk.md).
            if not (resp.status_code == 401 or to_login(resp)):
                break
            if not relogin:
                log.info("%s: session expired or refused (HTTP %d), logging in again", what, resp.status_code)
                self.login()
                continue
            reason = error_code(resp) or error_detail(resp) or (
                "redirected to the login page" if to_login(resp) else "no reason given")
            raise AuthError(self.scrub(
                f"{what}: {self.uri} refused a fresh session of user {self.user_name!r} (HTTP "
                f"{resp.status_code} again after logging in anew: {reason}); check that this user may use "
                "the API of this project"
            ))
        if resp.status_code in ok:
            return resp
        raise self.error_for(resp, what=what)

    def _headers(self) -> dict[str, str]:
        assert self._token is not None
        return {"Authorization": f"Bearer {self._token}", "identifier": self._token,
                "content-type": "application/json", "Accept": "application/json"}

    def send(self, method: str, url: str, *, headers: dict[str, str], data: str | bytes | None = None,
             params: dict[str, Any] | None = None, idempotent: bool, what: str, timeout: float | None = None,
             null_ok: bool = False) -> requests.Response:
        """One request with retries/backoff and only ``headers`` (the browser-session routes of
        :mod:`~kern_finetune.refinery.gateway` call it directly); returns the last response (any status) or
        raises :class:`HostUnavailableError` when no usable answer came back.

        ``200`` with body ``null`` is refinery's proxy passing on a gateway failure: retried like a
        5xx (when ``idempotent``), then raised, unless ``null_ok`` (the gateway's browser-session routes, whose answers are not the proxy's).
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
            raise HostUnavailableError(self.scrub(
                f"{what}: the refinery gateway behind {self.uri} failed ({method} {path} answered 200 with body "
                f"null, the proxy's answer for any gateway error; {tries} attempt(s)): see the refinery-gateway logs"
            ))
        raise HostUnavailableError(self.scrub(f"{what} failed at {self.uri}{path} after {tries} attempt(s): {last}"))

    def _once(self, method: str, url: str, *, headers: dict[str, str], data: str | bytes | None,
              params: dict[str, Any] | None, timeout: float, idempotent: bool, null_ok: bool = False) -> _Attempt:
        try:
            resp = self.session.request(method, url, headers=headers, data=data, params=params,
                                        timeout=(min(timeout, 10.0), timeout), allow_redirects=False)
        except requests.exceptions.ConnectTimeout:
            return _Attempt(error="connect timeout", retryable=True)
        except requests.exceptions.Timeout:
            return _Attempt(error=f"no answer within {timeout:g}s", retryable=idempotent)
        except requests.exceptions.ConnectionError as exc:
            return _Attempt(error=_describe_connection_error(exc), retryable=idempotent or _never_sent(exc))
        except requests.exceptions.RequestException as exc:
            return _Attempt(error=type(exc).__name__, retryable=False)
        log.debug("%s %s -> %d", method, urlsplit(url).path, resp.status_code)
        if resp.status_code >= 500:
            return _Attempt(response=resp, retryable=idempotent)
        if resp.status_code == 200 and not null_ok and _is_null(resp):
            return _Attempt(response=resp, error="200 null", retryable=idempotent, gateway_null=True)
        return _Attempt(response=resp)

    def error_for(self, resp: requests.Response, *, what: str) -> HostError:
        """Map a non-success response onto the error tree (message scrubbed, no body dump)."""
        code = error_code(resp)
        detail = error_detail(resp)
        suffix = f": {detail}" if detail else ""
        if code in _AUTH_CODES or resp.status_code in (401, 403):
            reason = code or f"HTTP {resp.status_code}"
            return AuthError(self.scrub(f"{what}: the host refused user {self.user_name!r} ({reason}){suffix}"))
        if code == "PROJECT_NOT_FOUND":
            return ProjectNotFoundError(self.scrub(f"{what}: project not found on {self.uri}{suffix}"))
        if resp.status_code >= 500:
            return HostUnavailableError(self.scrub(f"{what}: host error HTTP {resp.status_code}{suffix}"))
        if 300 <= resp.status_code < 400:
            where = redact_uri(resp.headers.get("location", "?"))
            return HostError(self.scrub(f"{what}: {self.uri} redirected to {where} (HTTP {resp.status_code}); "
                                        "pass the URI the host really answers on"))
        label = f"{code} " if code else ""
        return HostError(self.scrub(f"{what}: {label}HTTP {resp.status_code}{suffix}"))


# --------------------------------------------------------------------------------------------------
# reading answers


def json_body(resp: requests.Response, *, what: str) -> Any:
    """The response's JSON; :class:`HostError` that names ``what`` when the body is not JSON."""
    try:
        return resp.json()
    except ValueError:
        raise HostError(f"{what}: the host answered HTTP {resp.status_code} with a body that is not JSON") from None


def error_code(resp: requests.Response) -> str | None:
    """The host's ``error_code`` (top level, or inside FastAPI's ``detail``), if any."""
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


def error_detail(resp: requests.Response) -> str:
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


def to_login(resp: requests.Response) -> bool:
    """A redirect to a login page: how oathkeeper's redirect error handler refuses a session."""
    return 300 <= resp.status_code < 400 and "login" in resp.headers.get("location", "").lower()


def _is_null(resp: requests.Response) -> bool:
    """The body is JSON ``null``: what refinery's proxy answers for a gateway error."""
    return resp.content.strip() == b"null"


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
