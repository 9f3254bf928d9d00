"""Access tokens issued to registered clients, stored hashed, optionally certificate-bound.

Authlib generates the token strings; this keeps what the resource server and the
management endpoints need to check them: the client, the scope, the expiry and, for
tokens issued over mutual TLS, the RFC 8705 ``cnf`` thumbprint. No Flask here.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

from .storage.base import hash_secret
from .storage.sqlite import open_connection, retry_locked


@dataclass(frozen=True)
class AccessToken:
    token_hash: str
    client_id: str
    scope: str
    issued_at: int
    expires_at: int
    #: RFC 8705 ``x5t#S256`` of the certificate the token is bound to, or None
    x5t_s256: str | None = None

    def is_active(self, now: float) -> bool:
        return now < self.expires_at

    @property
    def cnf(self) -> dict[str, str] | None:
        return {"x5t#S256": self.x5t_s256} if self.x5t_s256 else None


class TokenStore(ABC):
    """Where issued access tokens live: the contract every token backend fulfils.

    Only the SHA-256 of a token string is kept and looked up, so a copy of the store issues
    nothing. :meth:`find` answers only active tokens; :meth:`revoke_client` must be atomic
    (DELETE /register/<id> revokes first and deletes the client only if that succeeded).
    """

    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock

    def save(self, token: str, **fields) -> AccessToken:
        """Keep a newly issued token (``fields``: client_id, scope, issued_at, expires_at,
        x5t_s256) under its hash; returns the record."""
        record = AccessToken(token_hash=hash_secret(token), **fields)
        self._save(record)
        return record

    def find(self, token: str | None) -> AccessToken | None:
        """The active record for a presented token string, or None."""
        if not token or len(token) > 4096:
            return None
        record = self._get(hash_secret(token))
        if record is None or not record.is_active(self.clock()):
            return None
        return record

    def revoke(self, token: str) -> None:
        """Forget one token (by its string); nothing happens for an unknown one."""
        self._delete(hash_secret(token))

    @abstractmethod
    def revoke_client(self, client_id: str) -> int:
        """Revoke every token of a client; how many there were."""

    @abstractmethod
    def _save(self, record: AccessToken) -> None: ...

    @abstractmethod
    def _get(self, token_hash: str) -> AccessToken | None: ...

    @abstractmethod
    def _delete(self, token_hash: str) -> None: ...


class MemoryTokenStore(TokenStore):
    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self._tokens: dict[str, AccessToken] = {}
        self._lock = threading.Lock()

    def _save(self, record: AccessToken) -> None:
        with self._lock:
            now = self.clock()
            # drop expired tokens as we go, so the dict does not grow without bound
            for key in [k for k, v in self._tokens.items() if not v.is_active(now)][:100]:
                del self._tokens[key]
            self._tokens[record.token_hash] = record

    def _get(self, token_hash: str) -> AccessToken | None:
        return self._tokens.get(token_hash)

    def _delete(self, token_hash: str) -> None:
        with self._lock:
            self._tokens.pop(token_hash, None)

    def revoke_client(self, client_id: str) -> int:
        with self._lock:
            doomed = [k for k, v in self._tokens.items() if v.client_id == client_id]
            for key in doomed:
                del self._tokens[key]
            return len(doomed)


_TOKENS_SCHEMA = """
CREATE TABLE IF NOT EXISTS access_tokens (
    token_hash TEXT PRIMARY KEY, client_id TEXT NOT NULL, scope TEXT NOT NULL,
    issued_at INTEGER NOT NULL, expires_at INTEGER NOT NULL, x5t_s256 TEXT);
CREATE INDEX IF NOT EXISTS access_tokens_client ON access_tokens (client_id);
"""


class SQLiteTokenStore(TokenStore):
    """Tokens in a SQLite file, shared by every process of the server."""

    _FIELDS = ("token_hash", "client_id", "scope", "issued_at", "expires_at", "x5t_s256")

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout: float = 30.0, **kw) -> None:
        super().__init__(**kw)
        self.path = os.fspath(path)
        self.busy_timeout = busy_timeout
        self._local = threading.local()
        self._lock = threading.Lock()

    @property
    def conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            return conn
        # a connection inherited through fork() is never reused: the child opens its own
        with self._lock:
            conn = open_connection(self.path, self.busy_timeout)
            try:
                retry_locked(lambda: conn.executescript(_TOKENS_SCHEMA), self.busy_timeout)
            except BaseException:
                conn.close()
                raise
        self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    def _save(self, record: AccessToken) -> None:
        self.conn.execute(
            "INSERT OR REPLACE INTO access_tokens VALUES (?, ?, ?, ?, ?, ?)",
            [getattr(record, name) for name in self._FIELDS],
        )

    def _get(self, token_hash: str) -> AccessToken | None:
        row = self.conn.execute(
            "SELECT * FROM access_tokens WHERE token_hash = ?", [token_hash]
        ).fetchone()
        return None if row is None else AccessToken(*row)

    def _delete(self, token_hash: str) -> None:
        self.conn.execute("DELETE FROM access_tokens WHERE token_hash = ?", [token_hash])

    def revoke_client(self, client_id: str) -> int:
        cursor = self.conn.execute("DELETE FROM access_tokens WHERE client_id = ?", [client_id])
        return cursor.rowcount
