"""The host's one user and its login sessions: a salted PBKDF2-SHA256 password hash, tokens stored as hashes."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from typing import Any

from ..errors import ConfigError
from .db import HostDB

__all__ = ["SESSION_TTL_S", "Users"]

SESSION_TTL_S = 24 * 3600
"""Login tokens expire after this many seconds (Kratos's default session lifespan)."""
_PBKDF2_ITERATIONS = 100_000


def _hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _hash_password(password: str, salt: bytes, iterations: int) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", password.encode("utf-8"), salt, iterations)


class Users:
    """The ``users`` and ``sessions`` tables."""

    def __init__(self, db: HostDB) -> None:
        self.db = db

    def configure_user(self, name: str, password: str) -> None:
        """Make ``name`` the one user of this host with ``password``: other users and their sessions are removed;
        a changed password revokes the user's sessions."""
        if not name or not password:
            raise ConfigError("the host needs a user name and a non-empty password")
        with self.db.tx() as conn:
            row = conn.execute("SELECT salt, pw_hash, iterations FROM users WHERE name = ?", (name,)).fetchone()
            unchanged = row is not None and hmac.compare_digest(_hash_password(password, row[0], row[2]), row[1])
            conn.execute("DELETE FROM sessions WHERE user_name != ?", (name,))
            conn.execute("DELETE FROM users WHERE name != ?", (name,))
            if not unchanged:
                salt = secrets.token_bytes(16)
                conn.execute(
                    "INSERT OR REPLACE INTO users (name, salt, pw_hash, iterations) VALUES (?, ?, ?, ?)",
                    (name, salt, _hash_password(password, salt, _PBKDF2_ITERATIONS), _PBKDF2_ITERATIONS),
                )
                conn.execute("DELETE FROM sessions WHERE user_name = ?", (name,))
            conn.execute("DELETE FROM sessions WHERE expires_at < ?", (time.time(),))

    def check_password(self, name: Any, password: Any) -> bool:
        """True when ``name``/``password`` are the configured credentials (constant work either way)."""
        if not isinstance(name, str) or not isinstance(password, str):
            return False
        row = self.db.one("SELECT salt, pw_hash, iterations FROM users WHERE name = ?", (name,))
        if row is None:
            _hash_password(password, b"\0" * 16, _PBKDF2_ITERATIONS)  # same work as a real check
            return False
        return hmac.compare_digest(_hash_password(password, row[0], row[2]), row[1])

    def create_session(self, user_name: str, ttl_s: float = SESSION_TTL_S) -> tuple[str, float, float]:
        """A new random token for ``user_name``; only its hash is stored. Returns (token, issued, expires)."""
        token = secrets.token_urlsafe(32)
        issued = time.time()
        expires = issued + ttl_s
        with self.db.tx() as conn:
            conn.execute(
                "INSERT INTO sessions (token_hash, user_name, created_at, expires_at) VALUES (?, ?, ?, ?)",
                (_hash_token(token), user_name, issued, expires),
            )
        return token, issued, expires

    def session_user(self, token: str | None) -> tuple[str, float, float] | None:
        """(user name, issued, expires) of a valid token, else None."""
        if not token:
            return None
        row = self.db.one(
            "SELECT user_name, created_at, expires_at FROM sessions WHERE token_hash = ?", (_hash_token(token),)
        )
        if row is None or row[2] < time.time():
            return None
        return row[0], row[1], row[2]
