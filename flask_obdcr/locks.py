"""One holder at a time, across processes and hosts: for jobs such as a re-validation pass that
cron may start on several hosts at once.

Each lock is tried, never waited for: a second runner learns at once that another pass is
under way and stops. The lock lives where the clients live, so every host that shares the store
shares the lock: Redis when the app has it, a PostgreSQL advisory lock for a PostgreSQL store,
a file lock beside a SQLite file, else a lock of this process.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import threading
from typing import Any, Protocol

__all__ = ["ExclusiveLock", "FileLock", "PostgresAdvisoryLock", "ProcessLock", "RedisLock"]


class ExclusiveLock(Protocol):
    def acquire(self) -> bool:
        """Take the lock if it is free; False (at once) if someone holds it."""

    def release(self) -> None:
        """Give it back (only if this holder took it)."""


_PROCESS_LOCKS: dict[str, threading.Lock] = {}
_PROCESS_LOCKS_GUARD = threading.Lock()


class ProcessLock:
    """Held within this process only: for stores no other process shares (memory)."""

    def __init__(self, name: str) -> None:
        with _PROCESS_LOCKS_GUARD:
            self._lock = _PROCESS_LOCKS.setdefault(name, threading.Lock())
        self._held = False

    def acquire(self) -> bool:
        self._held = self._lock.acquire(blocking=False)
        return self._held

    def release(self) -> None:
        if self._held:
            self._held = False
            self._lock.release()


class FileLock:
    """``flock`` on a file beside a SQLite database: every process on the host that opens the
    same database sees it (SQLite itself is shared by one host only). The kernel drops it if
    the holder dies."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self) -> bool:
        import fcntl

        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            import fcntl

            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None


class RedisLock:
    """``SET key token NX PX ttl``: held until released or until ``ttl_seconds`` pass (a holder
    that died frees it then). Released only by the holder that took it (compare-and-delete)."""

    _RELEASE = (
        "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end "
        "return 0"
    )

    def __init__(self, client: Any, key: str, *, ttl_seconds: int = 3600) -> None:
        self.client = client
        self.key = key
        self.ttl_ms = int(ttl_seconds * 1000)
        self._token: str | None = None

    def acquire(self) -> bool:
        token = secrets.token_hex(16)
        if self.client.set(self.key, token, nx=True, px=self.ttl_ms):
            self._token = token
            return True
        return False

    def release(self) -> None:
        if self._token is not None:
            self.client.eval(self._RELEASE, 1, self.key, self._token)
            self._token = None


class PostgresAdvisoryLock:
    """A session-level ``pg_try_advisory_lock`` on a connection of its own, held while the pass
    runs; PostgreSQL frees it if the connection drops."""

    def __init__(self, engine: Any, name: str) -> None:
        self.engine = engine
        # a stable 63-bit key from the name (advisory locks take a bigint)
        self.key = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big") >> 1
        self._connection: Any = None

    def acquire(self) -> bool:
        from sqlalchemy import text

        connection = self.engine.connect()
        try:
            taken = connection.execute(
                text("SELECT pg_try_advisory_lock(:key)"), {"key": self.key}
            ).scalar()
        except BaseException:
            connection.close()
            raise
        if not taken:
            connection.close()
            return False
        self._connection = connection
        return True

    def release(self) -> None:
        if self._connection is not None:
            from sqlalchemy import text

            try:
                self._connection.execute(
                    text("SELECT pg_advisory_unlock(:key)"), {"key": self.key}
                )
            finally:
                self._connection.close()
                self._connection = None


def lock_beside(store: Any, name: str, *, redis: Any = None, prefix: str = "obdcr:") -> Any:
    """The lock every process sharing ``store`` sees: Redis if given, else one in the store's
    own database, else this process's."""
    if redis is not None:
        return RedisLock(redis, f"{prefix}lock:{name}")
    engine = getattr(store, "engine", None)
    if engine is not None and getattr(engine.dialect, "name", "") == "postgresql":
        return PostgresAdvisoryLock(engine, f"obdcr:{name}")
    path = getattr(store, "path", None)
    if isinstance(path, str) and path and path != ":memory:":
        return FileLock(f"{path}.{name}.lock")
    return ProcessLock(f"{id(store)}:{name}")
