"""The RevocationCache contract, run against every backend, and the verdict it stores.

``RevocationCacheContract`` is the one contract test class, shaped like ``JWKSCacheContract``:
a backend's test class subclasses it and overrides ``cache_factory`` (keyword argument:
``clock``, the checker's clock) and, where the backend has them, ``peer_caches`` (instances
sharing state, as processes would), ``plant`` (write raw bytes where a record is kept) and
``broken_cache_factory`` (the backend unreachable). Memory runs here, Redis in test_redis.py.
What the checker does with its cache (warm checks, refresh, a cache that raises) is in
test_revocation.py.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from test_storage import run_threads

from flask_obdcr.errors import InvalidClient
from flask_obdcr.fetch import BoundedFetch
from flask_obdcr.revocation import RevocationChecker
from flask_obdcr.storage import MemoryRevocationCache, RevocationCache, StatusRecord, status_key
from flask_obdcr.testing.clock import FrozenClock
from flask_obdcr.testing.pki import CertificateAuthority, generate_key, ob_subject
from flask_obdcr.testing.revocation import RevocationServer

CACHE_SECONDS = 300
KEY = "9f" * 32 + ":1a2b3c"  # as status_key makes them


def record(base: float = 1000.0, **changes: Any) -> StatusRecord:
    """A good OCSP verdict fetched at ``base``: refreshed after 300 s, kept for an hour."""
    values: dict[str, Any] = {
        "status": "good",
        "source": "ocsp",
        "url": "http://ocsp.example/",
        "fetched_at": base,
        "this_update": base - 10,
        "next_update": base + 3600,
        "refresh_at": base + CACHE_SECONDS,
        "keep_until": base + 3600,
    }
    values.update(changes)
    return StatusRecord(**values)


#: (id, what a shared backend may hold instead of a record), each refused by StatusRecord
CORRUPT: list[tuple[str, bytes]] = [
    ("not-json", b"{not json"),
    ("not-an-object", b"[1, 2]"),
    ("status", json.dumps({**record().to_dict(), "status": "unknown"}).encode()),
    ("timestamp", json.dumps({**record().to_dict(), "fetched_at": "soon"}).encode()),
    ("boolean", json.dumps({**record().to_dict(), "this_update": True}).encode()),
    ("missing", json.dumps({**record().to_dict(), "refresh_at": None}).encode()),
    ("no-keep-until", json.dumps({**record().to_dict(), "keep_until": None}).encode()),
    (
        "no-status",
        json.dumps({k: v for k, v in record().to_dict().items() if k != "status"}).encode(),
    ),
    ("reason", json.dumps({**record().to_dict(), "reason": 3}).encode()),
]


# -- the verdict and its key ---------------------------------------------------------------


@pytest.mark.parametrize(
    "verdict",
    [
        pytest.param(record(), id="good"),
        pytest.param(record(next_update=None), id="no-next-update"),
        pytest.param(
            record(status="revoked", revoked_at=900.0, reason="key_compromise"), id="revoked"
        ),
        pytest.param(record(status="revoked", reason="certificate_hold"), id="on-hold"),
    ],
)
def test_status_record_round_trips_through_json(verdict):
    assert StatusRecord.from_dict(json.loads(json.dumps(verdict.to_dict()))) == verdict


def test_status_record_final_and_usable_until():
    assert record(status="revoked", revoked_at=900.0, reason="key_compromise").final
    assert record(status="revoked").final  # no reason given: permanent too
    assert not record(status="revoked", reason="certificate_hold").final
    assert not record().final
    assert record().usable_until == 1000.0 + 3600  # the nextUpdate
    assert record(next_update=None).usable_until == 1000.0 + CACHE_SECONDS  # refresh_at


@pytest.mark.parametrize(
    "value", [value for _, value in CORRUPT[2:]], ids=[i for i, _ in CORRUPT[2:]]
)
def test_status_record_refuses_bad_data(value):
    with pytest.raises((ValueError, KeyError)):
        StatusRecord.from_dict(json.loads(value))


def test_status_key_is_issuer_key_and_serial():
    ca = CertificateAuthority.root("Revocation Cache Test CA")
    leaf = ca.issue(ob_subject("software-1", "org-1"), generate_key("EC").public_key())
    key = status_key(leaf, ca.certificate)
    digest, serial = key.split(":")
    assert len(digest) == 64 and int(serial, 16) == leaf.serial_number
    # the issuer's key, not its name: another CA of the same name is another key
    twin = CertificateAuthority.root("Revocation Cache Test CA")
    assert status_key(leaf, twin.certificate) != key
    assert status_key(leaf, ca.certificate) == key


# -- the contract --------------------------------------------------------------------------


class RevocationCacheContract:
    """Every RevocationCache backend behaves like this. Subclasses override the factory."""

    #: a backend that drops a record by itself once its keep_until has passed (Redis); the
    #: others keep it until their bound pushes it out
    expires_by_itself = False

    @pytest.fixture
    def cache_factory(self) -> Callable[..., RevocationCache]:
        raise NotImplementedError("a backend's test class overrides `cache_factory`")

    @pytest.fixture
    def clock(self) -> FrozenClock:
        # the real time (frozen): the test responder signs on it and certificates are valid
        return FrozenClock(float(int(time.time())))

    @pytest.fixture
    def cache(self, cache_factory, clock) -> RevocationCache:
        return cache_factory(clock=clock)

    @pytest.fixture
    def peer_caches(self, cache) -> list[RevocationCache]:
        """Two handles on one cache, as two processes would hold them. A backend whose
        instances share state overrides this with two instances."""
        return [cache, cache]

    # -- a checker against a test responder, for the tests that go through one ---------------

    @pytest.fixture(scope="class")
    @classmethod
    def root(cls) -> CertificateAuthority:
        return CertificateAuthority.root("Revocation Cache Test Root")

    @pytest.fixture
    def ca(self, root) -> CertificateAuthority:
        return root.intermediate("Revocation Cache Test Issuing CA")

    @pytest.fixture
    def server(self, ca, root, clock) -> Iterator[RevocationServer]:
        with RevocationServer(ca, root, clock=clock) as running:
            yield running

    @pytest.fixture
    def checker_factory(self, clock) -> Iterator[Callable[..., RevocationChecker]]:
        fetch = BoundedFetch(timeout=2.0)

        def make(cache: RevocationCache) -> RevocationChecker:
            return RevocationChecker(
                mode="require", cache_seconds=CACHE_SECONDS, fetch=fetch, cache=cache, clock=clock
            )

        yield make
        fetch.close()

    @pytest.fixture
    def chain(self, ca, root, server):
        leaf = ca.issue(
            ob_subject("software-1", "org-1"),
            generate_key("EC").public_key(),
            ocsp_url=server.ocsp_url(ca),
        )
        return (leaf, ca.certificate, root.certificate)

    # -- get and set -----------------------------------------------------------------------

    def test_unknown_key_is_none(self, cache):
        assert cache.get(KEY) is None

    @pytest.mark.parametrize(
        "changes",
        [
            pytest.param({}, id="good"),
            pytest.param({"next_update": None}, id="no-next-update"),
            pytest.param(
                {"status": "revoked", "revoked_at": 1.5, "reason": "key_compromise"},
                id="revoked",
            ),
            pytest.param({"status": "revoked", "reason": "certificate_hold"}, id="on-hold"),
            pytest.param({"url": "https://ocsp.example/a?b=c", "source": "crl"}, id="crl"),
        ],
    )
    def test_set_then_get_round_trips(self, peer_caches, clock, changes):
        verdict = record(clock(), **changes)
        writer, reader = peer_caches
        writer.set(KEY, verdict)
        assert writer.get(KEY) == verdict
        assert reader.get(KEY) == verdict  # another process reads what this one wrote
        assert reader.get(KEY + "0") is None

    def test_set_again_replaces(self, peer_caches, clock):
        writer, reader = peer_caches
        writer.set(KEY, record(clock()))
        revoked = record(clock(), status="revoked", revoked_at=clock() - 1, reason="superseded")
        writer.set(KEY, revoked)
        assert writer.get(KEY) == revoked
        assert reader.get(KEY) == revoked

    def test_keys_are_taken_as_they_are(self, cache, clock):
        keys = [KEY, KEY.upper(), KEY + "0", KEY.replace(":", ":0"), "9f" * 32 + ":1A2B3C"]
        verdicts = {
            key: record(clock(), url=f"http://ocsp.example/{n}") for n, key in enumerate(keys)
        }
        for key, verdict in verdicts.items():
            cache.set(key, verdict)
        assert {key: cache.get(key) for key in keys} == verdicts

    def test_concurrent_use(self, cache, clock):
        verdict = record(clock())

        def worker(n: int) -> None:
            for i in range(20):
                cache.set(f"{KEY}{n:x}{i:02x}", verdict)
                assert cache.get(f"{KEY}{n:x}{i:02x}") == verdict

        assert run_threads(worker, [(n,) for n in range(8)]) == []

    # -- expiry ----------------------------------------------------------------------------

    def test_the_cache_does_not_judge_freshness(self, peer_caches, clock):
        """Past its refresh_at and nextUpdate a record is still returned while it is kept:
        whether it may stand is the checker's decision."""
        writer, reader = peer_caches
        kept = record(
            clock(), status="revoked", reason="key_compromise", keep_until=clock() + 86400
        )
        writer.set(KEY, kept)
        clock.advance(2 * 3600)  # past refresh_at and next_update, not keep_until
        assert writer.get(KEY) == kept
        assert reader.get(KEY) == kept

    def test_a_record_may_go_once_its_keep_until_has_passed(self, cache_factory):
        # on the real clock: a backend may expire its records by itself (Redis's TTLs)
        cache = cache_factory(clock=time.time)
        now = time.time()
        short = record(now, next_update=None, refresh_at=now, keep_until=now + 0.2)
        cache.set(KEY, short)
        assert cache.get(KEY) == short  # kept until keep_until
        time.sleep(0.35)
        assert (cache.get(KEY) is None) is self.expires_by_itself

    # -- shared by the checkers of several processes ----------------------------------------

    def test_two_checkers_on_one_cache_fetch_once(
        self, peer_caches, clock, checker_factory, server, ca, chain
    ):
        one, other = (checker_factory(peer) for peer in peer_caches)
        assert one.check(chain).certificates[0].cached is False
        status = other.check(chain)  # another process: its own memory, the same cache
        assert (status.status, status.certificates[0].cached) == ("good", True)
        assert server.count(ca, "ocsp") == 1
        # the verdict is due: whichever checker comes first fetches, the other uses its answer
        ca.revoke(chain[0])
        clock.advance(CACHE_SECONDS + 1)
        with pytest.raises(InvalidClient):
            other.check(chain)
        assert server.count(ca, "ocsp") == 2
        with pytest.raises(InvalidClient):
            one.check(chain)
        assert server.count(ca, "ocsp") == 2


class SharedRevocationCacheContract(RevocationCacheContract):
    """What a cache kept outside the process (serialised records, a service that can be
    down) promises on top: corrupt entries and an unreachable backend never fail a check."""

    @pytest.fixture
    def plant(self) -> Callable[[RevocationCache, str, bytes], None]:
        """Put raw bytes where ``cache`` keeps the record of a key (each backend says how)."""
        raise NotImplementedError

    @pytest.fixture
    def broken_cache_factory(self) -> Callable[..., RevocationCache]:
        """A cache whose backend is unreachable (each backend says how)."""
        raise NotImplementedError

    # -- what is not a record --------------------------------------------------------------

    def test_a_corrupt_entry_is_ignored(self, cache_factory, clock, plant, caplog):
        for name, value in CORRUPT:
            cache = cache_factory(clock=clock)  # nothing of its own in this process yet
            plant(cache, KEY, value)
            assert cache.get(KEY) is None, name
            verdict = record(clock(), url=f"http://ocsp.example/{name}")
            cache.set(KEY, verdict)  # the checker fetches again and replaces it
            assert cache_factory(clock=clock).get(KEY) == verdict, name
        assert "corrupt" in caplog.text

    # -- failure ---------------------------------------------------------------------------

    def test_a_failing_backend_never_raises(self, broken_cache_factory, clock):
        cache = broken_cache_factory(clock=clock)
        assert cache.get(KEY) is None  # nothing here: the checker fetches
        verdict = record(clock())
        cache.set(KEY, verdict)  # kept in this process
        assert cache.get(KEY) == verdict

    def test_a_failing_backend_never_fails_a_check(
        self, broken_cache_factory, clock, checker_factory, server, ca, chain
    ):
        checker = checker_factory(broken_cache_factory(clock=clock))
        assert checker.check(chain).status == "good"  # fetched, kept in this process
        assert checker.check(chain).certificates[0].cached is True
        assert server.count(ca, "ocsp") == 1


# -- the backends ----------------------------------------------------------------------------


class TestMemoryRevocationCache(RevocationCacheContract):
    @pytest.fixture
    def cache_factory(self):
        return lambda clock: MemoryRevocationCache()

    def test_maxsize_is_checked(self):
        with pytest.raises(ValueError, match="maxsize"):
            MemoryRevocationCache(maxsize=0)

    def test_a_bounded_lru(self):
        cache = MemoryRevocationCache(maxsize=2)
        cache.set("a", record())
        cache.set("b", record())
        assert cache.get("a") is not None  # now the most recently used
        cache.set("c", record())
        assert (cache.get("a"), cache.get("b"), len(cache)) == (record(), None, 2)

    def test_delete_and_clear(self):
        cache = MemoryRevocationCache()
        cache.set("a", record())
        cache.set("b", record())
        cache.delete("a")
        cache.delete("never-there")
        assert (cache.get("a"), cache.get("b"), len(cache)) == (None, record(), 1)
        cache.clear()
        assert len(cache) == 0
