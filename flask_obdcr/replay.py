"""The jti replay cache: a registration request (or client assertion) is accepted once.

``remember`` is an atomic check-and-set, so two copies of one request racing each other
cannot both pass. Entries are kept until the JWT's own ``exp`` (plus skew): after that the
JWT is refused as expired anyway.
"""

from __future__ import annotations

import heapq
import threading
import time
from collections.abc import Callable
from typing import Protocol


class ReplayCache(Protocol):
    def seen(self, key: str) -> bool:
        """True if ``key`` was remembered and has not expired (a cheap early check)."""

    def remember(self, key: str, expires_at: float) -> bool:
        """Remember ``key`` until ``expires_at``; False if it was already there."""


class MemoryReplayCache:
    """A per-process replay cache. Several processes need a shared one (Redis)."""

    def __init__(self, *, clock: Callable[[], float] = time.time, max_entries: int = 1_000_000):
        self._clock = clock
        self._expiry: dict[str, float] = {}
        self._heap: list[tuple[float, str]] = []
        self._lock = threading.Lock()
        self._max_entries = max_entries

    def seen(self, key: str) -> bool:
        expires_at = self._expiry.get(key)
        return expires_at is not None and expires_at >= self._clock()

    def remember(self, key: str, expires_at: float) -> bool:
        with self._lock:
            now = self._clock()
            self._purge(now)
            current = self._expiry.get(key)
            if current is not None and current >= now:
                return False
            if len(self._expiry) >= self._max_entries:
                # fail closed: refusing a request is better than forgetting a jti early
                return False
            self._expiry[key] = expires_at
            heapq.heappush(self._heap, (expires_at, key))
            return True

    def _purge(self, now: float) -> None:
        heap = self._heap
        while heap and heap[0][0] < now:
            expires_at, key = heapq.heappop(heap)
            if self._expiry.get(key) == expires_at:
                del self._expiry[key]

    def __len__(self) -> int:
        return len(self._expiry)
