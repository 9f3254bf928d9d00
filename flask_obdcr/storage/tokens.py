"""The TokenStore contract: access tokens issued to registered clients, stored hashed,
optionally certificate-bound.

Authlib generates the token strings; a token store keeps what the resource server and the
management endpoints need to check them: the client, the scope, the expiry and, for tokens
issued over mutual TLS, the RFC 8705 ``cnf`` thumbprint. The backends are beside the client
stores they share a database with: :mod:`.memory`, :mod:`.sqlite`, :mod:`.sqlalchemy`,
:mod:`.redis`. ``tests/test_token_store.py`` runs one contract test class against every one.
No Flask here.
"""

from __future__ import annotations

import itertools
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

from ..log import get_logger
from .base import hash_secret

__all__ = ["SHARED_CACHE_SECONDS", "AccessToken", "TokenStore"]

log = get_logger(__name__)

#: how long a token found in a backend shared by several processes is answered from the
#: process that read it: the most a revocation made by another process takes to be seen
SHARED_CACHE_SECONDS = 1.0


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

    Expired tokens are purged as tokens are saved, amortised: every ``purge_every`` saves
    (0: never) at most ``purge_batch`` expired tokens are deleted, so no save pays for a
    backlog; :meth:`purge_expired` (``flask obdcr purge``) deletes all of them at once. A
    backend whose tokens expire by themselves (Redis) keeps the default :meth:`_purge`.

    **The lookup cache.** ``require_token`` looks a token up on every API call. With
    ``cache_seconds`` > 0, a record :meth:`find` read from the backend is kept in this process
    for that many seconds (by ``cache_clock``, ``time.monotonic``; at most ``cache_size``
    records) and answered from there; its expiry is still checked on every use, and only tokens
    found are kept (an unknown string is read from the backend each time, so a token another
    process has just issued works at once). Its validity: a token revoked **in this process**
    (:meth:`revoke`, :meth:`revoke_client`, which every deletion and suspension calls) stops
    working here at once; one revoked by **another process** sharing the backend stops working
    here within ``cache_seconds``. ``cache_seconds=0`` reads the backend on every lookup. The
    shared backends (SQLite, SQLAlchemy, Redis) default to :data:`SHARED_CACHE_SECONDS`; the
    memory backend is a dict already and keeps none.

    A backend implements :meth:`_revoke_client`; :meth:`revoke_client` calls it, then empties
    the cache and tells the :attr:`client_revoked` listeners (the client cache of
    :class:`~flask_obdcr.registration.ClientCache`), even when the backend failed.
    """

    #: saves between two amortised purges; a backend may choose another default
    default_purge_every = 100
    #: seconds a found record is answered from this process (see the class docstring)
    default_cache_seconds = 0.0

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        purge_every: int | None = None,
        purge_batch: int = 1000,
        cache_seconds: float | None = None,
        cache_size: int = 10_000,
        cache_clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if purge_every is None:
            purge_every = self.default_purge_every
        if purge_every < 0 or purge_batch < 1:
            raise ValueError("purge_every must be >= 0 and purge_batch >= 1")
        if cache_seconds is None:
            cache_seconds = self.default_cache_seconds
        if cache_seconds < 0 or cache_size < 1:
            raise ValueError("cache_seconds must be >= 0 and cache_size >= 1")
        self.clock = clock
        self.purge_every = purge_every
        self.purge_batch = purge_batch
        self._saves = itertools.count(1)  # next() is atomic in CPython: no lock needed
        self.cache_seconds = float(cache_seconds)
        self.cache_size = cache_size
        self.cache_clock = cache_clock
        #: token hash -> (record, monotonic time it was read); single dict operations are
        #: atomic in CPython, so readers take no lock
        self._cache: dict[str, tuple[AccessToken, float]] = {}
        # bumped by every revocation, under the lock: a record read from the backend before
        # a revocation of this process is not cached after it
        self._generation = 0
        self._cache_lock = threading.Lock()
        #: called with the client_id after every :meth:`revoke_client`
        self.client_revoked: list[Callable[[str], None]] = []

    def save(self, token: str, **fields) -> AccessToken:
        """Keep a newly issued token (``fields``: client_id, scope, issued_at, expires_at,
        x5t_s256) under its hash; returns the record."""
        record = AccessToken(token_hash=hash_secret(token), **fields)
        self._uncache(record.token_hash)  # saved again: read the new record
        self._save(record)
        if self.purge_every and next(self._saves) % self.purge_every == 0:
            try:
                self._purge(self.clock(), self.purge_batch)
            except Exception as error:  # noqa: BLE001 - the token is saved; purge next time
                log.warning(
                    "purging expired access tokens failed: %s: %s", type(error).__name__, error
                )
        return record

    def find(self, token: str | None) -> AccessToken | None:
        """The active record for a presented token string, or None."""
        if not token or len(token) > 4096:
            return None
        token_hash = hash_secret(token)
        record = self._cached(token_hash) if self.cache_seconds else None
        if record is None:
            generation = self._generation
            record = self._get(token_hash)
            if record is not None and self.cache_seconds:
                self._remember(record, generation)
        if record is None or not record.is_active(self.clock()):
            return None
        return record

    def revoke(self, token: str) -> None:
        """Forget one token (by its string); nothing happens for an unknown one."""
        token_hash = hash_secret(token)
        try:
            self._delete(token_hash)
        finally:
            self._uncache(token_hash)

    def revoke_client(self, client_id: str) -> int:
        """Revoke every token of a client (atomically); how many there were."""
        try:
            return self._revoke_client(client_id)
        finally:
            self._uncache(None)  # no index by client: revocations are rare, so all of it goes
            for listener in list(self.client_revoked):
                listener(client_id)

    @abstractmethod
    def _revoke_client(self, client_id: str) -> int:
        """Delete every token of a client in one atomic step; how many there were."""

    def _cached(self, token_hash: str) -> AccessToken | None:
        entry = self._cache.get(token_hash)
        if entry is None:
            return None
        record, read_at = entry
        if 0 <= self.cache_clock() - read_at < self.cache_seconds:
            return record
        self._cache.pop(token_hash, None)
        return None

    def _remember(self, record: AccessToken, generation: int) -> None:
        with self._cache_lock:
            if generation != self._generation:
                return  # a revocation came between the read and now: the read may be stale
            if len(self._cache) >= self.cache_size:
                self._cache.clear()  # bounded; refilled by the tokens in use
            self._cache[record.token_hash] = (record, self.cache_clock())

    def _uncache(self, token_hash: str | None) -> None:
        """Drop one cached record (None: all of them)."""
        with self._cache_lock:
            self._generation += 1
            if token_hash is None:
                self._cache.clear()
            else:
                self._cache.pop(token_hash, None)

    def purge_expired(self) -> int:
        """Delete every expired token now, batch by batch; how many there were."""
        now = self.clock()
        total = 0
        while True:
            purged = self._purge(now, self.purge_batch)
            total += purged
            if purged < self.purge_batch:
                return total

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections; the default has none."""

    def _purge(self, now: float, limit: int) -> int:
        """Delete at most ``limit`` tokens that expired by ``now``; how many. The default
        deletes none: for a backend whose tokens expire by themselves."""
        return 0

    @abstractmethod
    def _save(self, record: AccessToken) -> None: ...

    @abstractmethod
    def _get(self, token_hash: str) -> AccessToken | None: ...

    @abstractmethod
    def _delete(self, token_hash: str) -> None: ...
