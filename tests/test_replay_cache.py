"""The ReplayCache contract, run against every backend, and what the registration endpoint
answers when a software is over its quota or the cache is full.

``ReplayCacheContract`` is the one contract test class, shaped like ``ClientStoreContract``: a
backend's test class subclasses it and overrides ``cache_factory`` (keyword arguments:
``clock``, ``quota_per_owner``). Memory runs here, Redis in test_redis.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from test_storage import run_threads

from flask_obdcr import OpenBankingDCR
from flask_obdcr.jwks import StaticFetcher
from flask_obdcr.storage import (
    DEFAULT_QUOTA_PER_OWNER,
    MemoryReplayCache,
    MemoryStore,
    ReplayCache,
    ReplayCacheFull,
    ReplayQuotaExceeded,
)
from flask_obdcr.storage.replay import replay_owner
from flask_obdcr.testing.clock import FrozenClock
from flask_obdcr.testing.fixtures import ISSUER

T0 = 1_000_000.0


class ReplayCacheContract:
    """Every ReplayCache backend behaves like this. Subclasses override the factory."""

    #: a backend whose entries expire by themselves (Redis): purge_expired has nothing to do
    expires_by_itself = False

    @pytest.fixture
    def cache_factory(self) -> Callable[..., ReplayCache]:
        raise NotImplementedError("a backend's test class overrides `cache_factory`")

    @pytest.fixture
    def clock(self) -> FrozenClock:
        return FrozenClock(T0)

    @pytest.fixture
    def cache(self, cache_factory, clock) -> ReplayCache:
        return cache_factory(clock=clock)

    @pytest.fixture
    def peer_caches(self, cache) -> list[ReplayCache]:
        """Eight handles on one cache, as eight processes would hold them. A backend whose
        instances share state overrides this with eight instances."""
        return [cache] * 8

    # -- check-and-set ---------------------------------------------------------------------

    def test_remember_is_check_and_set(self, cache):
        assert cache.seen("sw:jti-1") is False
        assert cache.remember("sw:jti-1", T0 + 60) is True
        assert cache.seen("sw:jti-1") is True
        assert cache.remember("sw:jti-1", T0 + 60) is False
        assert cache.remember("sw:jti-1", T0 + 600, owner="other") is False  # still a replay
        assert cache.remember("sw:jti-2", T0 + 60) is True
        assert cache.seen("sw:jti-3") is False

    def test_keys_are_taken_as_they_are(self, cache):
        keys = ["sw:a", "sw:A", "sw:a ", "sw:\u00e9", "sw:" + "x" * 5000, "sw:a\r\nb"]
        assert [cache.remember(key, T0 + 60) for key in keys] == [True] * len(keys)
        assert [cache.remember(key, T0 + 60) for key in keys] == [False] * len(keys)

    def test_a_key_must_be_a_string(self, cache):
        with pytest.raises(TypeError, match="a replay key is a string"):
            cache.remember(b"sw:jti", T0 + 60)  # type: ignore[arg-type]

    def test_an_entry_expires(self, cache_factory):
        # on the real clock: a backend may expire its entries by itself (Redis's TTLs)
        cache = cache_factory(clock=time.time)
        assert cache.remember("sw:k", time.time() + 0.2)
        assert cache.remember("sw:k", time.time() + 0.2) is False
        time.sleep(0.35)
        assert cache.seen("sw:k") is False
        assert cache.remember("sw:k", time.time() + 60) is True

    def test_exactly_one_of_racing_writers_wins(self, peer_caches):
        results: list[bool] = []

        def writer(peer: ReplayCache) -> None:
            for n in range(50):
                results.append(peer.remember(f"sw:jti-{n}", time.time() + 60))

        assert run_threads(writer, [(peer,) for peer in peer_caches]) == []
        assert len(results) == 50 * len(peer_caches)
        assert results.count(True) == 50  # each jti accepted once, whichever writer got it

    # -- the quota -------------------------------------------------------------------------

    def test_default_quota(self, cache):
        assert cache.quota_per_owner == DEFAULT_QUOTA_PER_OWNER == 10_000

    def test_an_owner_over_quota_is_refused_until_its_oldest_entry_expires(
        self, cache_factory, clock
    ):
        cache = cache_factory(clock=clock, quota_per_owner=3)
        assert cache.remember("a:1", T0 + 30, owner="sw-a")
        assert cache.remember("a:2", T0 + 10, owner="sw-a")  # the oldest to expire
        assert cache.remember("a:3", T0 + 20, owner="sw-a")
        with pytest.raises(ReplayQuotaExceeded) as refused:
            cache.remember("a:4", T0 + 60, owner="sw-a")
        assert (refused.value.owner, refused.value.quota) == ("sw-a", 3)
        assert refused.value.retry_after == 11  # a:2 lives until T0 + 10 inclusive
        assert cache.seen("a:4") is False  # not remembered: the same request may come again
        # a replay is still a replay, quota or not
        assert cache.remember("a:1", T0 + 30, owner="sw-a") is False
        # other owners are not held back
        assert cache.remember("b:1", T0 + 60, owner="sw-b")
        clock.advance(5)
        with pytest.raises(ReplayQuotaExceeded) as refused:
            cache.remember("a:4", T0 + 60, owner="sw-a")
        assert refused.value.retry_after == 6
        clock.set(T0 + 10.5)  # a:2 has expired: room for one
        assert cache.remember("a:4", T0 + 60, owner="sw-a") is True
        with pytest.raises(ReplayQuotaExceeded):
            cache.remember("a:5", T0 + 60, owner="sw-a")

    def test_the_owner_defaults_from_the_key(self, cache_factory, clock):
        assert replay_owner("sw-1:jti:with:colons") == "sw-1"
        assert replay_owner("assertion:client-1:jti:x") == "assertion:client-1"
        cache = cache_factory(clock=clock, quota_per_owner=1)
        assert cache.remember("sw-1:a:b", T0 + 60)
        with pytest.raises(ReplayQuotaExceeded) as refused:
            cache.remember("sw-1:c", T0 + 60)
        assert refused.value.owner == "sw-1"
        assert cache.remember("sw-2:a", T0 + 60)
        assert cache.remember("assertion:client-1:a", T0 + 60)
        with pytest.raises(ReplayQuotaExceeded) as refused:
            cache.remember("assertion:client-1:b", T0 + 60)
        assert refused.value.owner == "assertion:client-1"
        assert cache.remember("assertion:client-2:a", T0 + 60)

    def test_no_quota(self, cache_factory, clock):
        cache = cache_factory(clock=clock, quota_per_owner=None)
        assert all(cache.remember(f"sw:{n}", T0 + 60) for n in range(50))

    @pytest.mark.parametrize("quota", [0, -1, 1.5, "10"])
    def test_quota_is_checked(self, cache_factory, clock, quota):
        with pytest.raises(ValueError, match="quota_per_owner must be a positive integer"):
            cache_factory(clock=clock, quota_per_owner=quota)

    def test_racing_writers_of_one_owner_stay_within_the_quota(self, cache_factory, clock):
        caches = [cache_factory(clock=clock, quota_per_owner=20)]
        won: list[str] = []
        refused: list[int] = []

        def writer(n: int) -> None:
            for i in range(10):
                try:
                    if caches[0].remember(f"sw:{n}-{i}", T0 + 60):
                        won.append(f"{n}-{i}")
                except ReplayQuotaExceeded as exc:
                    refused.append(exc.retry_after)

        assert run_threads(writer, [(n,) for n in range(8)]) == []
        assert (len(won), len(refused)) == (20, 60)
        assert set(refused) == {61}

    # -- purging ---------------------------------------------------------------------------

    def test_purge_expired(self, cache_factory, clock):
        cache = cache_factory(clock=clock)
        for n in range(3):
            assert cache.remember(f"sw:old-{n}", T0 + 10)
        assert cache.remember("sw:live", T0 + 600)
        clock.advance(11)
        assert cache.purge_expired() == (0 if self.expires_by_itself else 3)
        assert cache.purge_expired() == 0
        assert cache.seen("sw:live") is True
        assert cache.remember("sw:live", T0 + 600) is False


# -- the backends ----------------------------------------------------------------------------


class TestMemoryReplayCache(ReplayCacheContract):
    @pytest.fixture
    def cache_factory(self):
        return MemoryReplayCache

    def test_a_full_cache_refuses_without_calling_it_a_replay(self, clock):
        cache = MemoryReplayCache(clock=clock, max_entries=3)
        for n, expires_at in enumerate([T0 + 30, T0 + 20, T0 + 40]):
            assert cache.remember(f"sw-{n}:jti", expires_at)
        with pytest.raises(ReplayCacheFull) as full:
            cache.remember("sw-9:jti", T0 + 60)
        assert full.value.retry_after == 21  # the oldest entry lives until T0 + 20
        assert cache.remember("sw-0:jti", T0 + 30) is False  # a replay still says so
        clock.advance(21)
        assert cache.remember("sw-9:jti", T0 + 60) is True
        assert len(cache) == 3

    def test_max_entries_is_checked(self):
        with pytest.raises(ValueError, match="max_entries"):
            MemoryReplayCache(max_entries=0)

    def test_memory_follows_the_live_entries(self, clock):
        cache = MemoryReplayCache(clock=clock)
        for n in range(2000):
            clock.advance(1)
            assert cache.remember(f"sw-{n % 7}:jti-{n}", clock() + 10)
        assert len(cache) == 11
        assert len(cache._heap) == 11
        assert sum(len(heap) for heap in cache._owners.values()) == 11
        clock.advance(100)
        assert cache.purge_expired() == 11
        assert cache._owners == {} and cache._heap == [] and len(cache) == 0


# -- through the registration endpoint -------------------------------------------------------


@pytest.fixture
def make_bank(tmp_path, ob_directory, ob_clock):
    """A bank whose extension uses ``replay_cache``."""

    def make(replay_cache: Any) -> tuple[Flask, MemoryStore]:
        store = MemoryStore()
        app = Flask("quota_bank", instance_path=str(tmp_path / "instance"))
        app.config.update(ob_directory.app_config(tmp_path / "ca.pem", issuer=ISSUER))
        app.testing = True
        fetcher = StaticFetcher(ob_directory.documents(), allowed_hosts=[ob_directory.host])
        OpenBankingDCR(
            app, store=store, jwks_fetcher=fetcher, clock=ob_clock, replay_cache=replay_cache
        )
        return app, store

    return make


def post(app, body, software):
    with app.test_client() as client:
        return client.post(
            "/register", data=body, content_type="application/jwt", environ_base=software.environ()
        )


def test_a_software_over_its_quota_gets_429(
    make_bank, ob_clock, ob_directory, ob_software, ob_ec_software
):
    app, store = make_bank(MemoryReplayCache(clock=ob_clock, quota_per_owner=2))
    request = ob_directory.registration_request
    for _ in range(2):
        response = post(app, request(ob_software, aud=ISSUER), ob_software)
        assert response.status_code == 201, response.get_json()
    over = post(app, request(ob_software, aud=ISSUER), ob_software)
    assert over.status_code == 429
    assert over.get_json() == {
        "error": "too_many_requests",
        "error_description": "This software has sent too many registration requests; retry later.",
    }
    assert over.headers["Cache-Control"] == "no-store"
    # until the first request's jti expires: its exp (300 s ahead) plus the clock skew (30 s)
    assert 330 <= int(over.headers["Retry-After"]) <= 332
    assert len(store) == 2
    # another software is not held back by it
    other = post(app, request(ob_ec_software, aud=ISSUER), ob_ec_software)
    assert other.status_code == 201, other.get_json()


def test_a_full_replay_cache_is_503_not_a_replay(make_bank, ob_clock, ob_directory, ob_software):
    cache = MemoryReplayCache(clock=ob_clock, max_entries=1)
    app, store = make_bank(cache)
    assert cache.remember("someone-else:jti", ob_clock() + 600)
    response = post(app, ob_directory.registration_request(ob_software, aud=ISSUER), ob_software)
    assert response.status_code == 503
    assert response.get_json() == {
        "error": "temporarily_unavailable",
        "error_description": "The replay check cannot be made right now; retry later.",
    }
    assert response.headers["Retry-After"] == "601"
    assert len(store) == 0


def test_a_replay_is_still_a_replay_over_quota(make_bank, ob_clock, ob_directory, ob_software):
    app, store = make_bank(MemoryReplayCache(clock=ob_clock, quota_per_owner=1))
    body = ob_directory.registration_request(ob_software, aud=ISSUER)
    assert post(app, body, ob_software).status_code == 201
    replay = post(app, body, ob_software)
    assert (replay.status_code, replay.get_json()["error"]) == (400, "invalid_client_metadata")
    assert len(store) == 1


class _OldStyleCache:
    """A replay cache written to 0.2's protocol: remember(key, expires_at), no owner."""

    def __init__(self) -> None:
        self.keys: dict[str, float] = {}

    def seen(self, key: str) -> bool:
        return key in self.keys

    def remember(self, key: str, expires_at: float) -> bool:
        if key in self.keys:
            return False
        self.keys[key] = expires_at
        return True


def test_a_cache_of_the_old_protocol_still_works(make_bank, ob_directory, ob_software):
    cache = _OldStyleCache()
    app, store = make_bank(cache)
    body = ob_directory.registration_request(ob_software, aud=ISSUER)
    assert post(app, body, ob_software).status_code == 201
    assert len(cache.keys) == 1 and len(store) == 1
    assert post(app, body, ob_software).status_code == 400
