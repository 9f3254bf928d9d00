"""The TokenStore contract, run against every backend, and ``flask obdcr purge``.

``TokenStoreContract`` is the one contract test class, shaped like ``ClientStoreContract``: a
backend's test class subclasses it and overrides ``token_store_factory`` with a factory of
empty stores of that backend (keyword arguments: ``clock``, ``purge_every``, ``purge_batch``).
Memory and SQLite run here; PostgreSQL (and SQLAlchemy over SQLite) in test_storage_sql.py;
Redis in test_redis.py.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable

import pytest
from test_storage import run_threads

from flask_obdcr.storage import (
    AccessToken,
    MemoryStore,
    MemoryTokenStore,
    SQLiteStore,
    SQLiteTokenStore,
    TokenStore,
    hash_secret,
)
from flask_obdcr.testing.clock import FrozenClock

T0 = 1_000_000


def fields(client_id: str = "c1", *, expires_at: int = T0 + 300, **changes):
    return {
        "client_id": client_id,
        "scope": "accounts",
        "issued_at": T0,
        "expires_at": expires_at,
        **changes,
    }


class TokenStoreContract:
    """Every TokenStore backend behaves like this. Subclasses override the factory."""

    #: a backend whose tokens expire by themselves (Redis): purge_expired has nothing to do
    expires_by_itself = False
    #: a backend whose tokens live in one process (memory): no other process shares them
    process_local = False

    @pytest.fixture
    def token_store_factory(self) -> Callable[..., TokenStore]:
        raise NotImplementedError("a backend's test class overrides `token_store_factory`")

    @pytest.fixture
    def clock(self) -> FrozenClock:
        return FrozenClock(T0)

    @pytest.fixture
    def token_store(self, token_store_factory, clock) -> TokenStore:
        return token_store_factory(clock=clock)

    # -- save / find -----------------------------------------------------------------------

    def test_save_then_find_round_trips(self, token_store):
        saved = token_store.save("tok-a", **fields(x5t_s256="thumb"))
        assert saved == AccessToken(
            token_hash=hash_secret("tok-a"),
            client_id="c1",
            scope="accounts",
            issued_at=T0,
            expires_at=T0 + 300,
            x5t_s256="thumb",
        )
        found = token_store.find("tok-a")
        assert found == saved
        assert found.cnf == {"x5t#S256": "thumb"}
        assert "tok-a" not in repr(found)  # only the hash is kept

    def test_unbound_token_has_no_cnf(self, token_store):
        token_store.save("tok-a", **fields())
        found = token_store.find("tok-a")
        assert found is not None and found.x5t_s256 is None and found.cnf is None

    @pytest.mark.parametrize(
        "presented",
        [
            pytest.param("tok-ax", id="unknown"),
            pytest.param("TOK-A", id="case"),
            pytest.param("", id="empty"),
            pytest.param(None, id="none"),
            pytest.param("x" * 4097, id="too-long"),
            pytest.param(hash_secret("tok-a"), id="the-hash-itself"),
        ],
    )
    def test_find_of_anything_else_is_none(self, token_store, presented):
        token_store.save("tok-a", **fields())
        assert token_store.find(presented) is None

    def test_saving_a_token_again_overwrites_it(self, token_store):
        token_store.save("tok-a", **fields())
        token_store.save("tok-a", **fields(expires_at=T0 + 400, scope="payments"))
        found = token_store.find("tok-a")
        assert (found.scope, found.expires_at) == ("payments", T0 + 400)

    def test_a_token_is_active_until_its_expiry(self, token_store, clock):
        token_store.save("tok-a", **fields(expires_at=T0 + 100))
        clock.set(T0 + 99.999)
        assert token_store.find("tok-a") is not None
        clock.set(T0 + 100)
        assert token_store.find("tok-a") is None

    # -- revocation ------------------------------------------------------------------------

    def test_revoke_forgets_one_token(self, token_store):
        token_store.save("tok-a", **fields())
        token_store.save("tok-b", **fields())
        token_store.revoke("tok-a")
        assert token_store.find("tok-a") is None
        assert token_store.find("tok-b") is not None
        token_store.revoke("tok-a")  # unknown now: nothing happens
        token_store.revoke("never-issued")

    def test_revoke_client_revokes_its_tokens_and_no_others(self, token_store):
        for n in range(3):
            token_store.save(f"c1-{n}", **fields("c1"))
        token_store.save("c2-0", **fields("c2"))
        token_store.save("c1-9", **fields("c1"))
        token_store.revoke("c1-9")  # revoked already: not counted
        assert token_store.revoke_client("c1") == 3
        assert [token_store.find(f"c1-{n}") for n in range(3)] == [None] * 3
        assert token_store.find("c2-0") is not None
        assert token_store.revoke_client("c1") == 0
        assert token_store.revoke_client("nobody") == 0
        token_store.save("c1-new", **fields("c1"))  # a client may get tokens again
        assert token_store.find("c1-new") is not None

    def test_a_token_saved_again_for_another_client_moves_with_it(self, token_store):
        token_store.save("tok-a", **fields("c1"))
        token_store.save("tok-a", **fields("c2"))
        assert token_store.revoke_client("c1") == 0
        assert token_store.find("tok-a").client_id == "c2"
        assert token_store.revoke_client("c2") == 1

    # -- purging ---------------------------------------------------------------------------

    def test_purge_expired_deletes_expired_tokens_only(self, token_store_factory, clock):
        tokens = token_store_factory(clock=clock, purge_every=0)  # no purging on save
        for n in range(3):
            tokens.save(f"old-{n}", **fields(f"c{n}", expires_at=T0 + 10))
        tokens.save("live", **fields(expires_at=T0 + 300))
        clock.advance(10)  # the old ones expire now: not now < expires_at
        assert tokens.purge_expired() == (0 if self.expires_by_itself else 3)
        assert tokens.purge_expired() == 0
        assert tokens.find("live") is not None
        assert [tokens.find(f"old-{n}") for n in range(3)] == [None] * 3
        assert tokens.revoke_client("c0") == (1 if self.expires_by_itself else 0)

    def test_purge_expired_goes_through_batch_after_batch(self, token_store_factory, clock):
        tokens = token_store_factory(clock=clock, purge_every=0, purge_batch=2)
        for n in range(5):
            tokens.save(f"old-{n}", **fields(expires_at=T0 + 10))
        clock.advance(20)
        assert tokens.purge_expired() == (0 if self.expires_by_itself else 5)

    def test_saves_purge_a_bounded_batch_every_so_often(self, token_store_factory, clock):
        tokens = token_store_factory(clock=clock, purge_every=3, purge_batch=2)
        for n in range(5):  # saves 1 to 5: the purge at the 3rd finds nothing expired yet
            tokens.save(f"old-{n}", **fields(expires_at=T0 + 10))
        clock.advance(20)
        tokens.save("new-5", **fields(expires_at=T0 + 300))  # the 6th save: purges two
        tokens.save("new-6", **fields(expires_at=T0 + 300))
        # what the save's bounded batch left; a backend that expires tokens itself keeps none
        assert tokens.purge_expired() == (0 if self.expires_by_itself else 3)
        assert [tokens.find(f"old-{n}") for n in range(5)] == [None] * 5
        assert tokens.find("new-5") is not None and tokens.find("new-6") is not None

    def test_a_failing_purge_does_not_fail_the_save(
        self, token_store_factory, clock, monkeypatch, caplog
    ):
        tokens = token_store_factory(clock=clock, purge_every=1)

        def broken(now, limit):
            raise OSError("disk full")

        monkeypatch.setattr(tokens, "_purge", broken)
        with caplog.at_level(logging.WARNING, logger="flask_obdcr"):
            tokens.save("tok-a", **fields())
        assert tokens.find("tok-a") is not None
        assert [r.getMessage() for r in caplog.records] == [
            "purging expired access tokens failed: OSError: disk full"
        ]

    @pytest.mark.parametrize(
        "options", [{"purge_every": -1}, {"purge_batch": 0}], ids=["purge_every", "purge_batch"]
    )
    def test_purge_options_are_checked(self, token_store_factory, clock, options):
        with pytest.raises(ValueError, match="purge_every must be >= 0 and purge_batch >= 1"):
            token_store_factory(clock=clock, **options)

    # -- concurrency -----------------------------------------------------------------------

    def test_concurrent_saves_lose_nothing(self, token_store):
        def writer(n: int) -> None:
            for i in range(25):
                token_store.save(f"t{n}-{i}", **fields(f"c{n % 2}"))

        assert run_threads(writer, [(n,) for n in range(8)]) == []
        assert all(token_store.find(f"t{n}-{i}") for n in range(8) for i in range(25))
        assert token_store.revoke_client("c0") == 100
        assert token_store.revoke_client("c1") == 100

    # -- the backends ----------------------------------------------------------------------------

    # -- the lookup cache (TokenStore, "The lookup cache") -----------------------------------

    @pytest.fixture
    def monotonic(self) -> FrozenClock:
        return FrozenClock(500.0)

    @pytest.fixture
    def cached(self, token_store_factory, clock, monotonic) -> Callable[..., TokenStore]:
        """Stores of this backend with a one-second lookup cache on a clock of the test's."""
        return lambda: token_store_factory(clock=clock, cache_seconds=1.0, cache_clock=monotonic)

    @pytest.fixture
    def processes(self, cached) -> tuple[TokenStore, TokenStore]:
        """(here, elsewhere): two processes sharing the backend; for a backend of one process
        (memory) both are the same store."""
        here = cached()
        return (here, here) if self.process_local else (here, cached())

    def test_a_revocation_elsewhere_is_seen_within_the_cache_bound(self, processes, monotonic):
        here, elsewhere = processes
        elsewhere.save("tok-a", **fields())
        elsewhere.save("tok-b", **fields("c2"))
        assert here.find("tok-a") is not None and here.find("tok-b") is not None
        assert elsewhere.revoke_client("c1") == 1
        elsewhere.revoke("tok-b")
        if not self.process_local:
            monotonic.advance(0.9)
            assert here.find("tok-a") is not None  # still inside the bound
            assert here.find("tok-b") is not None
            monotonic.advance(0.1)
        assert here.find("tok-a") is None
        assert here.find("tok-b") is None

    def test_a_revocation_here_is_seen_here_at_once(self, cached):
        tokens = cached()
        tokens.save("tok-a", **fields())
        tokens.save("tok-b", **fields("c2"))
        assert tokens.find("tok-a") is not None and tokens.find("tok-b") is not None
        tokens.revoke("tok-a")
        assert tokens.find("tok-a") is None
        assert tokens.revoke_client("c2") == 1
        assert tokens.find("tok-b") is None

    def test_the_cache_keeps_no_unknown_token_and_checks_expiry(self, processes, clock):
        here, elsewhere = processes
        assert here.find("tok-a") is None
        elsewhere.save("tok-a", **fields(expires_at=T0 + 10))
        assert here.find("tok-a") is not None  # issued elsewhere: found at once
        clock.advance(10)
        assert here.find("tok-a") is None  # expired, cached or not

    def test_a_read_overtaken_by_a_revocation_is_not_cached(self, cached):
        tokens = cached()
        tokens.save("tok-a", **fields())
        read = tokens._get

        def read_then_revoked(token_hash):  # the revocation lands while the read is under way
            record = read(token_hash)
            tokens.revoke_client("c1")
            return record

        tokens._get = read_then_revoked  # type: ignore[method-assign]
        assert tokens.find("tok-a") is not None  # the read began before the revocation
        tokens._get = read  # type: ignore[method-assign]
        assert tokens.find("tok-a") is None  # and was not kept after it

    def test_revoke_client_tells_its_listeners_even_when_the_backend_fails(self, cached):
        tokens = cached()
        told: list[str] = []
        tokens.client_revoked.append(told.append)
        tokens.save("tok-a", **fields())
        assert tokens.revoke_client("c1") == 1
        assert told == ["c1"]

        def down(client_id):
            raise ConnectionError("backend down")

        tokens._revoke_client = down  # type: ignore[method-assign]
        with pytest.raises(ConnectionError):
            tokens.revoke_client("c2")
        assert told == ["c1", "c2"]

    def test_a_zero_second_cache_reads_the_backend_every_time(self, token_store_factory, clock):
        here = token_store_factory(clock=clock, cache_seconds=0)
        elsewhere = here if self.process_local else token_store_factory(clock=clock)
        elsewhere.save("tok-a", **fields())
        assert here.find("tok-a") is not None
        elsewhere.revoke("tok-a")
        assert here.find("tok-a") is None


class _NoScans(dict):
    """A dict that refuses to be walked: the token index must never scan every token."""

    def _refuse(self, *args, **kwargs):
        raise AssertionError("scanned every token")

    __iter__ = keys = values = items = _refuse  # type: ignore[assignment]


class TestMemoryTokenStore(TokenStoreContract):
    @pytest.fixture
    def token_store_factory(self):
        return MemoryTokenStore

    process_local = True

    def test_no_operation_scans_every_token(self, clock):
        tokens = MemoryTokenStore(clock=clock)
        tokens._tokens = _NoScans()
        for n in range(50):
            tokens.save(f"t{n}", **fields(f"c{n % 5}", expires_at=T0 + 10 + n))
        clock.advance(30)
        tokens.save("fresh", **fields("c9"))  # purges the expired ones, from the heap
        assert len(tokens) == 30  # t0 to t20 expired: gone
        assert tokens.find("t49") is not None
        tokens.revoke("t49")
        assert tokens.revoke_client("c1") == 6
        assert tokens.purge_expired() == 0
        clock.advance(1000)
        assert tokens.purge_expired() == 23

    def test_memory_follows_the_live_tokens(self, clock):
        tokens = MemoryTokenStore(clock=clock)
        for n in range(1000):
            clock.advance(1)
            tokens.save(f"t{n}", **fields(f"c{n}", expires_at=int(clock()) + 10))
        assert len(tokens) <= 11
        assert len(tokens._by_client) <= 11
        assert len(tokens._expiry) <= 11 + 1


class TestSQLiteTokenStore(TokenStoreContract):
    @pytest.fixture
    def path(self, tmp_path):
        return tmp_path / "obdcr.db"

    @pytest.fixture
    def token_store_factory(self, path):
        made: list[SQLiteTokenStore] = []

        def make(**kw) -> SQLiteTokenStore:
            made.append(SQLiteTokenStore(path, **kw))
            return made[-1]

        yield make
        for store in made:
            store.close()

    def test_expired_rows_leave_the_file(self, token_store_factory, clock, path):
        tokens = token_store_factory(clock=clock, purge_every=0)
        for n in range(4):
            tokens.save(f"old-{n}", **fields(expires_at=T0 + 10))
        tokens.save("live", **fields())
        clock.advance(10)
        assert tokens.purge_expired() == 4
        conn = sqlite3.connect(path)
        try:
            assert conn.execute("SELECT count(*) FROM access_tokens").fetchone() == (1,)
            plan = conn.execute(
                "EXPLAIN QUERY PLAN SELECT rowid FROM access_tokens WHERE expires_at <= 5"
            ).fetchall()
            assert "access_tokens_expiry" in repr(plan)  # by the index, not a table scan
        finally:
            conn.close()

    def test_processes_share_the_tokens(self, token_store_factory, clock):
        one, two = token_store_factory(clock=clock), token_store_factory(clock=clock)
        one.save("tok-a", **fields())
        assert two.find("tok-a") == one.find("tok-a")
        assert two.revoke_client("c1") == 1
        assert two.find("tok-a") is None
        # the other process answers from its lookup cache for at most its cache_seconds
        one.cache_seconds = 0
        assert one.find("tok-a") is None


# -- the client store's own token store ------------------------------------------------------


def test_memory_store_keeps_no_tokens():
    assert MemoryStore().token_store() is None
    assert MemoryStore.process_local is True


def test_sqlite_store_keeps_tokens_in_its_file(tmp_path, ob_clock):
    store = SQLiteStore(tmp_path / "obdcr.db", busy_timeout=5)
    tokens = store.token_store(clock=ob_clock)
    assert isinstance(tokens, SQLiteTokenStore)
    assert (tokens.path, tokens.busy_timeout, tokens.clock) == (store.path, 5, ob_clock)
    assert SQLiteStore.process_local is False


# -- flask obdcr purge ------------------------------------------------------------------------


@pytest.fixture
def sqlite_app(ob_app_factory, tmp_path):
    return ob_app_factory(store=SQLiteStore(tmp_path / "instance" / "obdcr.db"))


def test_purge_deletes_expired_tokens_and_replay_entries(sqlite_app, ob_clock):
    state = sqlite_app.extensions["obdcr"]
    assert isinstance(state.tokens, SQLiteTokenStore)
    now = int(ob_clock())
    for n in range(3):
        state.tokens.save(f"old-{n}", client_id="c1", scope="a", issued_at=now, expires_at=now + 5)
    state.tokens.save("live", client_id="c1", scope="a", issued_at=now, expires_at=now + 600)
    for n in range(2):
        assert state.replay_cache.remember(f"sw:jti-{n}", now + 5)
    assert state.replay_cache.remember("sw:live", now + 600)
    ob_clock.advance(10)
    result = sqlite_app.test_cli_runner().invoke(args=["obdcr", "purge"])
    assert result.exit_code == 0, result.output
    assert result.output == "purged 3 expired access token(s) and 2 expired replay entry(ies)\n"
    assert state.tokens.find("live") is not None
    assert state.replay_cache.seen("sw:live")
    again = sqlite_app.test_cli_runner().invoke(args=["obdcr", "purge"])
    assert again.output == "purged 0 expired access token(s) and 0 expired replay entry(ies)\n"


def test_purge_reports_a_store_that_fails(sqlite_app, monkeypatch):
    state = sqlite_app.extensions["obdcr"]

    def broken():
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(state.tokens, "purge_expired", broken)
    result = sqlite_app.test_cli_runner().invoke(args=["obdcr", "purge"])
    assert result.exit_code == 1
    assert result.output == "Error: purge failed: OperationalError('database is locked')\n"
