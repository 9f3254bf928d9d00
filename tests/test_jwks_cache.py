"""The JWKSCache contract, run against every backend.

``JWKSCacheContract`` is the one contract test class, shaped like ``ClientStoreContract``: a
backend's test class subclasses it and overrides ``cache_factory`` (keyword argument:
``clock``, the JWKS client's clock). Memory runs here, Redis in test_redis.py. The LRU bound of
the memory cache is tested in test_jwks.py with the client.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from test_storage import run_threads

from flask_obdcr.jwks import JWKSClient, StaticFetcher
from flask_obdcr.storage import CacheEntry, JWKSCache, MemoryJWKSCache
from flask_obdcr.testing.clock import FrozenClock

URL = "https://keystore.sandbox-directory.test/org/software.jwks"


class JWKSCacheContract:
    """Every JWKSCache backend behaves like this. Subclasses override the factory."""

    @pytest.fixture
    def cache_factory(self) -> Callable[..., JWKSCache]:
        raise NotImplementedError("a backend's test class overrides `cache_factory`")

    @pytest.fixture
    def clock(self, ob_clock) -> FrozenClock:
        return ob_clock

    @pytest.fixture
    def cache(self, cache_factory, clock) -> JWKSCache:
        return cache_factory(clock=clock)

    @pytest.fixture
    def peer_caches(self, cache) -> list[JWKSCache]:
        """Two handles on one cache, as two processes would hold them. A backend whose
        instances share state overrides this with two instances."""
        return [cache, cache]

    @pytest.fixture
    def entry(self, ob_software, clock) -> CacheEntry:
        now = clock()
        return CacheEntry(
            raw=json.dumps(ob_software.jwks()),
            fetched_at=now,
            fresh_until=now + 300,
            stale_until=now + 3900,
        )

    def test_unknown_url_is_none(self, cache):
        assert cache.get(URL) is None

    def test_set_then_get_round_trips(self, cache, entry, ob_software):
        cache.set(URL, entry)
        got = cache.get(URL)
        assert got == entry
        assert [key["kid"] for key in got.parsed().document["keys"]] == [
            key["kid"] for key in ob_software.jwks()["keys"]
        ]
        assert cache.get(URL + "?other") is None

    def test_set_again_replaces(self, cache, entry):
        cache.set(URL, entry)
        newer = CacheEntry(
            entry.raw, entry.fetched_at + 10, entry.fresh_until + 10, entry.stale_until + 10
        )
        cache.set(URL, newer)
        assert cache.get(URL) == newer

    def test_urls_are_taken_as_they_are(self, cache, entry):
        cache.set(URL, entry)
        for other in (URL.upper(), URL + "/", URL + "#x", URL.replace("https", "http")):
            assert cache.get(other) is None

    def test_a_warm_entry_is_not_parsed_again(self, cache, entry, monkeypatch):
        cache.set(URL, entry)
        first = cache.get(URL)
        first.parsed()
        monkeypatch.setattr(CacheEntry, "parser", None)  # parsing now fails loudly
        again = cache.get(URL)
        assert again.parsed() is first.parsed()

    def test_concurrent_use(self, cache, entry):
        def worker(n: int) -> None:
            for i in range(20):
                cache.set(f"{URL}?{n}-{i}", entry)
                assert cache.get(f"{URL}?{n}-{i}") == entry

        assert run_threads(worker, [(n,) for n in range(8)]) == []

    def test_two_clients_on_one_cache_fetch_once(
        self, peer_caches, clock, ob_directory, ob_software
    ):
        """Two JWKS clients (two server processes, with a shared cache) fetch a set once."""
        fetchers = [StaticFetcher(ob_directory.documents()) for _ in range(2)]
        clients = [
            JWKSClient(fetcher, cache=peer, clock=clock)
            for fetcher, peer in zip(fetchers, peer_caches, strict=True)
        ]
        url, kid = ob_software.jwks_url, ob_software.jwks()["keys"][0]["kid"]
        alg = ob_software.signing_alg
        assert clients[0].find_key(url, kid=kid, alg=alg)["kid"] == kid
        assert clients[1].find_key(url, kid=kid, alg=alg)["kid"] == kid
        assert (fetchers[0].calls, fetchers[1].calls) == ([url], [])
        # once the entry is no longer fresh, the next lookup fetches again (whichever client)
        clock.advance(301)
        clients[1].key_set(url)
        assert fetchers[1].calls == [url]
        clients[0].key_set(url)
        assert fetchers[0].calls == [url]

    def test_a_corrupt_entry_is_fetched_again(self, cache, clock, ob_directory, ob_software):
        now = clock()
        url = ob_software.jwks_url
        cache.set(
            url,
            CacheEntry(raw="nope", fetched_at=now, fresh_until=now + 300, stale_until=now + 900),
        )
        fetcher = StaticFetcher(ob_directory.documents())
        client = JWKSClient(fetcher, cache=cache, clock=clock)
        kid = ob_software.jwks()["keys"][0]["kid"]
        assert client.find_key(url, kid=kid, alg=ob_software.signing_alg)["kid"] == kid
        assert fetcher.calls == [url]
        assert json.loads(cache.get(url).raw)["keys"][0]["kid"] == kid  # replaced


class TestMemoryJWKSCache(JWKSCacheContract):
    @pytest.fixture
    def cache_factory(self):
        return lambda clock: MemoryJWKSCache()

    def test_maxsize_is_checked(self):
        with pytest.raises(ValueError, match="maxsize"):
            MemoryJWKSCache(maxsize=0)

    def test_clear(self, cache, entry):
        cache.set(URL, entry)
        cache.clear()
        assert cache.get(URL) is None and len(cache) == 0
