"""The ClientStore contract, run against every backend.

``ClientStoreContract`` is the one contract test class: a backend's test module subclasses it
(``class TestPostgresStore(ClientStoreContract)``) and overrides the ``store`` fixture with an
empty store of that backend. Backend-specific behaviour (SQLite's WAL file, several processes
on one file) is tested in the backend's subclass.
"""

from __future__ import annotations

import copy
import functools
import hmac
import multiprocessing
import os
import sqlite3
import threading

import pytest

from flask_obdcr.storage import (
    ClientExists,
    ClientNotFound,
    ClientStore,
    MemoryStore,
    SQLiteStore,
    StoredClient,
    TokenStore,
    hash_secret,
    secret_matches,
)
from flask_obdcr.testing.clock import FrozenClock

SECRET = "s3cr3t-Kx9vQ2mZr7LwTb4NcYp8HdJf6GsAe1Uo"
TOKEN = "rat-Zq5Wm2Rx8Ny4Lb7Kc1Vd9Ht3Gf6Js0Pe"

INVALID_IDS = [
    pytest.param("", id="empty"),
    pytest.param("a" * 37, id="37-chars"),
    pytest.param("a/b", id="slash"),
    pytest.param("has space", id="space"),
    pytest.param("abc\n", id="trailing-newline"),
    pytest.param("caf\u00e9", id="non-ascii"),
]


def make_client(client_id: str = "client-1", issued_at: int = 1_700_000_000, **changes):
    """A StoredClient with nested metadata and SSA claims, as the registrar stores them."""
    client = StoredClient(
        client_id=client_id,
        client_id_issued_at=issued_at,
        metadata={
            "redirect_uris": ["https://tpp.example.com/cb", "https://tpp.example.com/cb2"],
            "token_endpoint_auth_method": "client_secret_basic",
            "grant_types": ["authorization_code", "client_credentials", "refresh_token"],
            "scope": "openid accounts payments",
            "software_statement": "eyJhbGciOiJQUzI1NiJ9.eyJzb2Z0d2FyZV9pZCI6IngifQ.c2ln",
            "id_token_signed_response_alg": "PS256",
        },
        ssa_claims={
            "iss": "OpenBanking Ltd",
            "iat": 1_699_999_000,
            "jti": "c1b2a3",
            "software_id": "sw-" + client_id[:20],
            "org_id": "0015800001041REAAY",
            "org_status": "Active",
            "software_roles": ["AISP", "PISP"],
            "software_redirect_uris": ["https://tpp.example.com/cb"],
            "organisation_competent_authority_claims": {
                "authority_id": "OBGBR",
                "registration_id": "Unknown0015800001041REAAY",
                "status": "Active",
                "authorisations": [
                    {"member_state": "GB", "roles": ["AISP", "PISP"]},
                    {"member_state": "IE", "roles": ["AISP"]},
                ],
            },
            "software_jwks_endpoint": "https://keystore.openbankingtest.org.uk/x/y.jwks",
            "software_logo_uri": None,
            "software_on_behalf_of_org": "",
            "score": 1.5,
            "caf\u00e9": "\u00fcnic\u00f8de \u20ac",
        },
        client_secret_hash=hash_secret(SECRET),
        registration_access_token_hash=hash_secret(TOKEN),
        updated_at=None,
        extra={"notes": {"added_by": "test"}, "tags": ["a", "b"]},
    )
    return client.with_changes(**changes) if changes else client


class ClientStoreContract:
    """Every ClientStore backend behaves like this. Subclasses override ``store``."""

    @pytest.fixture
    def store(self) -> ClientStore:
        raise NotImplementedError("a backend's test class overrides the `store` fixture")

    # -- add / get -------------------------------------------------------------------------

    def test_new_store_is_empty(self, store):
        assert len(store) == 0
        assert list(store.list()) == []
        assert bool(store) is True  # an empty store is still a store

    def test_add_then_get_round_trips_exactly(self, store):
        client = make_client()
        assert store.add(client) == client
        stored = store.get("client-1")
        assert stored == client
        assert type(stored) is StoredClient
        assert stored.metadata["redirect_uris"] == [
            "https://tpp.example.com/cb",
            "https://tpp.example.com/cb2",
        ]
        claims = stored.ssa_claims["organisation_competent_authority_claims"]
        assert claims["authorisations"][1] == {"member_state": "IE", "roles": ["AISP"]}
        assert stored.to_response() == client.to_response()
        assert stored.software_id == "sw-client-1"
        assert stored.org_id == "0015800001041REAAY"

    def test_round_trip_of_a_minimal_client(self, store):
        client = StoredClient(
            client_id="m", client_id_issued_at=0, metadata={}, ssa_claims={}, updated_at=5
        )
        store.add(client)
        assert store.get("m") == client

    def test_longest_valid_id_round_trips(self, store):
        client_id = "A-z0.9_~" + "x" * 28
        assert len(client_id) == 36
        client = make_client(client_id)
        store.add(client)
        assert store.get(client_id) == client

    def test_stored_client_is_independent_of_the_callers_objects(self, store):
        client = make_client()
        expected = copy.deepcopy(client)
        store.add(client)
        client.metadata["redirect_uris"].append("https://evil.example.com/cb")
        client.ssa_claims["software_roles"].append("CBPII")
        fetched = store.get("client-1")
        fetched.metadata["scope"] = "openid fundsconfirmations"
        assert store.get("client-1") == expected
        assert next(iter(store.list())) == expected

    def test_get_unknown_is_none(self, store):
        store.add(make_client("known"))
        assert store.get("unknown") is None
        assert store.get("KNOWN") is None

    @pytest.mark.parametrize(
        "client_id",
        [
            *INVALID_IDS,
            pytest.param(None, id="none"),
            pytest.param(42, id="int"),
            pytest.param(b"known", id="bytes"),
        ],
    )
    def test_get_invalid_id_is_none(self, store, client_id):
        store.add(make_client("known"))
        assert store.get(client_id) is None

    def test_add_duplicate_raises_and_keeps_the_original(self, store):
        original = make_client("dup", issued_at=100)
        store.add(original)
        with pytest.raises(ClientExists):
            store.add(make_client("dup", issued_at=200, metadata={"scope": "openid"}))
        assert store.get("dup") == original
        assert len(store) == 1

    @pytest.mark.parametrize("client_id", INVALID_IDS)
    def test_add_invalid_id_raises_and_stores_nothing(self, store, client_id):
        with pytest.raises(ValueError):
            store.add(make_client("ok").with_changes(client_id=client_id))
        assert len(store) == 0
        assert list(store.list()) == []

    @pytest.mark.parametrize("client_id", [12345, b"bytes-id", None])
    def test_add_non_string_id_raises_and_stores_nothing(self, store, client_id):
        with pytest.raises(ValueError):
            store.add(make_client().with_changes(client_id=client_id))
        assert len(store) == 0

    def test_add_of_something_else_raises_type_error(self, store):
        with pytest.raises(TypeError):
            store.add(make_client().to_record())
        assert len(store) == 0

    # -- replace ---------------------------------------------------------------------------

    def test_replace_existing_stores_the_new_value(self, store):
        store.add(make_client("c1"))
        store.add(make_client("c2"))
        new = make_client(
            "c1",
            metadata={"redirect_uris": ["https://tpp.example.com/new"], "scope": "openid"},
            client_secret_hash=None,
            updated_at=1_700_000_500,
        )
        assert store.replace(new) == new
        assert store.get("c1") == new
        assert store.get("c2") == make_client("c2")
        assert len(store) == 2

    def test_replace_unknown_raises_and_creates_nothing(self, store):
        store.add(make_client("other"))
        with pytest.raises(ClientNotFound):
            store.replace(make_client("ghost"))
        assert store.get("ghost") is None
        assert [c.client_id for c in store.list()] == ["other"]

    @pytest.mark.parametrize("client_id", INVALID_IDS)
    def test_replace_invalid_id_raises_value_error(self, store, client_id):
        with pytest.raises(ValueError):
            store.replace(make_client().with_changes(client_id=client_id))
        assert len(store) == 0

    # -- delete ----------------------------------------------------------------------------

    def test_delete_removes(self, store):
        store.add(make_client("gone"))
        store.add(make_client("stays"))
        assert store.delete("gone") is True
        assert store.get("gone") is None
        assert store.get("stays") == make_client("stays")
        assert len(store) == 1
        assert store.delete("gone") is False

    def test_deleted_id_can_be_added_again(self, store):
        store.add(make_client("again", issued_at=1))
        assert store.delete("again") is True
        store.add(make_client("again", issued_at=2))
        assert store.get("again") == make_client("again", issued_at=2)

    @pytest.mark.parametrize("client_id", ["unknown", *INVALID_IDS, pytest.param(None, id="none")])
    def test_delete_unknown_or_invalid_is_false(self, store, client_id):
        store.add(make_client("known"))
        assert store.delete(client_id) is False
        assert len(store) == 1

    # -- list / len ------------------------------------------------------------------------

    def test_list_is_in_issue_order_then_client_id(self, store):
        # added out of order; equal issue times are listed by client_id
        for client_id, issued_at in [("zulu", 200), ("alpha", 300), ("mike", 100), ("bravo", 200)]:
            store.add(make_client(client_id, issued_at=issued_at))
        listed = list(store.list())
        assert [c.client_id for c in listed] == ["mike", "bravo", "zulu", "alpha"]
        assert listed[0] == make_client("mike", issued_at=100)
        assert len(store) == 4

    def test_list_is_a_snapshot(self, store):
        store.add(make_client("a", issued_at=1))
        store.add(make_client("b", issued_at=2))
        iterator = store.list()
        first = next(iterator)
        store.delete("b")
        store.add(make_client("c", issued_at=3))
        assert [first.client_id, *(c.client_id for c in iterator)] == ["a", "b"]

    def test_len_follows_adds_and_deletes(self, store):
        for i in range(5):
            store.add(make_client(f"c{i}", issued_at=i))
        assert len(store) == 5
        store.delete("c3")
        assert len(store) == 4
        store.replace(make_client("c1", issued_at=1, updated_at=9))
        assert len(store) == 4

    # -- secrets ---------------------------------------------------------------------------

    def test_only_secret_hashes_are_stored(self, store):
        store.add(make_client("sec"))
        stored = store.get("sec")
        assert stored.client_secret_hash == hash_secret(SECRET)
        assert stored.registration_access_token_hash == hash_secret(TOKEN)
        record = repr(stored.to_record())
        assert SECRET not in record
        assert TOKEN not in record
        assert stored.check_client_secret(SECRET) is True
        assert stored.check_client_secret(SECRET + "x") is False
        assert stored.check_client_secret(None) is False
        assert secret_matches(TOKEN, stored.registration_access_token_hash) is True
        assert secret_matches(SECRET, stored.registration_access_token_hash) is False

    # -- concurrency -----------------------------------------------------------------------

    @pytest.fixture
    def peer_stores(self, store) -> list[ClientStore]:
        """Eight handles on one backend, as eight processes would hold them. A backend whose
        instances have their own connections overrides this with eight instances."""
        return [store] * 8

    def test_concurrent_writers_lose_nothing(self, store, peer_stores):
        per_writer = 50

        def writer(n: int, peer: ClientStore) -> None:
            for i in range(per_writer):
                peer.add(make_client(f"t{n}-{i}", issued_at=i))

        assert run_threads(writer, list(enumerate(peer_stores))) == []
        writers = len(peer_stores)
        ids = [c.client_id for c in store.list()]
        assert len(ids) == writers * per_writer
        assert set(ids) == {f"t{n}-{i}" for n in range(writers) for i in range(per_writer)}
        assert len(store) == writers * per_writer
        assert store.get("t7-49") == make_client("t7-49", issued_at=49)

    def test_concurrent_adds_of_the_same_ids_store_each_once(self, store, peer_stores):
        ids = [f"same-{i}" for i in range(40)]
        outcomes: list[tuple[str, str]] = []

        def writer(n: int, peer: ClientStore) -> None:
            for i, client_id in enumerate(ids):
                try:
                    peer.add(make_client(client_id, issued_at=i, extra={"writer": n}))
                    outcomes.append((client_id, "added"))
                except ClientExists:
                    outcomes.append((client_id, "exists"))

        assert run_threads(writer, list(enumerate(peer_stores))) == []
        assert len(outcomes) == len(ids) * len(peer_stores)
        assert sorted(c for c, outcome in outcomes if outcome == "added") == sorted(ids)
        assert [c.client_id for c in store.list()] == ids

    # -- the token store beside the clients ------------------------------------------------

    def test_token_store_is_none_or_in_the_same_database(self, store):
        clock = FrozenClock(1_000_000)
        first, second = store.token_store(clock=clock), store.token_store(clock=clock)
        if first is None:  # this backend keeps no tokens: the extension finds them a home
            assert second is None
            return
        try:
            assert isinstance(first, TokenStore) and first.clock is clock
            first.save("tok", client_id="c1", scope="accounts", issued_at=0, expires_at=1_000_300)
            assert second.find("tok") == first.find("tok") is not None
        finally:
            first.close()
            second.close()

    # -- in the app ------------------------------------------------------------------------

    def test_registration_through_the_app(
        self, store, ob_app_factory, ob_directory, ob_software, ob_issuer, post_registration
    ):
        app = ob_app_factory(store=store)
        body = ob_directory.registration_request(ob_software, aud=ob_issuer)
        response = post_registration(body, software=ob_software, app=app)
        assert response.status_code == 201, response.get_json()
        data = response.get_json()
        stored = store.get(data["client_id"])
        assert stored is not None and stored.software_id == ob_software.software_id
        once = ("registration_access_token", "registration_client_uri")
        assert stored.to_response() == {k: v for k, v in data.items() if k not in once}


def run_threads(target, args_list) -> list[BaseException]:
    """Start one thread per args tuple at once; the exceptions they raised."""
    barrier = threading.Barrier(len(args_list))
    errors: list[BaseException] = []

    def run(*args):
        try:
            barrier.wait(timeout=10)
            target(*args)
        except BaseException as exc:  # noqa: BLE001 - reported to the caller
            errors.append(exc)

    threads = [threading.Thread(target=run, args=args) for args in args_list]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return errors


def run_forked(target, args_for, children: int = 4) -> tuple[list, list]:
    """Fork ``children`` processes running ``target(*args_for(n), barrier, results)``, all
    released at once: their outcomes (what each put on ``results``), sorted, and exit codes."""
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(children)
    results = ctx.Queue()
    processes = [
        ctx.Process(target=target, args=(*args_for(n), barrier, results)) for n in range(children)
    ]
    for process in processes:
        process.start()
    outcomes = sorted(results.get(timeout=60) for _ in processes)
    for process in processes:
        process.join(timeout=60)
    return outcomes, [process.exitcode for process in processes]


def run_forked_writers(store: ClientStore, *, children: int = 4, per_child: int = 25) -> list:
    """A pre-forking server: the parent has used ``store``, then forks writers that each add
    ``per_child`` clients through it. Each child's outcome, sorted."""
    outcomes, _ = run_forked(_forked_writer, lambda n: (store, n, per_child), children)
    return outcomes


def _forked_writer(store, n, per_child, barrier, results) -> None:
    """Runs in a child process: ``per_child`` adds through ``store`` (or through the store
    ``store()`` opens, when it is a factory), reporting the outcome."""
    try:
        store = store() if callable(store) else store
        barrier.wait(timeout=30)
        for i in range(per_child):
            store.add(make_client(f"p{n}-{i}", issued_at=i))
        results.put((n, "ok"))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        results.put((n, f"{type(exc).__name__}: {exc}"))


# -- the secret helpers ----------------------------------------------------------------------


def test_hash_secret_is_not_the_secret_and_is_stable():
    assert hash_secret(SECRET) == hash_secret(SECRET)
    assert hash_secret(SECRET) != hash_secret(SECRET + "x")
    assert hash_secret(SECRET).startswith("sha256:")
    assert len(hash_secret(SECRET)) == len("sha256:") + 64
    assert SECRET not in hash_secret(SECRET)


@pytest.mark.parametrize(
    ("secret", "secret_hash", "expected"),
    [
        pytest.param(SECRET, hash_secret(SECRET), True, id="right"),
        pytest.param(SECRET + "x", hash_secret(SECRET), False, id="wrong"),
        pytest.param(SECRET.upper(), hash_secret(SECRET), False, id="case"),
        pytest.param(None, hash_secret(SECRET), False, id="no-secret"),
        pytest.param("", hash_secret(""), False, id="empty-secret"),
        pytest.param(SECRET, None, False, id="no-hash"),
        pytest.param(SECRET, "", False, id="empty-hash"),
        pytest.param(hash_secret(SECRET), hash_secret(SECRET), False, id="hash-as-secret"),
    ],
)
def test_secret_matches(secret, secret_hash, expected):
    assert secret_matches(secret, secret_hash) is expected


def test_secret_matches_compares_in_constant_time(monkeypatch):
    calls = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    assert secret_matches(SECRET, hash_secret(SECRET)) is True
    assert calls == [(hash_secret(SECRET), hash_secret(SECRET))]


# -- the backends ----------------------------------------------------------------------------


class TestMemoryStore(ClientStoreContract):
    @pytest.fixture
    def store(self):
        return MemoryStore()


def _connection_id(store, results) -> None:
    results.put((id(store.db.conn), store.get("parent") == make_client("parent")))


class TestSQLiteStore(ClientStoreContract):
    @pytest.fixture
    def path(self, tmp_path):
        return tmp_path / "obdcr.db"

    @pytest.fixture
    def store(self, path):
        store = SQLiteStore(path)
        yield store
        store.close()

    def test_wal_journal_mode_is_on(self, store, path):
        store.add(make_client())
        conn = sqlite3.connect(path)
        try:
            assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        finally:
            conn.close()

    def test_database_is_created_in_a_missing_directory(self, tmp_path):
        path = tmp_path / "not" / "yet" / "there" / "obdcr.db"
        store = SQLiteStore(str(path))
        assert not path.parent.exists()
        store.add(make_client())
        assert path.is_file()
        assert SQLiteStore(path).get("client-1") == make_client()
        store.close()

    def test_two_instances_on_one_file_see_each_others_writes(self, store, path):
        other = SQLiteStore(path)
        store.add(make_client("from-a", issued_at=1))
        assert other.get("from-a") == make_client("from-a", issued_at=1)
        other.add(make_client("from-b", issued_at=2))
        assert store.get("from-b") == make_client("from-b", issued_at=2)
        with pytest.raises(ClientExists):
            other.add(make_client("from-a", issued_at=3))
        other.replace(make_client("from-a", issued_at=1, updated_at=7))
        assert store.get("from-a").updated_at == 7
        assert store.delete("from-b") is True
        assert other.get("from-b") is None
        assert [c.client_id for c in other.list()] == ["from-a"]
        other.close()

    def test_failed_add_leaves_the_row_count_unchanged(self, store, path):
        store.add(make_client("one", issued_at=1))
        store.add(make_client("two", issued_at=2))
        with pytest.raises(ClientExists):
            store.add(make_client("two", issued_at=3))
        conn = sqlite3.connect(path)
        try:
            assert conn.execute("SELECT count(*) FROM clients").fetchone() == (2,)
            rows = conn.execute(
                "SELECT client_id, client_id_issued_at FROM clients ORDER BY client_id"
            ).fetchall()
            assert rows == [("one", 1), ("two", 2)]
        finally:
            conn.close()

    def test_secrets_never_reach_the_file(self, store, path):
        store.add(make_client("sec"))
        store.close()
        data = b"".join(
            p.read_bytes() for p in path.parent.iterdir() if p.name.startswith(path.name)
        )
        assert hash_secret(SECRET).encode() in data  # what we looked at holds the record
        assert SECRET.encode() not in data
        assert TOKEN.encode() not in data

    @pytest.mark.parametrize(
        "parent_first",
        [
            # the parent has used the store (it holds an open connection) before forking,
            # as a pre-forking server does when the app touches the store at start-up
            pytest.param(True, id="fork-after-parent-used-it"),
            # the workers race to create the file, switch it to WAL and create the table
            pytest.param(False, id="fork-new-file"),
        ],
    )
    def test_several_processes_lose_nothing(self, store, path, parent_first):
        processes, per_process = 4, 50
        if parent_first:
            store.add(make_client("parent", issued_at=0))
        # the parent's own store, or one each child opens on the (perhaps new) file
        child_store = store if parent_first else functools.partial(SQLiteStore, os.fspath(path))
        outcomes, exit_codes = run_forked(
            _forked_writer, lambda n: (child_store, n, per_process), processes
        )
        assert outcomes == [(n, "ok") for n in range(processes)]
        assert exit_codes == [0] * processes
        expected = {f"p{n}-{i}" for n in range(processes) for i in range(per_process)}
        if parent_first:
            expected.add("parent")
        ids = [c.client_id for c in store.list()]
        assert len(ids) == len(expected)
        assert set(ids) == expected
        # the parent's connection still works after the children are gone
        store.add(make_client("after", issued_at=99))
        assert SQLiteStore(path).get("after") == make_client("after", issued_at=99)
        assert len(store) == len(expected) + 1

    def test_a_forked_child_opens_its_own_connection(self, store):
        store.add(make_client("parent"))
        inherited = id(store.db.conn)
        ctx = multiprocessing.get_context("fork")
        results = ctx.Queue()
        child = ctx.Process(target=_connection_id, args=(store, results))
        child.start()
        child_conn, child_sees_parent = results.get(timeout=30)
        child.join(timeout=30)
        assert child.exitcode == 0
        assert child_sees_parent is True
        assert child_conn != inherited
        assert id(store.db.conn) == inherited  # the parent keeps its own
