"""Project ids, and a URI's identity and redaction."""

from __future__ import annotations

import contextlib
import ipaddress
import re
from urllib.parse import urlsplit, urlunsplit

from ..errors import ConfigError


PROJECT_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
"""A project id: 1-128 letters, digits, ``_ . -``, starting with a letter or digit (refinery's are UUIDs). Matched
with ``fullmatch``: ``$`` would let a trailing newline through."""


def is_project_id(value: object) -> bool:
    """Whether ``value`` is a project id (:data:`PROJECT_ID_RE`, the whole string)."""
    return isinstance(value, str) and PROJECT_ID_RE.fullmatch(value) is not None


def check_project_id(value: object, *, where: str) -> str:
    """``value`` when it is a project id, else a one-line :class:`ConfigError` naming ``where`` it came from."""
    if not is_project_id(value):
        raise ConfigError(f"{where} {value!r} is not a project id: use 1-128 letters, digits, '_', '.', '-', "
                          "starting with a letter or digit (refinery's project ids are UUIDs)")
    return str(value)


_DEFAULT_PORTS = {"http": 80, "https": 443}


def redact_uri(uri: str) -> str:
    """``uri`` without its userinfo: ``http://user:PW@host:4455/x`` -> ``http://host:4455/x``.

    Every URI that is printed, logged or stored goes through this, so a password written into it never leaves
    the process."""
    parts = urlsplit(uri)
    if "@" not in parts.netloc:
        return uri
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


def host_identity(uri: str) -> str:
    """The host a URI names, however it is spelled: ``scheme://host:port[/path]``.

    The scheme and host are lower-cased, userinfo is dropped, the default port is written out
    (``http`` 80, ``https`` 443), every loopback spelling (``localhost``, ``127.0.0.1``, any
    127.0.0.0/8 address, ``[::1]``) becomes ``localhost``, and a trailing slash is removed. Two URIs
    with the same identity reach the same host, so the sync lock and state are keyed by it.
    Raises :class:`ConfigError` for a URI that names no host or has a bad port.
    """
    parts = urlsplit(uri.strip())
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if scheme not in _DEFAULT_PORTS or not host:
        raise ConfigError(f"host URI must look like http://host:port, got {redact_uri(uri)!r}")
    try:
        port = parts.port or _DEFAULT_PORTS[scheme]
    except ValueError:
        raise ConfigError(f"host URI has a bad port: {redact_uri(uri)!r}") from None
    if is_loopback(host):
        host = "localhost"
    elif ":" in host:
        with contextlib.suppress(ValueError):
            host = ipaddress.ip_address(host).compressed
        host = f"[{host}]"
    path = parts.path.rstrip("/")
    return f"{scheme}://{host}:{port}{path}"


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback IPs (127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
