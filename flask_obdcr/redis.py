"""State shared by every instance of the server, in Redis: the jti replay cache, the JWKS
cache, and (for stores that keep none of their own) the access tokens.

Install the ``redis`` extra (``pip install 'flask-obdcr[redis]'``), then give both caches to
the extension::

    from flask_obdcr.redis import shared_caches

    replay_cache, jwks_cache = shared_caches("redis://cache.internal:6379/0")
    OpenBankingDCR(app, replay_cache=replay_cache, jwks_cache=jwks_cache)

A request JWT accepted by one instance is then refused as replayed by all the others, and a
JWKS fetched by one instance is used by the others without fetching it again.

Keys are ``<prefix>jti:<sha256>``, ``<prefix>jwks:<sha256 of the URL>``,
``<prefix>token:<token hash>`` and ``<prefix>client-tokens:<sha256 of the client_id>``:
bounded in length whatever the TPP puts in a jti, and namespaced so several deployments can
share one Redis. Everything expires by itself; nothing needs cleaning up. Anyone who can
write to this Redis can make the server forget a jti, trust a key set or accept a token:
protect it (AUTH, TLS with a ``rediss://`` URL, a private network).
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

try:
    import redis
except ImportError as error:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "The Redis caches need redis-py 5 or later: pip install 'flask-obdcr[redis]'"
    ) from error

from .jwks import CacheEntry, JWKSError
from .log import get_logger
from .tokens import AccessToken, TokenStore

__all__ = [
    "RedisJWKSCache",
    "RedisReplayCache",
    "RedisTokenStore",
    "redis_client",
    "shared_caches",
]

log = get_logger(__name__)

RedisLike = Any  # redis.Redis, or anything with its get/set/exists/delete


def redis_client(client_or_url: RedisLike | str) -> RedisLike:
    """A Redis client: ``client_or_url`` itself, or a new one for a ``redis://``,
    ``rediss://`` or ``unix://`` URL (with short timeouts: a request must not hang on it)."""
    if isinstance(client_or_url, str):
        return redis.Redis.from_url(
            client_or_url, socket_timeout=5, socket_connect_timeout=5, health_check_interval=30
        )
    return client_or_url


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def _check_prefix(prefix: str) -> str:
    if not isinstance(prefix, str) or not prefix or len(prefix) > 100:
        raise ValueError(f"prefix must be a non-empty string of at most 100 characters: {prefix!r}")
    return prefix


class RedisReplayCache:
    """The :class:`~flask_obdcr.replay.ReplayCache` of every instance at once.

    ``remember`` is one ``SET key 1 NX PX ttl``: atomic in Redis, so of two copies of a request
    arriving at two instances exactly one passes. The TTL is ``expires_at`` minus ``clock()``
    (the same clock the caller computed ``expires_at`` with, so an injected test clock and a
    Redis server whose clock differs from ours both work), at least ``min_ttl`` seconds.

    Redis errors propagate: a replay check that cannot be made must not pass (fail closed).
    """

    def __init__(
        self,
        client_or_url: RedisLike | str,
        *,
        prefix: str = "obdcr:",
        clock: Callable[[], float] = time.time,
        min_ttl: float = 1.0,
    ) -> None:
        self.client = redis_client(client_or_url)
        self.prefix = _check_prefix(prefix)
        self.clock = clock
        self.min_ttl = min_ttl

    def key(self, key: str) -> str:
        """The Redis key holding ``key``."""
        return f"{self.prefix}jti:{_digest(key)}"

    def seen(self, key: str) -> bool:
        return bool(self.client.exists(self.key(key)))

    def remember(self, key: str, expires_at: float) -> bool:
        ttl = max(float(expires_at) - self.clock(), self.min_ttl)
        ttl_ms = max(1, math.ceil(ttl * 1000))
        return bool(self.client.set(self.key(key), b"1", nx=True, px=ttl_ms))

    def forget(self, key: str) -> None:
        """Drop ``key`` (tests, operators)."""
        self.client.delete(self.key(key))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(prefix={self.prefix!r})"


class RedisJWKSCache:
    """The :class:`~flask_obdcr.jwks.JWKSCache` of every instance at once.

    Each entry is stored as the JSON of :meth:`CacheEntry.to_dict` and expires from Redis at
    its ``stale_until`` (freshness is judged by the JWKS client from the timestamps, as with
    the in-memory cache). Parsing a key set costs far more than reading it, so the last
    parsed entry of up to ``memo_size`` URLs is kept in this process and reused while Redis
    still holds that same fetch. Reading Redis on every lookup would still cost a round trip
    and a JSON decode of the whole set (several per registration), so a fresh entry (by
    ``clock``, the JWKS client's clock) that this process has read or written in the last
    ``recheck_after`` seconds (default 1) is used without asking Redis: a key set another
    instance fetched again reaches this one within that time. Under load a warm lookup is
    then a dictionary lookup.

    A cache must not take the service down: when Redis fails, ``get`` answers from this
    process's memo (or ``None``, so the client fetches) and ``set`` keeps the entry in the
    memo only; both log a warning.
    """

    def __init__(
        self,
        client_or_url: RedisLike | str,
        *,
        prefix: str = "obdcr:",
        memo_size: int = 256,
        recheck_after: float = 1.0,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if memo_size < 1:
            raise ValueError("memo_size must be at least 1")
        if recheck_after < 0:
            raise ValueError("recheck_after must not be negative")
        self.client = redis_client(client_or_url)
        self.prefix = _check_prefix(prefix)
        self.memo_size = memo_size
        self.recheck_after = recheck_after
        self.clock = clock
        self._monotonic = monotonic
        # url -> (the entry, when Redis last confirmed it or we wrote it, monotonic seconds)
        self._memo: OrderedDict[str, tuple[CacheEntry, float]] = OrderedDict()
        self._lock = threading.Lock()

    def key(self, url: str) -> str:
        """The Redis key holding the entry of ``url``."""
        return f"{self.prefix}jwks:{_digest(url)}"

    def get(self, url: str) -> CacheEntry | None:
        now = self._monotonic()
        with self._lock:
            remembered = self._memo.get(url)
        if (
            remembered is not None
            and 0 <= now - remembered[1] < self.recheck_after
            and self.clock() < remembered[0].fresh_until
        ):
            return remembered[0]
        try:
            value = self.client.get(self.key(url))
        except redis.RedisError as error:
            log.warning("Redis JWKS cache unavailable (%s); using this process's copy", error)
            return self._recall(url)
        if value is None:
            return None
        try:
            data = json.loads(value)
            if data.get("url") != url:
                return None
            entry = CacheEntry.from_dict(data)
        except (ValueError, TypeError, KeyError, AttributeError) as error:
            log.warning("Redis JWKS cache entry %s is corrupt (%s); ignored", self.key(url), error)
            return None
        known = remembered[0] if remembered is not None else None
        if known is not None and known == entry:  # same fetch: reuse its parsed keys
            self._keep(url, known, now)
            return known
        return entry if self._parse(url, entry, now) else None

    def set(self, url: str, entry: CacheEntry) -> None:
        self._keep(url, entry, self._monotonic())
        # Kept until stale_until, measured from the fetch (the timestamps come from the JWKS
        # client's clock, so their difference is right whatever that clock is).
        ttl_ms = math.ceil((entry.stale_until - entry.fetched_at) * 1000)
        if ttl_ms <= 0:
            return
        value = json.dumps({"url": url, **entry.to_dict()}, separators=(",", ":"))
        try:
            self.client.set(self.key(url), value, px=ttl_ms)
        except redis.RedisError as error:
            log.warning("Redis JWKS cache unavailable (%s); entry kept in this process", error)

    def delete(self, url: str) -> None:
        """Forget ``url`` here and in Redis."""
        with self._lock:
            self._memo.pop(url, None)
        self.client.delete(self.key(url))

    # -- the per-process memo of parsed entries -----------------------------------------

    def _parse(self, url: str, entry: CacheEntry, now: float) -> bool:
        try:
            entry.parsed()
        except JWKSError as error:
            log.warning("Redis JWKS cache entry %s is corrupt (%s); ignored", self.key(url), error)
            return False
        self._keep(url, entry, now)
        return True

    def _recall(self, url: str) -> CacheEntry | None:
        with self._lock:
            remembered = self._memo.get(url)
            if remembered is not None:
                self._memo.move_to_end(url)
        return remembered[0] if remembered is not None else None

    def _keep(self, url: str, entry: CacheEntry, now: float) -> None:
        with self._lock:
            self._memo[url] = (entry, now)
            self._memo.move_to_end(url)
            while len(self._memo) > self.memo_size:
                self._memo.popitem(last=False)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(prefix={self.prefix!r})"


class RedisTokenStore(TokenStore):
    """Access tokens in Redis, for every instance at once: the token store the extension uses
    with ``OBDCR_REDIS_URL`` when the client store keeps none (``LDAPStore``, a store of your
    own). SQLite and SQLAlchemy stores keep tokens in their own database instead.

    A token is ``<prefix>token:<hash>`` (its record as JSON) and expires from Redis when the
    token does. Each client has a sorted set of its tokens' hashes, scored by expiry and pruned
    of expired ones at every save, so revoking a client's tokens finds them all: a Lua script
    deletes them and the set in one atomic step, and a token saved meanwhile is either in the
    set (deleted) or saved after it (a token issued after the revocation began, as from a
    request that raced it). Redis errors propagate: the extension answers 503.
    """

    _FIELDS = ("client_id", "scope", "issued_at", "expires_at", "x5t_s256")
    _REVOKE_CLIENT = """
        local hashes = redis.call('ZRANGE', KEYS[1], 0, -1)
        local deleted = 0
        for _, hash in ipairs(hashes) do
            deleted = deleted + redis.call('DEL', ARGV[1] .. hash)
        end
        redis.call('DEL', KEYS[1])
        return deleted
    """

    def __init__(
        self,
        client_or_url: RedisLike | str,
        *,
        prefix: str = "obdcr:",
        clock: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(clock=clock)
        self.client = redis_client(client_or_url)
        self.prefix = _check_prefix(prefix)
        self._revoke_client = self.client.register_script(self._REVOKE_CLIENT)

    def _token_key(self, token_hash: str) -> str:
        return f"{self.prefix}token:{token_hash}"

    def _client_key(self, client_id: str) -> str:
        return f"{self.prefix}client-tokens:{_digest(client_id)}"

    def _save(self, record: AccessToken) -> None:
        now = self.clock()
        ttl_ms = math.ceil((record.expires_at - now) * 1000)
        if ttl_ms <= 0:
            return  # already expired: find() would not return it anyway
        value = json.dumps({name: getattr(record, name) for name in self._FIELDS})
        index = self._client_key(record.client_id)
        with self.client.pipeline(transaction=True) as pipe:
            pipe.set(self._token_key(record.token_hash), value, px=ttl_ms)
            pipe.zadd(index, {record.token_hash: record.expires_at})
            pipe.zremrangebyscore(index, "-inf", f"({math.floor(now)}")
            pipe.execute()

    def _get(self, token_hash: str) -> AccessToken | None:
        value = self.client.get(self._token_key(token_hash))
        if value is None:
            return None
        try:
            data = json.loads(value)
            return AccessToken(token_hash=token_hash, **{k: data[k] for k in self._FIELDS})
        except (ValueError, TypeError, KeyError) as error:
            log.warning("Redis token record %s is corrupt (%s); ignored", token_hash, error)
            return None

    def _delete(self, token_hash: str) -> None:
        self.client.delete(self._token_key(token_hash))

    def revoke_client(self, client_id: str) -> int:
        deleted = self._revoke_client(
            keys=[self._client_key(client_id)], args=[f"{self.prefix}token:"]
        )
        return int(deleted)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(prefix={self.prefix!r})"


def shared_caches(
    client_or_url: RedisLike | str,
    *,
    prefix: str = "obdcr:",
    clock: Callable[[], float] = time.time,
) -> tuple[RedisReplayCache, RedisJWKSCache]:
    """The replay cache and the JWKS cache on one Redis client (one connection pool)."""
    client = redis_client(client_or_url)
    return (
        RedisReplayCache(client, prefix=prefix, clock=clock),
        RedisJWKSCache(client, prefix=prefix, clock=clock),
    )
