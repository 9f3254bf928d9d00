"""State shared by every instance of the server, in Redis: the jti replay cache, the JWKS
cache, the revocation verdict cache, and (for stores that keep none of their own) the access
tokens.

Install the ``redis`` extra (``pip install 'flask-obdcr[redis]'``), then give both caches to
the extension (``OBDCR_REDIS_URL`` does the same, and shares revocation verdicts too)::

    from flask_obdcr.storage.redis import shared_caches

    replay_cache, jwks_cache = shared_caches("redis://cache.internal:6379/0")
    OpenBankingDCR(app, replay_cache=replay_cache, jwks_cache=jwks_cache)

A request JWT accepted by one instance is then refused as replayed by all the others, and a
JWKS fetched by one instance is used by the others without fetching it again.

Keys are ``<prefix>jti:<sha256>``, ``<prefix>jti-owner:<sha256 of the owner>``,
``<prefix>jwks:<sha256 of the URL>``, ``<prefix>revocation:<sha256 of the issuer's key>:<serial
in hex>``, ``<prefix>token:<token hash>`` and ``<prefix>client-tokens:<sha256 of the
client_id>``: bounded in length whatever the TPP puts in a jti or a certificate, and namespaced
so several deployments can share one Redis. Everything expires by itself (an index with its
longest-lived member); nothing needs cleaning up. Anyone who can write to this Redis can make
the server forget a jti, trust a key set, accept a token or take a revoked certificate for a
good one: protect it (AUTH, TLS with a ``rediss://`` URL, a private network). The scripts touch
two keys at once, so a Redis Cluster is not supported.
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

from ..log import get_logger
from .jwks_cache import CacheEntry
from .replay import (
    DEFAULT_QUOTA_PER_OWNER,
    ReplayCache,
    ReplayQuotaExceeded,
    replay_owner,
    retry_after,
)
from .revocation_cache import StatusRecord
from .tokens import SHARED_CACHE_SECONDS, AccessToken, TokenStore

__all__ = [
    "RedisJWKSCache",
    "RedisReplayCache",
    "RedisRevocationCache",
    "RedisTokenStore",
    "redis_client",
    "shared_caches",
]

log = get_logger(__name__)

RedisLike = Any  # redis.Redis, or anything with its commands and register_script


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


class RedisReplayCache(ReplayCache):
    """The :class:`~flask_obdcr.storage.replay.ReplayCache` of every instance at once.

    ``remember`` is one Lua script, atomic in Redis, so of two copies of a request arriving
    at two instances exactly one passes. It refuses a key that is there (a replay), then an
    owner at its quota (:class:`ReplayQuotaExceeded`, with the time until the owner's oldest
    entry expires), and otherwise sets ``<prefix>jti:<sha256 of the key>`` with a TTL and adds
    it to the owner's sorted set ``<prefix>jti-owner:<sha256 of the owner>``, scored by expiry,
    pruned of expired members at each call and expiring with its longest-lived one. The TTL
    is ``expires_at`` minus ``clock()`` (the same clock the caller computed ``expires_at``
    with, so an injected test clock and a Redis server whose clock differs from ours both
    work), at least ``min_ttl`` seconds.

    No global bound: every key expires, so Redis holds at most what the owners' quotas
    allow over a request's lifetime; size Redis (``maxmemory``, with ``noeviction``: an
    evicted jti could be replayed) for it.

    Redis errors propagate: a replay check that cannot be made must not pass (fail closed).
    """

    # KEYS: the jti key, the owner's set. ARGV: now, expiry (now + TTL), TTL ms, quota (0:
    # none), the member (the jti key's digest). Returns {1} remembered, {0} replayed,
    # {2, the owner's oldest expiry} over quota.
    _REMEMBER = """
        if redis.call('EXISTS', KEYS[1]) == 1 then
            return {0}
        end
        redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[1])
        local quota = tonumber(ARGV[4])
        if quota > 0 and redis.call('ZCARD', KEYS[2]) >= quota then
            local oldest = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
            return {2, oldest[2]}
        end
        redis.call('SET', KEYS[1], '1', 'PX', ARGV[3])
        redis.call('ZADD', KEYS[2], ARGV[2], ARGV[5])
        if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[3]) then
            redis.call('PEXPIRE', KEYS[2], ARGV[3])
        end
        return {1}
    """

    def __init__(
        self,
        client_or_url: RedisLike | str,
        *,
        prefix: str = "obdcr:",
        clock: Callable[[], float] = time.time,
        min_ttl: float = 1.0,
        quota_per_owner: int | None = DEFAULT_QUOTA_PER_OWNER,
    ) -> None:
        super().__init__(clock=clock, quota_per_owner=quota_per_owner)
        self.client = redis_client(client_or_url)
        self.prefix = _check_prefix(prefix)
        self.min_ttl = min_ttl
        self._script = self.client.register_script(self._REMEMBER)

    def key(self, key: str) -> str:
        """The Redis key holding ``key``."""
        return f"{self.prefix}jti:{_digest(key)}"

    def owner_key(self, owner: str) -> str:
        """The Redis sorted set of ``owner``'s live entries."""
        return f"{self.prefix}jti-owner:{_digest(owner)}"

    def seen(self, key: str) -> bool:
        return bool(self.client.exists(self.key(key)))

    def _remember(self, key: str, expires_at: float, owner: str) -> bool:
        now = self.clock()
        ttl = max(expires_at - now, self.min_ttl)
        ttl_ms = max(1, math.ceil(ttl * 1000))
        redis_key = self.key(key)
        outcome = self._script(
            keys=[redis_key, self.owner_key(owner)],
            args=[
                repr(now),
                repr(now + ttl),
                ttl_ms,
                self.quota_per_owner or 0,
                redis_key.rpartition(":")[2],
            ],
        )
        if int(outcome[0]) == 2:
            quota = self.quota_per_owner or 0
            raise ReplayQuotaExceeded(owner, quota, retry_after=retry_after(float(outcome[1]), now))
        return int(outcome[0]) == 1

    def forget(self, key: str, *, owner: str | None = None) -> None:
        """Drop ``key`` (tests, operators); it no longer counts against its owner's quota."""
        redis_key = self.key(key)
        with self.client.pipeline(transaction=True) as pipe:
            pipe.delete(redis_key)
            pipe.zrem(self.owner_key(owner or replay_owner(key)), redis_key.rpartition(":")[2])
            pipe.execute()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(prefix={self.prefix!r})"


class RedisJWKSCache:
    """The :class:`~flask_obdcr.storage.jwks_cache.JWKSCache` of every instance at once.

    Each entry is stored as the JSON of :meth:`CacheEntry.to_dict` and expires from Redis at
    its ``stale_until`` (freshness and validity are judged by the JWKS client, from the
    timestamps and by parsing ``raw``, as with the in-memory cache). Parsing a key set costs
    far more than reading it, so the last entry object of up to ``memo_size`` URLs is kept in
    this process (the client parses it once, into the object) and reused while Redis still
    holds that same fetch. Reading Redis on every lookup would still cost a round trip
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
            entry = known
        self._keep(url, entry, now)
        return entry

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

    # -- the per-process memo of entries --------------------------------------------------

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


class RedisRevocationCache:
    """The :class:`~flask_obdcr.storage.revocation_cache.RevocationCache` of every instance at
    once.

    Each record is ``<prefix>revocation:<key>``, the JSON of :meth:`StatusRecord.to_dict`,
    expiring from Redis at its ``keep_until`` (measured from ``fetched_at``, so the record's
    clock and Redis's need not agree). A verdict another instance fetched is used here without
    fetching it again.

    So that a warm check does not cost a Redis round trip, a record this process read or wrote
    in the last ``recheck_after`` seconds (by ``monotonic``) and not yet due for refresh (by
    ``clock``, the checker's clock) is served from a per-process memo of ``memo_size``
    records: a verdict another instance refreshed reaches this one within that time.

    A cache must not take the service down: when Redis fails, ``get`` answers from the memo
    (or ``None``, so the checker fetches) and ``set`` keeps the record in the memo; both log a
    warning. Anyone who can write to this Redis can make a revoked certificate look good:
    protect it as the other shared state (AUTH, TLS, a private network).
    """

    def __init__(
        self,
        client_or_url: RedisLike | str,
        *,
        prefix: str = "obdcr:",
        memo_size: int = 1024,
        recheck_after: float = 1.0,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        prefix = _check_prefix(prefix)
        if memo_size < 1:
            raise ValueError("memo_size must be at least 1")
        if recheck_after < 0:
            raise ValueError("recheck_after must not be negative")
        self.client = redis_client(client_or_url)
        self.prefix = prefix
        self.memo_size = memo_size
        self.recheck_after = recheck_after
        self.clock = clock
        self._monotonic = monotonic
        # key -> (record, when Redis last confirmed it or we wrote it, monotonic seconds)
        self._memo: OrderedDict[str, tuple[StatusRecord, float]] = OrderedDict()
        self._lock = threading.Lock()

    def key(self, key: str) -> str:
        """The Redis key holding the record of ``key``."""
        return f"{self.prefix}revocation:{key}"

    def get(self, key: str) -> StatusRecord | None:
        now = self._monotonic()
        with self._lock:
            remembered = self._memo.get(key)
        if (
            remembered is not None
            and 0 <= now - remembered[1] < self.recheck_after
            and self.clock() < remembered[0].refresh_at
        ):
            return remembered[0]
        try:
            value = self.client.get(self.key(key))
        except (redis.RedisError, OSError) as error:
            log.warning("Redis revocation cache unavailable (%s); using this process's copy", error)
            return remembered[0] if remembered is not None else None
        if value is None:
            return None
        try:
            record = StatusRecord.from_dict(json.loads(value))
        except (ValueError, TypeError, KeyError, AttributeError) as error:
            log.warning("Redis revocation record %s is corrupt (%s); ignored", self.key(key), error)
            return None
        self._keep(key, record, now)
        return record

    def set(self, key: str, record: StatusRecord) -> None:
        self._keep(key, record, self._monotonic())
        ttl_ms = math.ceil((record.keep_until - record.fetched_at) * 1000)
        if ttl_ms <= 0:
            return
        value = json.dumps(record.to_dict(), separators=(",", ":"))
        try:
            self.client.set(self.key(key), value, px=ttl_ms)
        except (redis.RedisError, OSError) as error:
            log.warning("Redis revocation cache unavailable (%s); record kept here only", error)

    def delete(self, key: str) -> None:
        """Forget ``key`` here and in Redis."""
        with self._lock:
            self._memo.pop(key, None)
        self.client.delete(self.key(key))

    def _keep(self, key: str, record: StatusRecord, now: float) -> None:
        with self._lock:
            self._memo[key] = (record, now)
            self._memo.move_to_end(key)
            while len(self._memo) > self.memo_size:
                self._memo.popitem(last=False)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(prefix={self.prefix!r})"


class RedisTokenStore(TokenStore):
    """Access tokens in Redis, for every instance at once: the token store the extension uses
    with ``OBDCR_REDIS_URL`` when the client store keeps none (``LDAPStore``, a store of your
    own). SQLite and SQLAlchemy stores keep tokens in their own database instead.

    A token is ``<prefix>token:<hash>`` (its record as JSON) and expires from Redis when the
    token does. Each client has a sorted set of its tokens' hashes, scored by expiry, pruned
    of expired ones at every save (one Lua script with the write) and expiring from Redis
    with its longest-lived token, so nothing is left for :meth:`purge_expired` to do. Revoking
    a client's tokens finds them all: a Lua script deletes them and the set in one atomic
    step, and a token saved meanwhile is either in the set (deleted) or saved after it (a
    token issued after the revocation began, as from a request that raced it). Redis errors
    propagate: the extension answers 503.
    """

    #: found tokens are answered from this process a while (TokenStore, "The lookup cache")
    default_cache_seconds = SHARED_CACHE_SECONDS

    default_purge_every = 0  # Redis expires the tokens and their indexes itself
    _FIELDS = ("client_id", "scope", "issued_at", "expires_at", "x5t_s256")
    # KEYS: the token, the client's index. ARGV: the record, its TTL in ms, its hash, its
    # expiry, now (whole seconds).
    _SAVE = """
        redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
        redis.call('ZADD', KEYS[2], ARGV[4], ARGV[3])
        redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[5])
        if redis.call('PTTL', KEYS[2]) < tonumber(ARGV[2]) then
            redis.call('PEXPIRE', KEYS[2], ARGV[2])
        end
    """
    # KEYS: the client's index. ARGV: the token key prefix, the client_id. A token saved
    # again for another client (the same string: never, in practice) is that client's now.
    _REVOKE_CLIENT = """
        local hashes = redis.call('ZRANGE', KEYS[1], 0, -1)
        local deleted = 0
        for _, hash in ipairs(hashes) do
            local key = ARGV[1] .. hash
            local value = redis.call('GET', key)
            if value then
                local ok, record = pcall(cjson.decode, value)
                if not ok or type(record) ~= 'table' or record['client_id'] == ARGV[2] then
                    deleted = deleted + redis.call('DEL', key)
                end
            end
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
        **kw: Any,
    ) -> None:
        super().__init__(clock=clock, **kw)
        self.client = redis_client(client_or_url)
        self.prefix = _check_prefix(prefix)
        self._save_script = self.client.register_script(self._SAVE)
        self._revoke_client_script = self.client.register_script(self._REVOKE_CLIENT)

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
        self._save_script(
            keys=[self._token_key(record.token_hash), self._client_key(record.client_id)],
            args=[value, ttl_ms, record.token_hash, record.expires_at, math.floor(now)],
        )

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

    def _revoke_client(self, client_id: str) -> int:
        deleted = self._revoke_client_script(
            keys=[self._client_key(client_id)], args=[f"{self.prefix}token:", client_id]
        )
        return int(deleted)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(prefix={self.prefix!r})"


def shared_caches(
    client_or_url: RedisLike | str,
    *,
    prefix: str = "obdcr:",
    clock: Callable[[], float] = time.time,
    quota_per_owner: int | None = DEFAULT_QUOTA_PER_OWNER,
) -> tuple[RedisReplayCache, RedisJWKSCache]:
    """The replay cache and the JWKS cache on one Redis client (one connection pool)."""
    client = redis_client(client_or_url)
    return (
        RedisReplayCache(client, prefix=prefix, clock=clock, quota_per_owner=quota_per_owner),
        RedisJWKSCache(client, prefix=prefix, clock=clock),
    )
