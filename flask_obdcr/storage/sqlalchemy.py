"""Clients (and access tokens) in any database SQLAlchemy 2 speaks: PostgreSQL first.

Install the ``postgres`` extra (SQLAlchemy 2 + psycopg 3)::

    pip install 'flask-obdcr[postgres]'

    store = SQLAlchemyStore("postgresql+psycopg://obdcr@db.internal:5432/obdcr")
    tokens = store.token_store()          # access tokens in the same database

SQLAlchemy Core only (no ORM session). The tables are created on first use. Every write runs
in its own transaction (``engine.begin()``), so a failed write leaves nothing behind;
:meth:`SQLAlchemyStore.transaction` groups several writes into one all-or-nothing unit.
JSON columns hold the same compact JSON text as the SQLite store (portable, and an exact
round trip: PostgreSQL JSONB would refuse ``\\u0000`` in a TPP's metadata and reorder keys).
``sqlite://`` URLs work too (handy in tests); for production SQLite prefer
:class:`~flask_obdcr.storage.SQLiteStore`.
"""

from __future__ import annotations

import math
import os
import re
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, nullcontext
from typing import Any, cast

try:
    import sqlalchemy as sa
    from sqlalchemy import event, exc
    from sqlalchemy.engine import Connection, Engine
    from sqlalchemy.pool import StaticPool
except ImportError as error:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "SQLAlchemyStore needs SQLAlchemy 2 (and a driver such as psycopg 3): "
        "pip install 'flask-obdcr[postgres]'"
    ) from error

from .base import ClientExists, ClientNotFound, ClientStore, StoredClient, StoreError
from .tokens import SHARED_CACHE_SECONDS, AccessToken, TokenStore

__all__ = ["SQLAlchemyStore", "SQLAlchemyTokenStore", "make_engine"]

_PREFIX_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,40}\Z")

# Engines of our stores. A forked child (gunicorn, multiprocessing) must not use the
# parent's pooled connections: two processes on one socket corrupt each other's sessions.
_ENGINES: weakref.WeakSet[Engine] = weakref.WeakSet()


def _forget_parent_connections() -> None:
    for engine in list(_ENGINES):
        engine.dispose(close=False)  # drop, without closing, what the parent still uses


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_parent_connections)


def make_engine(
    url: str | sa.URL, *, ping_after_idle: float | None = 5.0, **options: Any
) -> Engine:
    """An engine fit for a store.

    * A pooled connection that has been idle for ``ping_after_idle`` seconds or more is
      pinged before it is handed out, and replaced if the database has dropped it (idle
      timeouts, firewalls, a restart while the service was quiet). A connection in steady use
      is not pinged: ``pool_pre_ping`` would cost a round trip on every checkout, about a
      third of a registration's time on PostgreSQL. The price: after a database restart
      under load, a request already holding a dead connection fails (the store reports it,
      the extension answers 503 and SQLAlchemy discards the whole pool). ``ping_after_idle=0``
      pings on every checkout; ``None`` never; ``pool_pre_ping=True`` is SQLAlchemy's own.
    * Autocommit connections, on which each statement is its own transaction: one round trip
      for a single-statement write or read instead of BEGIN, statement, COMMIT or ROLLBACK.
      The stores open a real transaction where they need one.
    * For SQLite: a busy timeout, WAL for files, and one shared connection for an in-memory
      database (otherwise each thread would see its own).
    """
    url = sa.make_url(url)
    options.setdefault("isolation_level", "AUTOCOMMIT")
    if url.get_backend_name() == "sqlite":
        connect_args = options["connect_args"] = dict(options.get("connect_args") or {})
        connect_args.setdefault("timeout", 30)
        if _sqlite_in_memory(url):
            connect_args.setdefault("check_same_thread", False)
            options.setdefault("poolclass", StaticPool)
        engine = sa.create_engine(url, **options)
        if not _sqlite_in_memory(url):

            @event.listens_for(engine, "connect")
            def _wal(dbapi_connection: Any, _record: Any) -> None:
                cursor = dbapi_connection.cursor()
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA synchronous=NORMAL")
                cursor.close()

    else:
        engine = sa.create_engine(url, **options)
        if ping_after_idle is not None and not options.get("pool_pre_ping"):
            _ping_after_idle(engine, ping_after_idle)
    if options["isolation_level"] == "AUTOCOMMIT":
        _AUTOCOMMIT_ENGINES.add(engine)
    return engine


def _ping_after_idle(engine: Engine, seconds: float) -> None:
    # SQLAlchemy's event-based pessimistic disconnect handling: raising DisconnectionError at
    # checkout makes the pool discard the connection and hand out another (3 attempts).
    @event.listens_for(engine, "checkin")
    def _returned(_dbapi_connection: Any, record: Any) -> None:
        if record is not None:
            record.info["obdcr_returned_at"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping_if_idle(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        returned = record.info.get("obdcr_returned_at")
        if returned is None or time.monotonic() - returned < seconds:
            return  # new, or in steady use
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as error:  # noqa: BLE001 - any failure: do not hand it out
            raise exc.DisconnectionError(f"pooled connection failed its ping: {error}") from error


#: engines whose connections are in autocommit from the start (made by make_engine)
_AUTOCOMMIT_ENGINES: weakref.WeakSet[Engine] = weakref.WeakSet()


def _sqlite_in_memory(url: sa.URL) -> bool:
    database = url.database or ""
    return url.get_backend_name() == "sqlite" and (
        database in ("", ":memory:")
        or database.startswith("file::memory:")
        or url.query.get("mode") == "memory"
    )


class _Database:
    """What both stores share: the engine, the schema-on-first-use, thread-local transactions."""

    def __init__(
        self,
        url_or_engine: str | sa.URL | Engine,
        *,
        table_prefix: str,
        schema: str | None,
        engine_options: Mapping[str, Any] | None,
    ) -> None:
        if not isinstance(table_prefix, str) or not _PREFIX_RE.match(table_prefix):
            raise ValueError(
                f"table_prefix must be letters, digits and _ (at most 41), got {table_prefix!r}"
            )
        if isinstance(url_or_engine, Engine):
            if engine_options:
                raise TypeError("engine_options apply only when a URL is given")
            self.engine = url_or_engine
            self._owns_engine = False
        else:
            self.engine = make_engine(url_or_engine, **dict(engine_options or {}))
            self._owns_engine = True
        if not _sqlite_in_memory(self.engine.url):  # nothing to share across processes there
            _ENGINES.add(self.engine)
        # Every write outside transaction() is one statement, atomic by itself: in autocommit
        # it costs one round trip instead of BEGIN, the statement and COMMIT; reads likewise
        # skip BEGIN and the ROLLBACK when the connection goes back to the pool. An engine of
        # make_engine is in autocommit already; another engine is switched per connection.
        self._autocommit_engine = self.engine in _AUTOCOMMIT_ENGINES
        self._autocommit = (
            self.engine
            if self._autocommit_engine
            else self.engine.execution_options(isolation_level="AUTOCOMMIT")
        )
        self.table_prefix = table_prefix
        self.schema = schema
        self.metadata = sa.MetaData(schema=schema)
        self._schema_ready = False
        self._schema_lock = threading.Lock()
        self._local = threading.local()
        # one shared connection (in-memory SQLite): serialise its use, transactions included
        self._serial: Any = (
            threading.RLock()
            if self.engine.dialect.name == "sqlite" and _sqlite_in_memory(self.engine.url)
            else None
        )

    # -- schema --------------------------------------------------------------------------

    def ensure_schema(self) -> None:
        if self._schema_ready:
            return
        with self._schema_lock:
            if self._schema_ready:
                return
            try:
                with self._serialised():
                    self.metadata.create_all(self.engine, checkfirst=True)
            except (exc.ProgrammingError, exc.IntegrityError, exc.OperationalError):
                # another process created the tables between our check and our CREATE
                with self._serialised():
                    inspector = sa.inspect(self.engine)
                    missing = [
                        t.name
                        for t in self.metadata.sorted_tables
                        if not inspector.has_table(t.name, schema=self.schema)
                    ]
                if missing:
                    raise
            self._schema_ready = True

    # -- connections and transactions -----------------------------------------------------

    def _serialised(self) -> Any:
        return self._serial if self._serial is not None else nullcontext()

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """One transaction for every write of this thread inside the block."""
        outer = getattr(self._local, "tx", None)
        if outer is not None:  # nested: join the outer transaction
            yield outer[0]
            return
        self.ensure_schema()
        with self._serialised(), self.engine.connect() as conn:
            if self._autocommit_engine:  # a real transaction, at the database's own level
                conn.execution_options(isolation_level=conn.default_isolation_level)
            state = [conn, False]  # connection, failed
            self._local.tx = state
            try:
                conn.begin()
                yield conn
                if state[1]:
                    raise StoreError("a write failed inside the transaction; nothing was committed")
                conn.commit()
            except BaseException:
                conn.rollback()
                raise
            finally:
                self._local.tx = None

    @contextmanager
    def writing(self) -> Iterator[Connection]:
        """The current transaction's connection, or a new transaction for this one write."""
        self.ensure_schema()
        outer = getattr(self._local, "tx", None)
        if outer is not None:
            try:
                yield outer[0]
            except BaseException:
                outer[1] = True  # the whole unit is spoilt (PostgreSQL aborts it anyway)
                raise
            return
        with self._serialised(), self._autocommit.connect() as conn:
            yield conn  # one statement: committed as it runs, or not at all

    @contextmanager
    def reading(self) -> Iterator[Connection]:
        self.ensure_schema()
        outer = getattr(self._local, "tx", None)
        if outer is not None:
            yield outer[0]  # see the transaction's own uncommitted writes
            return
        with self._serialised(), self._autocommit.connect() as conn:
            yield conn

    def dispose(self) -> None:
        if self._owns_engine:
            self.engine.dispose()

    def describe(self) -> str:
        where = self.engine.url.render_as_string(hide_password=True)
        schema = f", schema={self.schema!r}" if self.schema else ""
        return f"{where!r}, table_prefix={self.table_prefix!r}{schema}"


def _client(row: sa.RowMapping) -> StoredClient:
    # the rows of a Core select are keyed by column name; SQLAlchemy types the keys as
    # "str | Column" and Mapping's key type is invariant, hence the cast
    return StoredClient.from_record(cast("Mapping[str, Any]", row))


class SQLAlchemyStore(ClientStore):
    """Registered clients in one table, ``<table_prefix>clients``.

    ``url_or_engine`` is an SQLAlchemy URL (``postgresql+psycopg://user@host:5432/db``) or an
    :class:`~sqlalchemy.engine.Engine` to share (then this store never disposes of it).
    ``schema`` places the table in a PostgreSQL schema (which must exist); ``table_prefix``
    lets several deployments share one schema. ``engine_options`` go to ``create_engine``
    (``pool_size``, ``connect_args``...).
    """

    def __init__(
        self,
        url_or_engine: str | sa.URL | Engine,
        *,
        table_prefix: str = "obdcr_",
        schema: str | None = None,
        engine_options: Mapping[str, Any] | None = None,
    ) -> None:
        self._db = _Database(
            url_or_engine, table_prefix=table_prefix, schema=schema, engine_options=engine_options
        )
        name = f"{table_prefix}clients"
        self.table = sa.Table(
            name,
            self._db.metadata,
            sa.Column("client_id", sa.String(64), primary_key=True),
            sa.Column("client_id_issued_at", sa.BigInteger, nullable=False),
            sa.Column("software_id", sa.String(255), index=True),
            sa.Column("org_id", sa.String(255), index=True),
            sa.Column("metadata", sa.Text, nullable=False),
            sa.Column("ssa_claims", sa.Text, nullable=False),
            sa.Column("client_secret_hash", sa.String(255)),
            sa.Column("registration_access_token_hash", sa.String(255)),
            sa.Column("updated_at", sa.BigInteger),
            sa.Column("extra", sa.Text, nullable=False),
        )
        self._columns = tuple(column.name for column in self.table.columns)
        self._order = (self.table.c.client_id_issued_at, self.table.c.client_id)
        # built once: executed with parameters, compiled once per dialect (SQLAlchemy's cache)
        self._insert = self.table.insert()
        self._select_one = sa.select(self.table).where(self.table.c.client_id == sa.bindparam("id"))

    @property
    def engine(self) -> Engine:
        return self._db.engine

    @property
    def schema(self) -> str | None:
        return self._db.schema

    @property
    def table_prefix(self) -> str:
        return self._db.table_prefix

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._db.describe()})"

    def create_schema(self) -> None:
        """Create the table now (it is otherwise created on first use)."""
        self._db.ensure_schema()

    def transaction(self):  # -> ContextManager[Connection]
        """Group this thread's writes into one transaction: all of them or none.

        ::

            with store.transaction():
                store.add(a)
                store.add(b)        # ClientExists here: a is not stored either

        A write that fails inside the block spoils the whole unit: even if its exception is
        caught inside the block, nothing is committed and :class:`StoreError` is raised at
        the end. Nested blocks join the outer one. Reads inside the block see its writes.
        """
        return self._db.transaction()

    def token_store(
        self, *, clock: Callable[[], float] = time.time, **kw: Any
    ) -> SQLAlchemyTokenStore:
        """Access tokens in the same database, schema and table prefix (same engine); ``kw``
        goes to :class:`SQLAlchemyTokenStore` (``purge_every``, ``purge_batch``...)."""
        kw.setdefault("table_prefix", self.table_prefix)
        kw.setdefault("schema", self.schema)
        return SQLAlchemyTokenStore(self.engine, clock=clock, **kw)

    # -- primitives ---------------------------------------------------------------------------

    def _add(self, client: StoredClient) -> None:
        record = client.to_record()
        try:
            with self._db.writing() as conn:
                conn.execute(self._insert, {c: record[c] for c in self._columns})
        except exc.IntegrityError as error:
            # the primary key is the only constraint a complete record can break
            raise ClientExists(client.client_id) from error

    def _get(self, client_id: str) -> StoredClient | None:
        with self._db.reading() as conn:
            row = conn.execute(self._select_one, {"id": client_id}).mappings().first()
        return None if row is None else _client(row)

    def _list(self) -> Iterator[StoredClient]:
        query = sa.select(self.table).order_by(*self._order)
        with self._db.reading() as conn:
            rows = conn.execute(query).mappings().all()
        return (_client(row) for row in rows)

    def _replace(self, client: StoredClient) -> None:
        record = client.to_record()
        values = {c: record[c] for c in self._columns if c != "client_id"}
        statement = (
            self.table.update().where(self.table.c.client_id == client.client_id).values(values)
        )
        with self._db.writing() as conn:
            if conn.execute(statement).rowcount != 1:
                raise ClientNotFound(client.client_id)

    def _delete(self, client_id: str) -> bool:
        statement = self.table.delete().where(self.table.c.client_id == client_id)
        with self._db.writing() as conn:
            return conn.execute(statement).rowcount == 1

    def __len__(self) -> int:
        with self._db.reading() as conn:
            count = sa.select(sa.func.count()).select_from(self.table)
            return int(conn.execute(count).scalar_one())  # COUNT(*) always returns one row

    def drop_schema(self) -> None:
        """Drop the table (tests and teardown; the data is gone)."""
        with self._db._serialised():
            self.table.drop(self.engine, checkfirst=True)
        self._db._schema_ready = False

    def close(self) -> None:
        """Close the pooled connections (of an engine this store created)."""
        self._db.dispose()


class SQLAlchemyTokenStore(TokenStore):
    """Access tokens in ``<table_prefix>access_tokens``; shared by every server process.

    Expired tokens are deleted as tokens are saved (every ``purge_every`` saves, at most
    ``purge_batch`` of them, by the ``expires_at`` index) and by :meth:`purge_expired`;
    ``find`` refuses them anyway.
    """

    #: found tokens are answered from this process a while (TokenStore, "The lookup cache")
    default_cache_seconds = SHARED_CACHE_SECONDS

    def __init__(
        self,
        url_or_engine: str | sa.URL | Engine,
        *,
        table_prefix: str = "obdcr_",
        schema: str | None = None,
        engine_options: Mapping[str, Any] | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(**kw)
        self._db = _Database(
            url_or_engine, table_prefix=table_prefix, schema=schema, engine_options=engine_options
        )
        self.table = sa.Table(
            f"{table_prefix}access_tokens",
            self._db.metadata,
            sa.Column("token_hash", sa.String(255), primary_key=True),
            sa.Column("client_id", sa.String(64), nullable=False, index=True),
            sa.Column("scope", sa.Text, nullable=False),
            sa.Column("issued_at", sa.BigInteger, nullable=False),
            sa.Column("expires_at", sa.BigInteger, nullable=False, index=True),
            sa.Column("x5t_s256", sa.String(255)),
        )
        self._fields = tuple(column.name for column in self.table.columns)
        self._insert = self.table.insert()
        self._select_one = sa.select(self.table).where(
            self.table.c.token_hash == sa.bindparam("hash")
        )
        expired = self.table.c.expires_at <= sa.bindparam("now")
        # a bounded batch in two portable statements (MySQL refuses LIMIT in an IN subquery);
        # the DELETE checks the expiry again, so a token saved anew meanwhile stays
        self._select_expired = (
            sa.select(self.table.c.token_hash).where(expired).limit(sa.bindparam("limit"))
        )
        self._delete_expired = self.table.delete().where(
            self.table.c.token_hash.in_(sa.bindparam("hashes", expanding=True)), expired
        )

    @property
    def engine(self) -> Engine:
        return self._db.engine

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._db.describe()})"

    def _save(self, record: AccessToken) -> None:
        values = {name: getattr(record, name) for name in self._fields}
        try:
            with self._db.writing() as conn:
                conn.execute(self._insert, values)
        except exc.IntegrityError:
            # the same token saved again: overwrite, as the other token stores do
            key = values.pop("token_hash")
            with self._db.writing() as conn:
                conn.execute(
                    self.table.update().where(self.table.c.token_hash == key).values(values)
                )

    def _get(self, token_hash: str) -> AccessToken | None:
        with self._db.reading() as conn:
            row = conn.execute(self._select_one, {"hash": token_hash}).mappings().first()
        return None if row is None else AccessToken(**row)

    def _delete(self, token_hash: str) -> None:
        with self._db.writing() as conn:
            conn.execute(self.table.delete().where(self.table.c.token_hash == token_hash))

    def _revoke_client(self, client_id: str) -> int:
        with self._db.writing() as conn:
            result = conn.execute(self.table.delete().where(self.table.c.client_id == client_id))
            return int(result.rowcount)

    def _purge(self, now: float, limit: int) -> int:
        values = {"now": math.floor(now), "limit": limit}  # expires_at is whole seconds
        with self._db.reading() as conn:
            hashes = conn.scalars(self._select_expired, values).all()
        if not hashes:
            return 0
        with self._db.writing() as conn:
            result = conn.execute(
                self._delete_expired, {"now": values["now"], "hashes": list(hashes)}
            )
            return int(result.rowcount)

    def drop_schema(self) -> None:
        with self._db._serialised():
            self.table.drop(self.engine, checkfirst=True)
        self._db._schema_ready = False

    def close(self) -> None:
        self._db.dispose()
