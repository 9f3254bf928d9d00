"""Shared state in Redis: the jti replay cache, the JWKS cache, the revocation verdict cache and
the token store, alone and behind two apps. Each runs its contract test class
(test_replay_cache.py, test_jwks_cache.py, test_revocation_cache.py, test_token_store.py) and,
here, what only Redis shows.

Needs the Redis at ``OBDCR_TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``). Each test
works under its own key prefix and deletes its keys afterwards. Without a reachable Redis the
tests are skipped, except in CI (``CI`` set), where they fail.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
import uuid
from types import SimpleNamespace
from typing import Any

import pytest

redis = pytest.importorskip("redis")

from flask import Flask  # noqa: E402
from test_jwks_cache import JWKSCacheContract  # noqa: E402
from test_replay_cache import ReplayCacheContract  # noqa: E402
from test_revocation_cache import SharedRevocationCacheContract, record  # noqa: E402
from test_token_store import TokenStoreContract  # noqa: E402

from flask_obdcr import OpenBankingDCR  # noqa: E402
from flask_obdcr.jwks import CacheEntry, StaticFetcher  # noqa: E402
from flask_obdcr.revoked_keys import REVOKED_ENDPOINT_CLAIMS  # noqa: E402
from flask_obdcr.storage import MemoryStore, ReplayQuotaExceeded, StatusRecord  # noqa: E402
from flask_obdcr.storage.redis import (  # noqa: E402
    RedisJWKSCache,
    RedisReplayCache,
    RedisRevocationCache,
    RedisTokenStore,
    redis_client,
    shared_caches,
)
from flask_obdcr.testing.clock import FrozenClock  # noqa: E402
from flask_obdcr.testing.fixtures import ISSUER  # noqa: E402

REDIS_URL = os.environ.get("OBDCR_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
UNREACHABLE = "redis://127.0.0.1:1/0"


@pytest.fixture(scope="module")
def redis_server():
    client = redis_client(REDIS_URL)
    try:
        client.ping()
    except redis.RedisError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"Redis at {REDIS_URL} is required in CI: {exc}")
        pytest.skip(f"no Redis at {REDIS_URL}: {exc}")
    yield client
    client.close()


@pytest.fixture
def prefix(redis_server):
    """A key prefix of this test's own; its keys are deleted afterwards."""
    value = f"obdcr-test:{uuid.uuid4().hex}:"
    yield value
    keys = list(redis_server.scan_iter(match=f"{value}*", count=1000))
    if keys:
        redis_server.delete(*keys)


def keys_under(client, prefix: str) -> list[str]:
    return sorted(key.decode() for key in client.scan_iter(match=f"{prefix}*", count=1000))


# -- RedisReplayCache ----------------------------------------------------------------------


class TestRedisReplayCache(ReplayCacheContract):
    expires_by_itself = True

    @pytest.fixture
    def cache_factory(self, prefix):
        return lambda **kw: RedisReplayCache(REDIS_URL, prefix=prefix, min_ttl=0.05, **kw)

    @pytest.fixture
    def peer_caches(self, cache_factory):
        """Eight instances, each with its own connection pool, as eight processes."""
        return [cache_factory() for _ in range(8)]

    def test_instances_and_prefixes(self, redis_server, prefix, cache_factory):
        expires = time.time() + 60
        assert cache_factory().remember("iss:jti-1", expires)
        other = RedisReplayCache(REDIS_URL, prefix=prefix)  # another server process
        assert other.seen("iss:jti-1")
        assert other.remember("iss:jti-1", expires) is False
        # a different prefix is a different namespace
        elsewhere = RedisReplayCache(redis_server, prefix=prefix + "other:")
        assert elsewhere.remember("iss:jti-1", expires)

    def test_quota_is_shared_by_the_instances(self, prefix):
        clock = FrozenClock(1_000_000)
        one, two = (
            RedisReplayCache(REDIS_URL, prefix=prefix, clock=clock, quota_per_owner=2)
            for _ in range(2)
        )
        assert one.remember("sw:1", 1_000_060) and two.remember("sw:2", 1_000_030)
        with pytest.raises(ReplayQuotaExceeded) as refused:
            one.remember("sw:3", 1_000_060)
        assert refused.value.retry_after == 31
        one.forget("sw:2")  # an operator's forget frees its place too
        assert two.remember("sw:3", 1_000_060)

    def test_owner_sets_expire_with_their_entries(self, redis_server, prefix):
        clock = FrozenClock(1_000_000)
        cache = RedisReplayCache(redis_server, prefix=prefix, clock=clock)
        assert cache.remember("sw:1", 1_000_060)
        assert cache.remember("sw:2", 1_000_030)
        owner = cache.owner_key("sw")
        assert keys_under(redis_server, prefix) == sorted(
            [cache.key("sw:1"), cache.key("sw:2"), owner]
        )
        assert owner.startswith(f"{prefix}jti-owner:") and len(owner) == len(prefix) + 10 + 64
        assert 59_000 < redis_server.pttl(owner) <= 60_000  # with the longest-lived entry
        clock.advance(40)  # sw:2 expired by our clock: pruned at the next remember
        assert cache.remember("sw:3", 1_000_050)
        assert redis_server.zcard(owner) == 2


def test_replay_keys_are_hashed_and_bounded(redis_server, prefix):
    cache = RedisReplayCache(redis_server, prefix=prefix)
    jti = "attacker\r\ncontrolled" + "x" * 5000
    assert cache.remember(f"iss:{jti}", time.time() + 60, owner=jti)
    key, owner = cache.key(f"iss:{jti}"), cache.owner_key(jti)
    assert keys_under(redis_server, prefix) == sorted([key, owner])
    assert key.startswith(f"{prefix}jti:") and len(key) == len(prefix) + 4 + 64
    assert owner.startswith(f"{prefix}jti-owner:") and len(owner) == len(prefix) + 10 + 64
    assert redis_server.zrange(owner, 0, -1) == [key.rpartition(":")[2].encode()]


def test_replay_ttl_comes_from_the_injected_clock(redis_server, prefix):
    # the caller's clock (a test clock here, years away from Redis's) decides the TTL
    clock = FrozenClock(1_000_000)
    cache = RedisReplayCache(redis_server, prefix=prefix, clock=clock)
    assert cache.remember("k", 1_000_060)
    assert 59_000 < redis_server.pttl(cache.key("k")) <= 60_000
    # an expires_at already past is still kept for min_ttl (never stored without expiry)
    assert cache.remember("past", 999_000)
    assert 0 < redis_server.pttl(cache.key("past")) <= 1000


def test_replay_fails_closed_when_redis_is_down(prefix):
    cache = RedisReplayCache(redis.Redis.from_url(UNREACHABLE, socket_connect_timeout=1))
    with pytest.raises(redis.ConnectionError):
        cache.remember("k", time.time() + 60)
    with pytest.raises(redis.ConnectionError):
        cache.seen("k")


def test_prefix_must_be_a_non_empty_string(redis_server):
    for bad in ("", None, "x" * 101):
        with pytest.raises(ValueError, match="prefix"):
            RedisReplayCache(redis_server, prefix=bad)
        with pytest.raises(ValueError, match="prefix"):
            RedisJWKSCache(redis_server, prefix=bad)
        with pytest.raises(ValueError, match="prefix"):
            RedisRevocationCache(redis_server, prefix=bad)


# -- RedisJWKSCache ------------------------------------------------------------------------

URL = "https://keystore.sandbox-directory.test/org/software.jwks"


class TestRedisJWKSCache(JWKSCacheContract):
    @pytest.fixture
    def cache_factory(self, prefix):
        return lambda clock: RedisJWKSCache(REDIS_URL, prefix=prefix, clock=clock)

    @pytest.fixture
    def peer_caches(self, cache_factory, clock):
        """Two instances, each with its own connection pool, as two processes."""
        return [cache_factory(clock) for _ in range(2)]


@pytest.fixture
def entry(ob_software) -> CacheEntry:
    now = time.time()
    return CacheEntry(
        raw=json.dumps(ob_software.jwks()),
        fetched_at=now,
        fresh_until=now + 300,
        stale_until=now + 3900,
    )


def test_jwks_entry_round_trip_and_expiry(redis_server, prefix, entry):
    writer = RedisJWKSCache(redis_server, prefix=prefix)
    writer.set(URL, entry)
    [key] = keys_under(redis_server, prefix)
    assert key == writer.key(URL) and key.startswith(f"{prefix}jwks:")
    # kept in Redis until stale_until, measured from the fetch
    assert 3_899_000 < redis_server.pttl(key) <= 3_900_000
    stored = json.loads(redis_server.get(key))
    assert stored["url"] == URL
    assert CacheEntry.from_dict(stored) == entry
    reader = RedisJWKSCache(REDIS_URL, prefix=prefix)  # another process
    got = reader.get(URL)
    assert got == entry
    assert [k.get("kid") for k in got.parsed().keys] == [
        k["kid"] for k in json.loads(entry.raw)["keys"]
    ]
    assert reader.get("https://other.test/jwks") is None


def test_jwks_warm_lookup_does_not_parse_again(redis_server, prefix, entry, monkeypatch):
    RedisJWKSCache(redis_server, prefix=prefix).set(URL, entry)
    reader = RedisJWKSCache(redis_server, prefix=prefix, recheck_after=0)  # Redis every time
    parses = []
    original = CacheEntry.parsed

    def counting(self):
        if self._parsed is None:
            parses.append(1)
        return original(self)

    monkeypatch.setattr(CacheEntry, "parsed", counting)
    first = reader.get(URL)
    first.parsed()  # as the JWKS client does with what the cache gives it
    assert reader.get(URL) is first and reader.get(URL) is first
    first.parsed()
    assert len(parses) == 1
    # another instance re-fetched: a new entry in Redis is parsed once, then reused
    newer = CacheEntry(
        entry.raw, entry.fetched_at + 10, entry.fresh_until + 10, entry.stale_until + 10
    )
    RedisJWKSCache(redis_server, prefix=prefix).set(URL, newer)
    second = reader.get(URL)
    assert second == newer and second is not first
    second.parsed()
    assert reader.get(URL) is second
    second.parsed()
    assert len(parses) == 2


def test_jwks_recent_fresh_entry_is_used_without_asking_redis(redis_server, prefix, entry):
    ticks = FrozenClock(1000)
    clock = FrozenClock(entry.fetched_at)
    RedisJWKSCache(redis_server, prefix=prefix).set(URL, entry)
    reader = RedisJWKSCache(redis_server, prefix=prefix, clock=clock, monotonic=ticks)
    reads = []
    real_get = reader.client.get
    reader.client = SimpleNamespace(get=lambda key: reads.append(key) or real_get(key))
    first = reader.get(URL)
    assert reader.get(URL) is first and reads == [reader.key(URL)]
    # another instance fetched the set again: seen once this process's copy is a second old
    newer = CacheEntry(
        entry.raw, entry.fetched_at + 10, entry.fresh_until + 10, entry.stale_until + 10
    )
    RedisJWKSCache(redis_server, prefix=prefix).set(URL, newer)
    ticks.advance(0.9)
    assert reader.get(URL) is first and len(reads) == 1
    ticks.advance(0.1)
    assert reader.get(URL) == newer and len(reads) == 2
    second = reader.get(URL)
    assert second == newer and len(reads) == 2
    # an entry that is no longer fresh is never taken on trust: Redis is asked
    clock.set(newer.fresh_until)
    assert reader.get(URL) == newer and len(reads) == 3


def test_jwks_memo_is_bounded(redis_server, prefix, entry):
    cache = RedisJWKSCache(redis_server, prefix=prefix, memo_size=2)
    for n in range(5):
        cache.set(f"{URL}?{n}", entry)
    assert list(cache._memo) == [f"{URL}?3", f"{URL}?4"]
    assert cache.get(f"{URL}?0") == entry  # still in Redis


@pytest.mark.parametrize(
    "value",
    [
        pytest.param(b"not json", id="not-json"),
        pytest.param(b"[1, 2]", id="not-an-object"),
        pytest.param(b'{"url": "%s", "raw": "{}"}' % URL.encode(), id="missing-timestamps"),
        pytest.param(
            json.dumps(
                {
                    "url": "https://elsewhere.test/jwks",
                    "raw": '{"keys": []}',
                    "fetched_at": 1,
                    "fresh_until": 2,
                    "stale_until": 3,
                }
            ).encode(),
            id="other-url",
        ),
    ],
)
def test_jwks_corrupt_entry_is_ignored(redis_server, prefix, value):
    cache = RedisJWKSCache(redis_server, prefix=prefix)
    redis_server.set(cache.key(URL), value, px=60_000)
    assert cache.get(URL) is None
    # (an entry whose raw is no JWKS is the client's to refuse: the JWKSCache contract)


def test_jwks_cache_survives_a_redis_outage(entry):
    cache = RedisJWKSCache(redis.Redis.from_url(UNREACHABLE, socket_connect_timeout=1))
    assert cache.get(URL) is None  # no copy here: the client will fetch
    cache.set(URL, entry)  # does not raise; kept in this process
    assert cache.get(URL) is entry


# -- RedisRevocationCache ------------------------------------------------------------------


class TestRedisRevocationCache(SharedRevocationCacheContract):
    expires_by_itself = True

    @pytest.fixture
    def cache_factory(self, prefix):
        return lambda clock: RedisRevocationCache(REDIS_URL, prefix=prefix, clock=clock)

    @pytest.fixture
    def peer_caches(self, cache_factory, clock):
        """Two instances, each with its own connection pool, as two processes."""
        return [cache_factory(clock) for _ in range(2)]

    @pytest.fixture
    def plant(self, redis_server):
        def plant(cache, key: str, value: bytes) -> None:
            redis_server.set(cache.key(key), value, px=60_000)

        return plant

    @pytest.fixture
    def broken_cache_factory(self):
        return lambda clock: RedisRevocationCache(
            redis.Redis.from_url(UNREACHABLE, socket_connect_timeout=1), clock=clock
        )

    def test_options_are_checked(self, redis_server):
        with pytest.raises(ValueError, match="memo_size"):
            RedisRevocationCache(redis_server, memo_size=0)
        with pytest.raises(ValueError, match="recheck_after"):
            RedisRevocationCache(redis_server, recheck_after=-1)


def test_revocation_record_layout_and_ttl(redis_server, prefix):
    # a test clock years away from Redis's: the TTL is keep_until measured from fetched_at
    clock = FrozenClock(1_000_000)
    cache = RedisRevocationCache(redis_server, prefix=prefix, clock=clock)
    key = "ab" * 32 + ":1f"
    verdict = record(clock(), keep_until=clock() + 3600)
    cache.set(key, verdict)
    assert keys_under(redis_server, prefix) == [f"{prefix}revocation:{key}"] == [cache.key(key)]
    assert 3_599_000 < redis_server.pttl(cache.key(key)) <= 3_600_000
    assert StatusRecord.from_dict(json.loads(redis_server.get(cache.key(key)))) == verdict
    # kept nowhere but this process when there is nothing to keep
    cache.set("gone", record(clock(), keep_until=clock()))
    assert redis_server.get(cache.key("gone")) is None
    assert repr(cache) == f"RedisRevocationCache(prefix={prefix!r})"


def test_revocation_recent_record_is_used_without_asking_redis(redis_server, prefix):
    ticks = FrozenClock(1000)
    clock = FrozenClock(1_000_000)
    RedisRevocationCache(redis_server, prefix=prefix).set("k", record(clock()))
    reader = RedisRevocationCache(redis_server, prefix=prefix, clock=clock, monotonic=ticks)
    reads = []
    real_get = reader.client.get
    reader.client = SimpleNamespace(get=lambda key: reads.append(key) or real_get(key))
    first = reader.get("k")
    assert reader.get("k") is first and reads == [reader.key("k")]
    # another instance refreshed the verdict: seen once this process's copy is a second old
    newer = record(clock() + 10)
    RedisRevocationCache(redis_server, prefix=prefix).set("k", newer)
    ticks.advance(0.9)
    assert reader.get("k") is first and len(reads) == 1
    ticks.advance(0.1)
    assert reader.get("k") == newer and len(reads) == 2
    assert reader.get("k") == newer and len(reads) == 2
    # a record due for refresh is never taken on trust: Redis is asked
    clock.set(newer.refresh_at)
    assert reader.get("k") == newer and len(reads) == 3


def test_revocation_memo_is_bounded(redis_server, prefix):
    cache = RedisRevocationCache(redis_server, prefix=prefix, memo_size=2)
    for n in range(5):
        cache.set(f"k{n}", record(time.time()))
    assert list(cache._memo) == ["k3", "k4"]
    assert cache.get("k0") is not None  # still in Redis


def test_revocation_delete_forgets_here_and_in_redis(redis_server, prefix):
    cache = RedisRevocationCache(redis_server, prefix=prefix)
    cache.set("k", record(time.time()))
    other = RedisRevocationCache(REDIS_URL, prefix=prefix)
    assert other.get("k") == cache.get("k")
    cache.delete("k")
    assert cache.get("k") is None
    assert redis_server.get(cache.key("k")) is None


def test_revocation_cache_without_redis_answers_from_this_process(caplog):
    unreachable = redis.Redis.from_url(UNREACHABLE, socket_connect_timeout=1)
    cache = RedisRevocationCache(unreachable, recheck_after=0)  # asks Redis every time
    verdict = record(time.time())
    cache.set("k", verdict)
    assert "record kept here only" in caplog.text
    assert cache.get("k") is verdict
    assert "using this process's copy" in caplog.text
    with pytest.raises(redis.ConnectionError):  # an operator's delete says it failed
        cache.delete("k")


# -- two app instances sharing Redis -------------------------------------------------------


@pytest.fixture
def make_bank(tmp_path, ob_directory, ob_clock):
    """Build one bank instance (as ``ob_app_factory`` does) with the caches given."""

    def make(name: str, **extension: Any) -> tuple[Flask, StaticFetcher, MemoryStore]:
        fetcher = StaticFetcher(ob_directory.documents(), allowed_hosts=[ob_directory.host])
        store = MemoryStore()
        app = Flask(name, instance_path=str(tmp_path / name))
        app.config.update(ob_directory.app_config(tmp_path / "ca.pem", issuer=ISSUER))
        app.testing = True
        OpenBankingDCR(app, store=store, jwks_fetcher=fetcher, clock=ob_clock, **extension)
        return app, fetcher, store

    return make


@pytest.fixture
def two_banks(make_bank, prefix, ob_clock):
    """Instances A and B, each with its own Redis client, store and fetcher."""
    banks = []
    for name in ("bank_a", "bank_b"):
        replay_cache, jwks_cache = shared_caches(REDIS_URL, prefix=prefix, clock=ob_clock)
        banks.append(make_bank(name, replay_cache=replay_cache, jwks_cache=jwks_cache))
    return banks


def post(app, body, software):
    with app.test_client() as client:
        return client.post(
            "/register",
            data=body,
            content_type="application/jwt",
            environ_base=software.environ(),
        )


def test_request_replayed_at_another_instance_is_refused(two_banks, ob_directory, ob_software):
    (app_a, _, store_a), (app_b, _, store_b) = two_banks
    body = ob_directory.registration_request(ob_software, aud=ISSUER)
    first = post(app_a, body, ob_software)
    assert first.status_code == 201, first.get_json()
    assert len(store_a) == 1
    replay = post(app_b, body, ob_software)
    assert replay.status_code == 400
    assert replay.headers["Cache-Control"] == "no-store"
    assert replay.get_json() == {
        "error": "invalid_client_metadata",
        "error_description": "The request JWT has been used before (jti replayed).",
    }
    assert list(store_b.list()) == []
    assert len(store_a) == 1
    # and a fresh request still registers at B
    fresh = post(app_b, ob_directory.registration_request(ob_software, aud=ISSUER), ob_software)
    assert fresh.status_code == 201, fresh.get_json()
    assert len(store_b) == 1


def test_replay_refused_with_memory_jwks_caches(
    make_bank, prefix, ob_clock, ob_directory, ob_software
):
    """The replay cache alone is enough to stop a cross-instance replay."""
    banks = [
        make_bank(name, replay_cache=RedisReplayCache(REDIS_URL, prefix=prefix, clock=ob_clock))
        for name in ("bank_a", "bank_b")
    ]
    (app_a, fetcher_a, _), (app_b, fetcher_b, store_b) = banks
    body = ob_directory.registration_request(ob_software, aud=ISSUER)
    assert post(app_a, body, ob_software).status_code == 201
    replay = post(app_b, body, ob_software)
    assert (replay.status_code, replay.get_json()["error"]) == (400, "invalid_client_metadata")
    assert len(store_b) == 0
    assert fetcher_a.calls and fetcher_b.calls  # each fetched for itself: no shared JWKS cache


def test_a_software_over_its_quota_is_429_at_every_instance(
    make_bank, prefix, ob_clock, ob_directory, ob_software
):
    banks = []
    for name in ("bank_a", "bank_b"):
        replay_cache, jwks_cache = shared_caches(
            REDIS_URL, prefix=prefix, clock=ob_clock, quota_per_owner=1
        )
        banks.append(make_bank(name, replay_cache=replay_cache, jwks_cache=jwks_cache))
    (app_a, _, store_a), (app_b, _, store_b) = banks
    first = post(app_a, ob_directory.registration_request(ob_software, aud=ISSUER), ob_software)
    assert first.status_code == 201, first.get_json()
    over = post(app_b, ob_directory.registration_request(ob_software, aud=ISSUER), ob_software)
    assert (over.status_code, over.get_json()["error"]) == (429, "too_many_requests")
    assert 330 <= int(over.headers["Retry-After"]) <= 332  # the first jti's exp + skew
    assert (len(store_a), len(store_b)) == (1, 0)


def test_jwks_fetched_by_one_instance_is_used_by_the_other(two_banks, ob_directory, ob_software):
    (app_a, fetcher_a, _), (app_b, fetcher_b, store_b) = two_banks
    first = post(app_a, ob_directory.registration_request(ob_software, aud=ISSUER), ob_software)
    assert first.status_code == 201, first.get_json()
    # the Directory's keys, the software's and the SSA's revoked key sets
    ssa = ob_directory.ssa_claims(ob_software)
    revoked = [ssa[claim] for claim in REVOKED_ENDPOINT_CLAIMS]
    assert sorted(fetcher_a.calls) == sorted(
        [ob_directory.jwks_url, ob_software.jwks_url, *revoked]
    )
    second = post(app_b, ob_directory.registration_request(ob_software, aud=ISSUER), ob_software)
    assert second.status_code == 201, second.get_json()
    assert fetcher_b.calls == []  # every key set came from Redis
    assert len(store_b) == 1


def test_racing_copies_across_instances_register_once(two_banks, ob_directory, ob_software):
    (app_a, _, store_a), (app_b, _, store_b) = two_banks
    # warm both instances so the race is about the jti, not about who fetches first
    assert (
        post(
            app_a, ob_directory.registration_request(ob_software, aud=ISSUER), ob_software
        ).status_code
        == 201
    )
    body = ob_directory.registration_request(ob_software, aud=ISSUER)
    barrier = threading.Barrier(8)
    statuses: list[int] = []
    lock = threading.Lock()

    def worker(app):
        barrier.wait()
        status = post(app, body, ob_software).status_code
        with lock:
            statuses.append(status)

    threads = [threading.Thread(target=worker, args=(app,)) for app in [app_a, app_b] * 4]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(statuses) == [201] + [400] * 7
    assert len(store_a) + len(store_b) == 2  # the warm-up and the one winner


def test_redis_down_refuses_registration(make_bank, ob_directory, ob_software):
    """Fail closed: without the replay cache no request is accepted."""
    app, _, store = make_bank(
        "bank_down",
        replay_cache=RedisReplayCache(redis.Redis.from_url(UNREACHABLE, socket_connect_timeout=1)),
    )
    app.testing = False  # the error handler's answer, not the exception itself
    response = post(app, ob_directory.registration_request(ob_software, aud=ISSUER), ob_software)
    assert response.status_code >= 500
    assert len(store) == 0


# -- RedisTokenStore -----------------------------------------------------------------------


class TestRedisTokenStore(TokenStoreContract):
    expires_by_itself = True

    @pytest.fixture
    def token_store_factory(self, prefix):
        return lambda **kw: RedisTokenStore(REDIS_URL, prefix=prefix, **kw)


def test_token_records_and_indexes_expire_with_the_tokens(redis_server, prefix):
    clock = FrozenClock(1_000_000)
    tokens = RedisTokenStore(REDIS_URL, prefix=prefix, clock=clock)
    fields = {"client_id": "c1", "scope": "accounts", "issued_at": 1_000_000}
    tokens.save("tok-a", expires_at=1_000_300, x5t_s256="thumb", **fields)
    tokens.save("tok-b", expires_at=1_000_100, **fields)
    tokens.save("tok-old", expires_at=999_999, **fields)  # expired already: not stored
    record = tokens.find("tok-a")
    index = f"{prefix}client-tokens:{hashlib.sha256(b'c1').hexdigest()}"
    assert set(keys_under(redis_server, prefix)) == {
        f"{prefix}token:{record.token_hash}",
        f"{prefix}token:{tokens.find('tok-b').token_hash}",
        index,
    }
    # kept in Redis as long as the token lives, measured on the injected clock; the client's
    # index as long as its longest-lived token
    assert 299_000 < redis_server.pttl(f"{prefix}token:{record.token_hash}") <= 300_000
    assert 299_000 < redis_server.pttl(index) <= 300_000
    tokens.save("tok-c", expires_at=1_000_050, **fields)  # a shorter one: the index keeps its TTL
    assert 299_000 < redis_server.pttl(index) <= 300_000
    # another instance (its own client) revokes c1's tokens, expired ones still in Redis too
    other = RedisTokenStore(redis_client(REDIS_URL), prefix=prefix, clock=clock)
    clock.advance(100)
    assert other.revoke_client("c1") == 3
    assert keys_under(redis_server, prefix) == []


def test_token_index_drops_expired_tokens_as_it_goes(redis_server, prefix):
    clock = FrozenClock(1_000_000)
    tokens = RedisTokenStore(REDIS_URL, prefix=prefix, clock=clock)
    for n in range(5):
        tokens.save(f"t{n}", client_id="c1", scope="accounts", issued_at=0, expires_at=1_000_010)
    clock.advance(20)
    tokens.save("fresh", client_id="c1", scope="accounts", issued_at=0, expires_at=1_000_100)
    index = f"{prefix}client-tokens:{hashlib.sha256(b'c1').hexdigest()}"
    assert redis_server.zcard(index) == 1


def test_instances_share_access_tokens_through_redis(
    tmp_path, prefix, ob_directory, ob_software, ob_clock
):
    """A store that keeps no tokens (as LDAPStore) + OBDCR_REDIS_URL: tokens in Redis, so a
    token issued by one instance works at the other, and revoking at one revokes at both."""
    store = MemoryStore()  # one client store both instances reach, as a directory would be
    apps = []
    for name in ("bank_a", "bank_b"):
        app = Flask(name, instance_path=str(tmp_path / name))
        app.config.update(ob_directory.app_config(tmp_path / "ca.pem", issuer=ISSUER))
        app.config.update(OBDCR_REDIS_URL=REDIS_URL, OBDCR_REDIS_PREFIX=prefix)
        app.testing = True
        fetcher = StaticFetcher(ob_directory.documents(), allowed_hosts=[ob_directory.host])
        OpenBankingDCR(app, store=store, jwks_fetcher=fetcher, clock=ob_clock)
        apps.append(app)
    tokens_a, tokens_b = (app.extensions["obdcr"].tokens for app in apps)
    assert isinstance(tokens_a, RedisTokenStore) and isinstance(tokens_b, RedisTokenStore)
    registered = post(
        apps[0], ob_directory.registration_request(ob_software, aud=ISSUER), ob_software
    )
    assert registered.status_code == 201, registered.get_json()
    client_id = registered.get_json()["client_id"]
    now = int(ob_clock())
    tokens_a.save(
        "issued-at-a", client_id=client_id, scope="accounts", issued_at=now, expires_at=now + 300
    )
    bearer = {"Authorization": "Bearer issued-at-a"}
    with apps[1].test_client() as http:
        read = http.get(
            f"/register/{client_id}", headers=bearer, environ_base=ob_software.environ()
        )
        assert read.status_code == 200, read.get_json()
        deleted = http.delete(
            f"/register/{client_id}", headers=bearer, environ_base=ob_software.environ()
        )
        assert deleted.status_code == 204
    assert tokens_a.find("issued-at-a") is None
    assert store.get(client_id) is None
