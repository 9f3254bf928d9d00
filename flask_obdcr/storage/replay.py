"""The ReplayCache contract: a registration request (or client assertion) is accepted once.

``remember`` is an atomic check-and-set, so two copies of one request racing each other
cannot both pass. Entries are kept until the JWT's own ``exp`` (plus skew): after that the
JWT is refused as expired anyway.

The cache is bounded, and fairly: every entry counts against its *owner* (the ``software_id``
of a registration request, the client of a client assertion), and an owner holding
``quota_per_owner`` live entries is refused with :class:`ReplayQuotaExceeded` until its oldest
entry expires, so one software registering in a loop cannot lock the others out. A backend
that also bounds its total size raises :class:`ReplayCacheFull` when it is full. Neither is a
replay: the caller answers "too many requests" (429) and "temporarily unavailable" (503), each
with the ``retry_after`` they carry. ``tests/test_replay_cache.py`` runs one contract test
class against every backend (:mod:`.memory`, :mod:`.redis`).
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable

from .base import StoreError

__all__ = [
    "DEFAULT_QUOTA_PER_OWNER",
    "ReplayCache",
    "ReplayCacheFull",
    "ReplayQuotaExceeded",
    "ReplayRefused",
    "replay_owner",
]

#: live jti entries one software (or client) may hold; a registration request lives for
#: minutes, so this is thousands of requests a minute from one software
DEFAULT_QUOTA_PER_OWNER = 10_000


class ReplayRefused(StoreError):
    """The cache refused to remember a key that is *not* a replay: retry after
    ``retry_after`` seconds (a whole number, at least 1)."""

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ReplayQuotaExceeded(ReplayRefused):
    """``owner`` holds as many live entries as its quota allows; ``retry_after`` is when its
    oldest one expires."""

    def __init__(self, owner: str, quota: int, *, retry_after: int) -> None:
        super().__init__(
            f"{owner!r} holds {quota} live jti entries, its quota", retry_after=retry_after
        )
        self.owner = owner
        self.quota = quota


class ReplayCacheFull(ReplayRefused):
    """The whole cache is full; ``retry_after`` is when its oldest entry expires."""


def replay_owner(key: str) -> str:
    """Whose quota ``key`` counts against when the caller names no owner, for the two key
    shapes of this package: ``assertion:<client_id>:<jti>`` (a client assertion: the client)
    and ``<iss>:<jti>`` (a registration request, whose ``iss`` is the software_id)."""
    if key.startswith("assertion:"):
        return "assertion:" + key[len("assertion:") :].partition(":")[0]
    return key.partition(":")[0]


def retry_after(expires_at: float, now: float) -> int:
    """Whole seconds until an entry living until ``expires_at`` (inclusive) is gone."""
    return max(1, math.floor(expires_at - now) + 1)


class ReplayCache(ABC):
    """Where seen jtis live: the contract every replay backend fulfils.

    ``quota_per_owner`` (None: no quota) caps the live entries of each owner.
    """

    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.time,
        quota_per_owner: int | None = DEFAULT_QUOTA_PER_OWNER,
    ) -> None:
        if quota_per_owner is not None and (
            not isinstance(quota_per_owner, int) or quota_per_owner < 1
        ):
            raise ValueError(f"quota_per_owner must be a positive integer: {quota_per_owner!r}")
        self.clock = clock
        self.quota_per_owner = quota_per_owner

    @abstractmethod
    def seen(self, key: str) -> bool:
        """True if ``key`` was remembered and has not expired (a cheap early check)."""

    def remember(self, key: str, expires_at: float, *, owner: str | None = None) -> bool:
        """Remember ``key`` until ``expires_at`` (the caller's clock, as :attr:`clock`);
        False if it was already there: a replay, whatever the quota.

        Raises :class:`ReplayQuotaExceeded` when ``owner`` (default: :func:`replay_owner` of
        the key) is at its quota, :class:`ReplayCacheFull` when the cache is; other errors
        (a shared cache that is down) propagate: the caller must fail closed.
        """
        if not isinstance(key, str):
            raise TypeError(f"a replay key is a string, got {type(key).__name__}")
        return self._remember(key, float(expires_at), replay_owner(key) if owner is None else owner)

    def purge_expired(self) -> int:
        """Drop the expired entries now; how many. The default drops none: for a backend
        whose entries expire by themselves (Redis)."""
        return 0

    @abstractmethod
    def _remember(self, key: str, expires_at: float, owner: str) -> bool:
        """The atomic check-and-set, with the owner's quota (and any bound) checked after the
        replay check and before the write."""
