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
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

from ..log import get_logger
from .base import hash_secret

__all__ = ["AccessToken", "TokenStore"]

log = get_logger(__name__)


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
    """

    #: saves between two amortised purges; a backend may choose another default
    default_purge_every = 100

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        purge_every: int | None = None,
        purge_batch: int = 1000,
    ) -> None:
        if purge_every is None:
            purge_every = self.default_purge_every
        if purge_every < 0 or purge_batch < 1:
            raise ValueError("purge_every must be >= 0 and purge_batch >= 1")
        self.clock = clock
        self.purge_every = purge_every
        self.purge_batch = purge_batch
        self._saves = itertools.count(1)  # next() is atomic in CPython: no lock needed

    def save(self, token: str, **fields) -> AccessToken:
        """Keep a newly issued token (``fields``: client_id, scope, issued_at, expires_at,
        x5t_s256) under its hash; returns the record."""
        record = AccessToken(token_hash=hash_secret(token), **fields)
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
