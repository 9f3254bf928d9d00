"""The in-process backends: clients, access tokens, the jti replay cache, the JWKS cache and
the revocation verdict cache, for tests, demos and single-process servers (and, for the two
caches of fetched documents, the default).
"""

from __future__ import annotations

import copy
import dataclasses
import heapq
import threading
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

from .base import ClientExists, ClientNotFound, ClientStore, StoredClient
from .jwks_cache import CacheEntry
from .replay import ReplayCache, ReplayCacheFull, ReplayQuotaExceeded, retry_after
from .revocation_cache import StatusRecord
from .tokens import AccessToken, TokenStore

__all__ = [
    "MemoryJWKSCache",
    "MemoryReplayCache",
    "MemoryRevocationCache",
    "MemoryStore",
    "MemoryTokenStore",
]


#: leaves a copy may share: nothing can change them
_IMMUTABLE_LEAVES = frozenset({str, int, float, bool, type(None)})


def _copied_tree(value: Any) -> Any:
    """A deep copy of ``value``: new dicts and lists, shared immutable leaves, and
    ``copy.deepcopy`` for anything else. The same result as ``copy.deepcopy`` on the JSON
    trees a client holds, without its memo and dispatch on every string."""
    kind = type(value)
    if kind is dict:
        return {key: _copied_tree(member) for key, member in value.items()}
    if kind is list:
        return [_copied_tree(member) for member in value]
    if kind in _IMMUTABLE_LEAVES:
        return value
    return copy.deepcopy(value)


def _copied(client: StoredClient) -> StoredClient:
    """``client`` with copies of its nested values (its other fields are immutable)."""
    if type(client) is not StoredClient:  # a subclass may hold more: copy all of it
        return copy.deepcopy(client)
    return dataclasses.replace(
        client,
        metadata=_copied_tree(client.metadata),
        ssa_claims=_copied_tree(client.ssa_claims),
        extra=_copied_tree(client.extra),
    )


class MemoryStore(ClientStore):
    """Clients in a dict. Like every backend it keeps its own copies: changing a client's
    nested metadata after ``add`` or ``get`` does not change what is stored."""

    #: the clients live in this process: so may their tokens (no warning about it)
    process_local = True

    def __init__(self) -> None:
        self._clients: dict[str, StoredClient] = {}
        self._lock = threading.Lock()

    def _add(self, client: StoredClient) -> None:
        client = _copied(client)
        with self._lock:
            if client.client_id in self._clients:
                raise ClientExists(client.client_id)
            self._clients[client.client_id] = client

    def _get(self, client_id: str) -> StoredClient | None:
        client = self._clients.get(client_id)
        return None if client is None else _copied(client)

    def _list(self) -> Iterator[StoredClient]:
        with self._lock:
            clients = list(self._clients.values())
        # issue order, as the SQL backends list them
        clients.sort(key=lambda client: (client.client_id_issued_at, client.client_id))
        return iter([_copied(client) for client in clients])

    def _replace(self, client: StoredClient) -> None:
        client = _copied(client)
        with self._lock:
            if client.client_id not in self._clients:
                raise ClientNotFound(client.client_id)
            self._clients[client.client_id] = client

    def _delete(self, client_id: str) -> bool:
        with self._lock:
            return self._clients.pop(client_id, None) is not None

    def __len__(self) -> int:
        return len(self._clients)


# -- access tokens -------------------------------------------------------------------------


class MemoryTokenStore(TokenStore):
    """Tokens in this process: for tests, demos and single-process servers.

    Indexed by hash, by client (``revoke_client`` touches only that client's tokens) and by
    expiry (a heap): a save costs O(log n) and purges, as it goes, at most ``purge_batch``
    tokens that have expired, so memory follows the tokens alive, not those ever issued.
    """

    default_purge_every = 1  # purging here is a heap pop: on every save

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self._tokens: dict[str, AccessToken] = {}
        self._by_client: dict[str, set[str]] = {}
        # (expires_at, token_hash); an entry whose token was revoked or saved again with
        # another expiry is stale and skipped when it comes up
        self._expiry: list[tuple[int, str]] = []
        self._lock = threading.Lock()

    def _save(self, record: AccessToken) -> None:
        with self._lock:
            self._forget(record.token_hash)  # saved again: the new record replaces it
            self._tokens[record.token_hash] = record
            self._by_client.setdefault(record.client_id, set()).add(record.token_hash)
            heapq.heappush(self._expiry, (record.expires_at, record.token_hash))

    def _get(self, token_hash: str) -> AccessToken | None:
        return self._tokens.get(token_hash)

    def _delete(self, token_hash: str) -> None:
        with self._lock:
            self._forget(token_hash)

    def _revoke_client(self, client_id: str) -> int:
        with self._lock:
            hashes = self._by_client.pop(client_id, set())
            for token_hash in hashes:
                del self._tokens[token_hash]
            return len(hashes)

    def _purge(self, now: float, limit: int) -> int:
        purged = 0
        with self._lock:
            heap = self._expiry
            while heap and heap[0][0] <= now and purged < limit:
                expires_at, token_hash = heapq.heappop(heap)
                record = self._tokens.get(token_hash)
                if record is not None and record.expires_at == expires_at:
                    self._forget(token_hash)
                    purged += 1
            if not self._tokens:
                heap.clear()  # only stale entries are left
        return purged

    def _forget(self, token_hash: str) -> None:
        # the caller holds the lock
        record = self._tokens.pop(token_hash, None)
        if record is None:
            return
        hashes = self._by_client.get(record.client_id)
        if hashes is not None:
            hashes.discard(token_hash)
            if not hashes:
                del self._by_client[record.client_id]

    def __len__(self) -> int:
        """Tokens held, expired ones not yet purged included."""
        return len(self._tokens)


# -- the jti replay cache ------------------------------------------------------------------


class MemoryReplayCache(ReplayCache):
    """A per-process replay cache. Several processes need a shared one (Redis).

    At most ``max_entries`` live entries in all (then :class:`ReplayCacheFull`: fail closed,
    refusing a request rather than forgetting a jti early) and ``quota_per_owner`` per owner
    (then :class:`ReplayQuotaExceeded`). Expired entries are dropped at every ``remember``,
    oldest first, from a heap: each call costs O(log n), amortised.
    """

    def __init__(self, *, max_entries: int = 1_000_000, **kw: Any) -> None:
        super().__init__(**kw)
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._max_entries = max_entries
        self._expiry: dict[str, tuple[float, str]] = {}  # key -> (expires_at, owner)
        self._heap: list[tuple[float, str]] = []  # (expires_at, key) of every live entry
        # owner -> the same for its own entries; a heap's top is the owner's oldest
        self._owners: dict[str, list[tuple[float, str]]] = {}
        self._lock = threading.Lock()

    def seen(self, key: str) -> bool:
        current = self._expiry.get(key)
        return current is not None and current[0] >= self.clock()

    def _remember(self, key: str, expires_at: float, owner: str) -> bool:
        with self._lock:
            now = self.clock()
            self._purge(now)
            if key in self._expiry:  # live: _purge dropped every expired entry
                return False
            mine = self._owners.get(owner)
            quota = self.quota_per_owner
            if mine is not None and quota is not None and len(mine) >= quota:
                raise ReplayQuotaExceeded(owner, quota, retry_after=retry_after(mine[0][0], now))
            if len(self._expiry) >= self._max_entries:
                raise ReplayCacheFull(
                    f"the replay cache holds {self._max_entries} live entries",
                    retry_after=retry_after(self._heap[0][0], now),
                )
            self._expiry[key] = (expires_at, owner)
            heapq.heappush(self._heap, (expires_at, key))
            heapq.heappush(self._owners.setdefault(owner, []), (expires_at, key))
            return True

    def purge_expired(self) -> int:
        with self._lock:
            return self._purge(self.clock())

    def _purge(self, now: float) -> int:
        # The caller holds the lock. Entries leave in (expires_at, key) order and every live
        # key has one entry in each heap, so the global heap's top is also its owner's top.
        heap, purged = self._heap, 0
        while heap and heap[0][0] < now:
            entry = heapq.heappop(heap)
            _, owner = self._expiry.pop(entry[1])
            mine = self._owners[owner]
            if mine[0] == entry:
                heapq.heappop(mine)
            else:  # pragma: no cover - defensive: the invariant above says never
                mine.remove(entry)
                heapq.heapify(mine)
            if not mine:
                del self._owners[owner]
            purged += 1
        return purged

    def __len__(self) -> int:
        return len(self._expiry)


# -- the JWKS cache ------------------------------------------------------------------------


class MemoryJWKSCache:
    """Thread-safe in-process cache holding at most ``maxsize`` entries (least recently used
    dropped first), so URLs from many TPPs cannot grow memory without bound."""

    def __init__(self, maxsize: int = 1000) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self.maxsize = maxsize
        self._entries: OrderedDict[str, CacheEntry] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, url: str) -> CacheEntry | None:
        with self._lock:
            entry = self._entries.get(url)
            if entry is not None:
                self._entries.move_to_end(url)
            return entry

    def set(self, url: str, entry: CacheEntry) -> None:
        with self._lock:
            self._entries[url] = entry
            self._entries.move_to_end(url)
            while len(self._entries) > self.maxsize:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


# -- the revocation verdict cache ----------------------------------------------------------


class MemoryRevocationCache:
    """The :class:`~flask_obdcr.storage.revocation_cache.RevocationCache` of this process:
    thread-safe, at most ``maxsize`` verdicts (least recently used dropped first), so many
    certificates cannot grow memory without bound. Records are not dropped at their
    ``keep_until``: the bound does that work."""

    def __init__(self, maxsize: int = 10_000) -> None:
        if maxsize < 1:
            raise ValueError("maxsize must be at least 1")
        self.maxsize = maxsize
        self._records: OrderedDict[str, StatusRecord] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> StatusRecord | None:
        with self._lock:
            record = self._records.get(key)
            if record is not None:
                self._records.move_to_end(key)
            return record

    def set(self, key: str, record: StatusRecord) -> None:
        with self._lock:
            self._records[key] = record
            self._records.move_to_end(key)
            while len(self._records) > self.maxsize:
                self._records.popitem(last=False)

    def delete(self, key: str) -> None:
        with self._lock:
            self._records.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._records.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._records)
