"""Webhook signatures (``X-Kern-Signature``, docs/triggers.md) and the shared secret."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import stat
import time
from collections.abc import Mapping
from pathlib import Path

from ..errors import ConfigError, KernFinetuneError

__all__ = [
    "SIGNATURE_HEADER",
    "SECRET_ENV",
    "TOLERANCE_S",
    "MIN_SECRET_BYTES",
    "SignatureError",
    "as_bytes",
    "sign",
    "verify_signature",
    "load_secret",
]

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Kern-Signature"
SECRET_ENV = "KERN_FINETUNE_WEBHOOK_SECRET"
TOLERANCE_S = 300
"""A signature's timestamp may be at most this many seconds in the past or in the future."""
MIN_SECRET_BYTES = 16
_TIMESTAMP_RE = re.compile(r"[0-9]{1,12}", re.ASCII)
_MAX_HEADER_CHARS = 4096


class SignatureError(KernFinetuneError):
    """A request's signature is missing, malformed, forged or stale."""


def as_bytes(value: str | bytes) -> bytes:
    """``value`` as bytes (a str is UTF-8 encoded)."""
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


def _digest(secret: bytes, timestamp: int, body: bytes) -> str:
    return hmac.new(secret, str(timestamp).encode("ascii") + b"." + body, hashlib.sha256).hexdigest()


def sign(secret: str | bytes, body: str | bytes, timestamp: int | None = None) -> str:
    """The ``X-Kern-Signature`` value, ``t=<timestamp>,v1=<hex>``, for ``body`` (the exact bytes sent; ``b""`` for
    a GET); ``timestamp`` defaults to now."""
    ts = int(time.time()) if timestamp is None else int(timestamp)
    return f"t={ts},v1={_digest(as_bytes(secret), ts, as_bytes(body))}"


def verify_signature(
    secret: str | bytes,
    body: bytes,
    header: str | None,
    *,
    now: float | None = None,
    tolerance_s: int = TOLERANCE_S,
) -> int:
    """Check an ``X-Kern-Signature`` header against ``body``; returns its timestamp.

    Several ``v1=`` entries are allowed (a sender rotating secrets); one must match. Raises
    :class:`SignatureError` with a short reason (never the expected value)."""
    if not header:
        raise SignatureError(f"missing {SIGNATURE_HEADER} header")
    if not isinstance(header, str) or not header.isascii() or len(header) > _MAX_HEADER_CHARS:
        raise SignatureError(f"malformed {SIGNATURE_HEADER} header")
    timestamp: int | None = None
    candidates: list[bytes] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            raise SignatureError(f"malformed {SIGNATURE_HEADER} header")
        if key == "t":
            if not _TIMESTAMP_RE.fullmatch(value):
                raise SignatureError("malformed timestamp in signature header")
            timestamp = int(value)
        elif key == "v1":
            candidates.append(value.strip().lower().encode("ascii"))
    if timestamp is None or not candidates:
        raise SignatureError(f"{SIGNATURE_HEADER} needs t=<unix seconds> and v1=<hex hmac>")
    now = time.time() if now is None else now
    if abs(now - timestamp) > tolerance_s:
        raise SignatureError(f"signature timestamp outside the allowed window of {tolerance_s} s (stale or clock skew)")
    expected = _digest(as_bytes(secret), timestamp, body).encode("ascii")
    ok = False
    for candidate in candidates:  # compare against every candidate: no early exit
        ok |= hmac.compare_digest(expected, candidate)
    if not ok:
        raise SignatureError("signature does not match")
    return timestamp


def load_secret(secret_file: str | Path | None = None, *, environ: Mapping[str, str] | None = None) -> bytes:
    """The shared webhook secret: from ``secret_file`` (whitespace stripped) or ``$KERN_FINETUNE_WEBHOOK_SECRET``.

    Raises :class:`ConfigError` when neither is set or the secret is shorter than 16 bytes. Warns when the
    file is readable by group or others. Never logs the secret."""
    environ = os.environ if environ is None else environ
    if secret_file is not None:
        path = Path(secret_file).expanduser()
        try:
            raw = path.read_bytes()
            mode = path.stat().st_mode
        except OSError as exc:
            raise ConfigError(f"cannot read the secret file {path}: {exc.strerror}") from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("secret file %s is accessible by group/others; chmod 600 it", path)
        secret = raw.strip()
        origin = f"secret file {path}"
    elif environ.get(SECRET_ENV):
        secret = environ[SECRET_ENV].strip().encode("utf-8")
        origin = f"${SECRET_ENV}"
    else:
        raise ConfigError(
            f"no webhook secret: pass --secret-file FILE or set ${SECRET_ENV} "
            "(create one with: openssl rand -hex 32 > webhook.secret && chmod 600 webhook.secret)"
        )
    if len(secret) < MIN_SECRET_BYTES:
        raise ConfigError(f"the webhook secret from {origin} is too short (at least {MIN_SECRET_BYTES} bytes)")
    return secret

