"""SQLAlchemyStore (and SQLAlchemyTokenStore) against PostgreSQL and SQLite URLs.

PostgreSQL is the server at ``OBDCR_TEST_POSTGRES_URL`` (default
``postgresql+psycopg://postgres@127.0.0.1:5432/test``). This module works in a schema of its
own, created at the start and dropped (with everything in it) at the end, and every test uses
its own table prefix in it, so concurrent runs never meet. Without a reachable server the
PostgreSQL tests are skipped, except in CI (``CI`` set), where they fail.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterator

import pytest

sa = pytest.importorskip("sqlalchemy")
pytest.importorskip("psycopg")

from test_storage import (  # noqa: E402
    ClientStoreContract,
    make_client,
    run_forked_writers,
    run_threads,
)
from test_token_store import T0, TokenStoreContract  # noqa: E402
from test_token_store import fields as token_fields  # noqa: E402

from flask_obdcr.storage import ClientExists, ClientNotFound, StoreError  # noqa: E402
from flask_obdcr.storage.sqlalchemy import (  # noqa: E402
    SQLAlchemyStore,
    SQLAlchemyTokenStore,
    make_engine,
)

POSTGRES_URL = os.environ.get(
    "OBDCR_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pg_engine():
    engine = make_engine(POSTGRES_URL, connect_args={"connect_timeout": 5})
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.OperationalError as exc:
        engine.dispose()
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL at {POSTGRES_URL} is required in CI: {exc}")
        pytest.skip(f"no PostgreSQL at {POSTGRES_URL}: {exc}")
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def pg_schema(pg_engine):
    """A schema of this module's own, dropped with its contents afterwards."""
    name = f"obdcr_test_{uuid.uuid4().hex[:12]}"
    with pg_engine.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{name}"'))
    yield name
    with pg_engine.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA "{name}" CASCADE'))


@pytest.fixture
def table_prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}_"


@pytest.fixture
def pg_store_factory(
    pg_engine, pg_schema, table_prefix
) -> Iterator[Callable[..., SQLAlchemyStore]]:
    """Store objects over this test's table. Each has its own engine (its own pool), as
    separate server processes would; ``engine=`` shares one instead."""
    made: list[SQLAlchemyStore] = []

    def make(*, engine=None, **kw) -> SQLAlchemyStore:
        kw.setdefault("table_prefix", table_prefix)
        store = SQLAlchemyStore(engine or POSTGRES_URL, schema=pg_schema, **kw)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


def table_names(engine, schema) -> set[str]:
    return set(sa.inspect(engine).get_table_names(schema=schema))


# -- PostgreSQL ----------------------------------------------------------------------------


class TestPostgresStore(ClientStoreContract):
    """The contract on PostgreSQL, then what only a database server can show."""

    @pytest.fixture
    def peer_stores(self, pg_store_factory):
        """Eight stores with their own pools, as eight processes would have."""
        stores = [pg_store_factory() for _ in range(8)]
        stores[0].create_schema()
        return stores

    @pytest.fixture
    def store(self, pg_store_factory):
        return pg_store_factory()

    def test_schema_created_on_first_use(self, pg_engine, pg_schema, store, table_prefix):
        table = f"{table_prefix}clients"
        assert table not in table_names(pg_engine, pg_schema)
        assert store.get("nobody") is None
        inspector = sa.inspect(pg_engine)
        assert table in inspector.get_table_names(schema=pg_schema)
        primary_key = inspector.get_pk_constraint(table, schema=pg_schema)
        assert primary_key["constrained_columns"] == ["client_id"]
        indexes = inspector.get_indexes(table, schema=pg_schema)
        assert {("software_id",), ("org_id",)} <= {tuple(ix["column_names"]) for ix in indexes}

    def test_concurrent_first_use_by_many_processes(self, pg_store_factory):
        """Eight 'processes' (own engines) racing to create the table all end up using it."""
        stores = [pg_store_factory() for _ in range(8)]
        errors = run_threads(
            lambda n, store: store.add(make_client(f"racer-{n}", issued_at=n)),
            list(enumerate(stores)),
        )
        assert errors == []
        assert [c.client_id for c in stores[0].list()] == [f"racer-{n}" for n in range(8)]

    def test_processes_share_one_table(self, pg_store_factory):
        one, two = pg_store_factory(), pg_store_factory()
        one.add(make_client("dup"))
        with pytest.raises(ClientExists):
            two.add(make_client("dup", issued_at=5))
        assert two.get("dup") == make_client("dup")
        two.replace(make_client("dup", updated_at=7))
        assert one.get("dup").updated_at == 7
        with pytest.raises(ClientNotFound):
            two.replace(make_client("ghost"))
        assert two.delete("dup") is True
        assert one.delete("dup") is False

    def test_table_prefix_isolates_deployments(self, pg_store_factory, table_prefix):
        mine = pg_store_factory()
        theirs = pg_store_factory(table_prefix=table_prefix + "other_")
        mine.add(make_client("shared-id"))
        theirs.add(make_client("shared-id"))  # no clash: another table
        assert len(mine) == 1 and len(theirs) == 1
        mine.delete("shared-id")
        assert theirs.get("shared-id") is not None

    def test_round_trip_of_text_jsonb_would_refuse(self, store):
        awkward = make_client(
            "awkward",
            metadata={
                "nul": "a\u0000b",  # JSONB refuses \u0000; JSON text keeps it
                "astral": "\U0001f3e6 \u6771\u4eac",
                "big": 2**62,
                "float": 0.1,
                "nested": {"z": [1, {"y": None}], "a": True},
            },
        )
        store.add(awkward)
        assert store.get("awkward") == awkward

    def test_failed_transaction_leaves_nothing(self, store):
        store.add(make_client("existing"))
        with pytest.raises(ClientExists), store.transaction():
            store.add(make_client("new-1"))
            store.replace(make_client("existing", updated_at=9))
            assert store.get("new-1") is not None  # visible inside the transaction
            store.add(make_client("existing"))  # the duplicate in the middle
            store.add(make_client("new-2"))  # never reached
        assert store.get("new-1") is None
        assert store.get("new-2") is None
        assert store.get("existing") == make_client("existing")
        assert len(store) == 1

    def test_failed_write_caught_inside_a_transaction_still_spoils_it(self, store):
        store.add(make_client("existing"))
        with pytest.raises(StoreError, match="nothing was committed"), store.transaction():
            store.add(make_client("new-1"))
            with pytest.raises(ClientExists):
                store.add(make_client("existing"))
        assert [c.client_id for c in store.list()] == ["existing"]

    def test_transaction_commits_all_writes_at_the_end(self, pg_store_factory):
        store, observer = pg_store_factory(), pg_store_factory()
        with store.transaction():
            store.add(make_client("t-1", issued_at=1))
            with store.transaction():  # nested: joins the outer one
                store.add(make_client("t-2", issued_at=2))
            assert observer.get("t-1") is None  # not committed yet
        assert [c.client_id for c in observer.list()] == ["t-1", "t-2"]

    def test_exception_inside_a_transaction_rolls_back(self, store):
        with pytest.raises(RuntimeError, match="boom"), store.transaction():
            store.add(make_client("t-1"))
            raise RuntimeError("boom")
        assert store.get("t-1") is None

    def test_failed_single_write_leaves_nothing_and_the_store_recovers(self, store):
        store.add(make_client("good"))
        # PostgreSQL refuses NUL in text: the database itself fails these writes
        with pytest.raises(sa.exc.DBAPIError):
            store.add(make_client("bad", client_secret_hash="sha256:\u0000"))
        with pytest.raises(sa.exc.DBAPIError):
            store.replace(make_client("good", client_secret_hash="sha256:\u0000"))
        assert store.get("bad") is None
        assert store.get("good") == make_client("good")
        store.add(make_client("after"))  # the pooled connection is clean again
        assert len(store) == 2

    @staticmethod
    def _kill_connections(pg_engine, name: str) -> int:
        with pg_engine.begin() as conn:
            return conn.execute(
                sa.text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                    " WHERE application_name = :name"
                ),
                {"name": name},
            ).scalar()

    @classmethod
    def _store_whose_connections_die(cls, pg_engine, pg_store_factory, ping_after_idle):
        """A store that has written once, then had its connections killed by the server."""
        name = f"obdcr-{uuid.uuid4().hex[:8]}"
        store = pg_store_factory(
            engine_options={
                "connect_args": {"application_name": name},
                "ping_after_idle": ping_after_idle,
            }
        )
        store.add(make_client("before", issued_at=1))
        assert cls._kill_connections(pg_engine, name) >= 1
        return store

    def test_idle_connections_the_server_dropped_are_replaced(self, pg_engine, pg_store_factory):
        store = self._store_whose_connections_die(pg_engine, pg_store_factory, 0.2)
        time.sleep(0.3)  # idle long enough: pinged at checkout, found dead, replaced
        assert store.get("before") == make_client("before", issued_at=1)
        store.add(make_client("after", issued_at=2))
        assert len(store) == 2

    def test_a_busy_connection_the_server_dropped_fails_once(self, pg_engine, pg_store_factory):
        # not pinged (in steady use): the one call that meets it fails, nothing is written,
        # the pool is discarded, and the next call works
        store = self._store_whose_connections_die(pg_engine, pg_store_factory, 60)
        with pytest.raises(sa.exc.OperationalError):
            store.add(make_client("lost", issued_at=2))
        store.add(make_client("after", issued_at=3))
        assert [c.client_id for c in store.list()] == ["before", "after"]

    def test_ping_on_every_checkout_can_be_asked_for(self, pg_engine, pg_store_factory):
        store = self._store_whose_connections_die(pg_engine, pg_store_factory, 0)
        assert store.get("before") == make_client("before", issued_at=1)

    def test_forked_processes_get_their_own_connections(self, store):
        """A pre-forking server: the parent used the store, then forks its workers."""
        store.add(make_client("parent", issued_at=0))
        assert run_forked_writers(store, per_child=50) == [(n, "ok") for n in range(4)]
        assert len(store) == 4 * 50 + 1
        store.add(make_client("after", issued_at=99))  # the parent's pool still works
        assert store.get("after") == make_client("after", issued_at=99)


class TestSQLAlchemySQLiteStore(ClientStoreContract):
    """The same class over ``sqlite://`` URLs: in memory (one shared connection) and a file."""

    @pytest.fixture(params=["memory", "file"])
    def store(self, request, tmp_path):
        if request.param == "memory":
            store = SQLAlchemyStore("sqlite://")
        else:
            store = SQLAlchemyStore(f"sqlite:///{tmp_path / 'clients.db'}")
        yield store
        store.close()

    def test_failed_transaction_leaves_nothing(self, store):
        store.add(make_client("a"))
        with pytest.raises(ClientExists), store.transaction():
            store.add(make_client("b"))
            store.add(make_client("a"))
        assert [c.client_id for c in store.list()] == ["a"]


# -- configuration -------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["", "1abc", "a-b", "a b", "abc\n", 'a"b', "x" * 42, None])
def test_table_prefix_is_checked(bad):
    with pytest.raises(ValueError, match="table_prefix"):
        SQLAlchemyStore("sqlite://", table_prefix=bad)


def test_repr_hides_the_password():
    store = SQLAlchemyStore("postgresql+psycopg://obdcr:hunter2@db.example:5432/obdcr")
    assert "hunter2" not in repr(store)
    assert "db.example" in repr(store)


def test_engine_is_shared_not_disposed(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'shared.db'}")
    store = SQLAlchemyStore(engine)
    tokens = store.token_store()
    assert store.engine is engine and tokens.engine is engine
    store.add(make_client())
    store.close()  # not ours to dispose of
    assert store.get("client-1") == make_client()
    with pytest.raises(TypeError, match="engine_options"):
        SQLAlchemyStore(engine, engine_options={"pool_size": 1})
    engine.dispose()


# -- SQLAlchemyTokenStore: the TokenStore contract -----------------------------------------


class TestPostgresTokenStore(TokenStoreContract):
    """Tokens in PostgreSQL, beside the clients: one engine (one pool) for both."""

    @pytest.fixture
    def token_store_factory(self, pg_store_factory):
        clients = pg_store_factory()

        def make(**kw) -> SQLAlchemyTokenStore:
            tokens = clients.token_store(**kw)
            assert tokens.engine is clients.engine  # closed with the client store
            return tokens

        return make

    def test_expired_rows_leave_the_table(self, token_store_factory, clock, pg_engine, pg_schema):
        tokens = token_store_factory(clock=clock, purge_every=0)
        for n in range(4):
            tokens.save(f"old-{n}", **token_fields(expires_at=T0 + 10))
        tokens.save("live", **token_fields())
        clock.advance(10)
        assert tokens.purge_expired() == 4
        with pg_engine.connect() as conn:
            count = sa.select(sa.func.count()).select_from(tokens.table)
            assert conn.execute(count).scalar_one() == 1
        indexes = sa.inspect(pg_engine).get_indexes(tokens.table.name, schema=pg_schema)
        assert ("expires_at",) in {tuple(ix["column_names"]) for ix in indexes}


class TestSQLAlchemySQLiteTokenStore(TokenStoreContract):
    @pytest.fixture
    def token_store_factory(self, tmp_path):
        made: list[SQLAlchemyTokenStore] = []

        def make(**kw) -> SQLAlchemyTokenStore:
            made.append(SQLAlchemyTokenStore(f"sqlite:///{tmp_path / 't.db'}", **kw))
            return made[-1]

        yield make
        for tokens in made:
            tokens.close()
