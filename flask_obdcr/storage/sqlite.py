"""The default store: one SQLite file (WAL), safe across threads and processes, for the
clients and their access tokens."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import sqlite_utils

from .base import ClientExists, ClientNotFound, ClientStore, StoredClient
from .tokens import SHARED_CACHE_SECONDS, AccessToken, TokenStore

__all__ = ["SQLiteStore", "SQLiteTokenStore", "open_connection", "retry_locked"]

_COLUMNS = {
    "client_id": str,
    "client_id_issued_at": int,
    "software_id": str,
    "org_id": str,
    "metadata": str,
    "ssa_claims": str,
    "client_secret_hash": str,
    "registration_access_token_hash": str,
    "updated_at": int,
    "extra": str,
}
_NAMES = tuple(_COLUMNS)
_SELECT = f"SELECT {', '.join(_NAMES)} FROM clients"  # noqa: S608 - constant names
# The statements' text is built once: sqlite3 keeps each connection's prepared statements by
# their text (cached_statements), so every insert after the first reuses one compiled statement.
_INSERT = f"INSERT INTO clients ({', '.join(_NAMES)}) VALUES ({', '.join('?' * len(_NAMES))})"  # noqa: S608
_UPDATE_NAMES = tuple(name for name in _NAMES if name != "client_id")
_UPDATE = f"UPDATE clients SET {', '.join(f'{n} = ?' for n in _UPDATE_NAMES)} WHERE client_id = ?"  # noqa: S608


def retry_locked(operation: Callable[[], object], timeout: float) -> None:
    """Run ``operation``, retrying while SQLite says "database is locked".

    On a new file SQLite answers "locked" at once, without waiting out the busy timeout,
    when connections race to switch it to WAL or to create a table.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            operation()
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.005)


def open_connection(path: str, timeout: float) -> sqlite3.Connection:
    """An autocommit connection in WAL mode; every statement is its own transaction."""
    if path != ":memory:":
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    conn = sqlite3.connect(path, timeout=timeout, isolation_level=None)
    try:
        retry_locked(lambda: conn.execute("PRAGMA journal_mode=WAL"), timeout)
        # WAL + NORMAL: a commit survives a process crash; only an OS crash or power loss
        # may lose the last transactions, never corrupt the file.
        conn.execute("PRAGMA synchronous=NORMAL")
    except BaseException:
        conn.close()
        raise
    return conn


class SQLiteStore(ClientStore):
    """Clients in a SQLite database file (created on first use).

    One connection per thread; WAL journal so readers never block the writer, a busy
    timeout so concurrent writers from several processes wait instead of failing, and
    every write in its own transaction.
    """

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout: float = 30.0) -> None:
        self.path = os.fspath(path)
        self.busy_timeout = busy_timeout
        self._local = threading.local()
        self._schema_ready = False
        self._schema_lock = threading.Lock()
        #: connections inherited through fork(): never used nor closed in the child
        self._inherited: list[sqlite_utils.Database] = []

    @property
    def db(self) -> sqlite_utils.Database:
        db = getattr(self._local, "db", None)
        if db is not None and self._local.pid != os.getpid():
            # SQLite connections must not cross fork(): the child opens its own, and keeps
            # the inherited one referenced so that closing it cannot touch the parent's locks
            self._inherited.append(db)
            db = self._local.db = None
        if db is None:
            # one new connection at a time in this process (see open_connection)
            with self._schema_lock:
                conn = open_connection(self.path, self.busy_timeout)
                try:
                    db = sqlite_utils.Database(conn)
                    if not self._schema_ready:
                        retry_locked(lambda: self._ensure_schema(db), self.busy_timeout)
                        self._schema_ready = True
                except BaseException:
                    conn.close()
                    raise
            self._local.db = db
            self._local.pid = os.getpid()
        return db

    @staticmethod
    def _ensure_schema(db: sqlite_utils.Database) -> None:
        clients = db.table("clients")  # a Table, where db["clients"] may also be a View
        if not clients.exists():
            try:
                clients.create(_COLUMNS, pk="client_id", not_null={"metadata"})
            except sqlite3.OperationalError:
                # another process created it between our check and our create
                if not clients.exists():
                    raise
        clients.create_index(["software_id"], if_not_exists=True)

    def token_store(self, *, clock: Callable[[], float] = time.time, **kw: Any) -> SQLiteTokenStore:
        """Access tokens in the same file (table ``access_tokens``); ``kw`` goes to
        :class:`SQLiteTokenStore` (``purge_every``, ``cache_seconds``...)."""
        return SQLiteTokenStore(self.path, busy_timeout=self.busy_timeout, clock=clock, **kw)

    def _add(self, client: StoredClient) -> None:
        record = client.to_record()
        try:
            self.db.execute(_INSERT, [record[name] for name in _NAMES])
        except sqlite3.IntegrityError as exc:
            raise ClientExists(client.client_id) from exc

    def _get(self, client_id: str) -> StoredClient | None:
        row = self.db.execute(f"{_SELECT} WHERE client_id = ?", [client_id]).fetchone()
        if row is None:
            return None
        return StoredClient.from_record(dict(zip(_NAMES, row, strict=True)))

    def _list(self) -> Iterator[StoredClient]:
        rows = self.db.execute(f"{_SELECT} ORDER BY client_id_issued_at, client_id").fetchall()
        return (StoredClient.from_record(dict(zip(_NAMES, row, strict=True))) for row in rows)

    def _replace(self, client: StoredClient) -> None:
        record = client.to_record()
        cursor = self.db.execute(_UPDATE, [*(record[n] for n in _UPDATE_NAMES), client.client_id])
        if cursor.rowcount != 1:
            raise ClientNotFound(client.client_id)

    def _delete(self, client_id: str) -> bool:
        return self.db.execute("DELETE FROM clients WHERE client_id = ?", [client_id]).rowcount == 1

    def __len__(self) -> int:
        return self.db.execute("SELECT count(*) FROM clients").fetchone()[0]

    def close(self) -> None:
        db = getattr(self._local, "db", None)
        if db is not None:
            db.conn.close()
            self._local.db = None


_TOKENS_SCHEMA = """
CREATE TABLE IF NOT EXISTS access_tokens (
    token_hash TEXT PRIMARY KEY, client_id TEXT NOT NULL, scope TEXT NOT NULL,
    issued_at INTEGER NOT NULL, expires_at INTEGER NOT NULL, x5t_s256 TEXT);
CREATE INDEX IF NOT EXISTS access_tokens_client ON access_tokens (client_id);
CREATE INDEX IF NOT EXISTS access_tokens_expiry ON access_tokens (expires_at);
"""


class SQLiteTokenStore(TokenStore):
    """Tokens in a SQLite file, shared by every process of the server.

    Expired tokens are deleted as tokens are saved (every ``purge_every`` saves, at most
    ``purge_batch`` of them, by the ``expires_at`` index) and by :meth:`purge_expired`.
    """

    #: found tokens are answered from this process a while (TokenStore, "The lookup cache")
    default_cache_seconds = SHARED_CACHE_SECONDS

    _FIELDS = ("token_hash", "client_id", "scope", "issued_at", "expires_at", "x5t_s256")

    def __init__(
        self, path: str | os.PathLike[str], *, busy_timeout: float = 30.0, **kw: Any
    ) -> None:
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

    def _revoke_client(self, client_id: str) -> int:
        cursor = self.conn.execute("DELETE FROM access_tokens WHERE client_id = ?", [client_id])
        return cursor.rowcount

    def _purge(self, now: float, limit: int) -> int:
        # expired: not now < expires_at; one statement, so one short write transaction
        cursor = self.conn.execute(
            "DELETE FROM access_tokens WHERE rowid IN (SELECT rowid FROM access_tokens"
            " WHERE expires_at <= ? LIMIT ?)",
            [now, limit],
        )
        return cursor.rowcount

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            conn.close()
        self._local.conn = None
