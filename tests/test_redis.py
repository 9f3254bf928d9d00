"""Shared state in Redis: the jti replay cache, the JWKS cache and the token store, alone and
behind two apps.

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

from flask_obdcr import OpenBankingDCR  # noqa: E402
from flask_obdcr.jwks import CacheEntry, JWKSClient, StaticFetcher  # noqa: E402
from flask_obdcr.redis import (  # noqa: E402
    RedisJWKSCache,
    RedisReplayCache,
    RedisTokenStore,
    redis_client,
    shared_caches,
)
from flask_obdcr.storage import MemoryStore  # noqa: E402
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


def test_replay_remember_is_check_and_set(redis_server, prefix):
    cache = RedisReplayCache(redis_server, prefix=prefix)
    expires = time.time() + 60
    assert not cache.seen("iss:jti-1")
    assert cache.remember("iss:jti-1", expires) is True
    assert cache.seen("iss:jti-1")
    assert cache.remember("iss:jti-1", expires) is False
    assert cache.remember("iss:jti-2", expires) is True
    # a second instance (another server process) sees the same state
    other = RedisReplayCache(REDIS_URL, prefix=prefix)
    assert other.seen("iss:jti-1")
    assert other.remember("iss:jti-1", expires) is False
    # a different prefix is a different namespace
    assert RedisReplayCache(redis_server, prefix=prefix + "other:").remember("iss:jti-1", expires)


def test_replay_keys_are_hashed_and_bounded(redis_server, prefix):
    cache = RedisReplayCache(redis_server, prefix=prefix)
    jti = "attacker\r\ncontrolled" + "x" * 5000
    assert cache.remember(f"iss:{jti}", time.time() + 60)
    [key] = keys_under(redis_server, prefix)
    assert key == cache.key(f"iss:{jti}")
    assert key.startswith(f"{prefix}jti:") and len(key) == len(prefix) + 4 + 64


def test_replay_ttl_comes_from_the_injected_clock(redis_server, prefix):
    # the caller's clock (a test clock here, years away from Redis's) decides the TTL
    clock = FrozenClock(1_000_000)
    cache = RedisReplayCache(redis_server, prefix=prefix, clock=clock)
    assert cache.remember("k", 1_000_060)
    assert 59_000 < redis_server.pttl(cache.key("k")) <= 60_000
    # an expires_at already past is still kept for min_ttl (never stored without expiry)
    assert cache.remember("past", 999_000)
    assert 0 < redis_server.pttl(cache.key("past")) <= 1000


def test_replay_entries_expire(redis_server, prefix):
    cache = RedisReplayCache(redis_server, prefix=prefix, min_ttl=0.05)
    assert cache.remember("k", time.time() + 0.2)
    assert cache.remember("k", time.time() + 0.2) is False
    time.sleep(0.35)
    assert not cache.seen("k")
    assert cache.remember("k", time.time() + 60)


def test_replay_exactly_one_of_racing_writers_wins(redis_server, prefix):
    caches = [RedisReplayCache(REDIS_URL, prefix=prefix) for _ in range(8)]  # 8 "instances"
    barrier = threading.Barrier(len(caches))
    results: list[bool] = []
    lock = threading.Lock()

    def worker(cache):
        barrier.wait()
        for n in range(50):
            won = cache.remember(f"iss:jti-{n}", time.time() + 60)
            with lock:
                results.append(won)

    threads = [threading.Thread(target=worker, args=(cache,)) for cache in caches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 400
    assert results.count(True) == 50  # each jti accepted once, whichever instance got it


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


# -- RedisJWKSCache ------------------------------------------------------------------------

URL = "https://keystore.sandbox-directory.test/org/software.jwks"


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
    assert reader.get(URL) is first and reader.get(URL) is first
    assert len(parses) == 1
    # another instance re-fetched: a new entry in Redis is parsed once, then reused
    newer = CacheEntry(
        entry.raw, entry.fetched_at + 10, entry.fresh_until + 10, entry.stale_until + 10
    )
    RedisJWKSCache(redis_server, prefix=prefix).set(URL, newer)
    second = reader.get(URL)
    assert second == newer and second is not first
    assert reader.get(URL) is second
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
                {"url": URL, "raw": "nope", "fetched_at": 1, "fresh_until": 2, "stale_until": 3}
            ).encode(),
            id="raw-not-a-jwks",
        ),
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


def test_jwks_cache_survives_a_redis_outage(entry):
    cache = RedisJWKSCache(redis.Redis.from_url(UNREACHABLE, socket_connect_timeout=1))
    assert cache.get(URL) is None  # no copy here: the client will fetch
    cache.set(URL, entry)  # does not raise; kept in this process
    assert cache.get(URL) is entry


def test_jwks_clients_share_fetches(redis_server, prefix, ob_directory, ob_software):
    """Two JWKS clients (two server processes) on one Redis: one fetch between them."""
    clock = FrozenClock()
    fetchers = [StaticFetcher(ob_directory.documents()) for _ in range(2)]
    clients = [
        JWKSClient(
            fetcher, cache=RedisJWKSCache(REDIS_URL, prefix=prefix, clock=clock), clock=clock
        )
        for fetcher in fetchers
    ]
    url = ob_software.jwks_url
    kid = ob_software.jwks()["keys"][0]["kid"]
    alg = ob_software.signing_alg
    assert clients[0].find_key(url, kid=kid, alg=alg)["kid"] == kid
    assert clients[1].find_key(url, kid=kid, alg=alg)["kid"] == kid
    assert fetchers[0].calls == [url]
    assert fetchers[1].calls == []
    # once the entry is no longer fresh, the next lookup fetches again (whichever client)
    clock.advance(301)
    clients[1].key_set(url)
    assert fetchers[1].calls == [url]
    clients[0].key_set(url)
    assert fetchers[0].calls == [url]


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


def test_jwks_fetched_by_one_instance_is_used_by_the_other(two_banks, ob_directory, ob_software):
    (app_a, fetcher_a, _), (app_b, fetcher_b, store_b) = two_banks
    first = post(app_a, ob_directory.registration_request(ob_software, aud=ISSUER), ob_software)
    assert first.status_code == 201, first.get_json()
    assert sorted(fetcher_a.calls) == sorted([ob_directory.jwks_url, ob_software.jwks_url])
    second = post(app_b, ob_directory.registration_request(ob_software, aud=ISSUER), ob_software)
    assert second.status_code == 201, second.get_json()
    assert fetcher_b.calls == []  # the Directory's and the software's JWKS both came from Redis
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


def test_token_store_round_trip_expiry_and_revocation(redis_server, prefix):
    clock = FrozenClock(1_000_000)
    tokens = RedisTokenStore(REDIS_URL, prefix=prefix, clock=clock)
    fields = {"client_id": "c1", "scope": "accounts", "issued_at": 1_000_000}
    tokens.save("tok-a", expires_at=1_000_300, x5t_s256="thumb", **fields)
    tokens.save("tok-b", expires_at=1_000_100, **fields)
    tokens.save("tok-c", expires_at=1_000_300, **{**fields, "client_id": "c2"})
    tokens.save("tok-old", expires_at=999_999, **fields)  # expired already: not stored
    record = tokens.find("tok-a")
    assert record is not None and record.cnf == {"x5t#S256": "thumb"}
    assert (record.client_id, record.scope, record.expires_at) == ("c1", "accounts", 1_000_300)
    assert tokens.find("tok-a" + "x") is None and tokens.find("tok-old") is None
    # kept in Redis as long as the token lives, measured on the injected clock
    assert 299_000 < redis_server.pttl(f"{prefix}token:{record.token_hash}") <= 300_000
    # saving the same token again overwrites it
    tokens.save("tok-a", expires_at=1_000_400, **{**fields, "scope": "payments"})
    assert tokens.find("tok-a").scope == "payments"
    clock.advance(100)
    assert tokens.find("tok-b") is None  # expired
    tokens.revoke("tok-c")
    assert tokens.find("tok-c") is None
    # another instance (its own client) revokes c1's tokens: every one of them, nobody else's
    tokens.save("tok-d", expires_at=1_000_400, **{**fields, "client_id": "c2"})
    other = RedisTokenStore(redis_client(REDIS_URL), prefix=prefix, clock=clock)
    assert other.revoke_client("c1") == 2  # tok-a and tok-b (expired, still in Redis)
    assert tokens.find("tok-a") is None
    assert tokens.find("tok-d") is not None
    assert other.revoke_client("c1") == 0
    names = set(keys_under(redis_server, prefix))
    assert names == {
        f"{prefix}token:{tokens.find('tok-d').token_hash}",
        f"{prefix}client-tokens:{hashlib.sha256(b'c2').hexdigest()}",
    }


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
