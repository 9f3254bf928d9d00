"""LDAPStore against a private OpenLDAP server (Debian's slapd, see ldap_server.py).

The server is started once for the session on a free loopback port and stopped at the end;
every test works in an OU of its own below the suffix, so tests never see each other's
entries. Without slapd (or ldap3) these tests are skipped, except in CI (``CI`` set), where
they fail.
"""

from __future__ import annotations

import json
import os
import uuid

import pytest

try:  # the store module first: it imports ldap3 without pyasn1's deprecation warnings
    from flask_obdcr.storage import ldap as ldap_store
except ImportError:  # pragma: no cover - depends on the environment
    if os.environ.get("CI"):
        raise ImportError("ldap3 is required in CI: pip install -e '.[test]'") from None
    pytest.skip("ldap3 is not installed: pip install 'flask-obdcr[ldap]'", allow_module_level=True)

from ldap3.core.exceptions import LDAPSocketReceiveError
from ldap_server import Slapd, SlapdNotFound, free_port
from test_storage import ClientStoreContract, make_client, run_forked_writers, run_threads

from flask_obdcr.storage import ClientExists, ClientNotFound, StoreError
from flask_obdcr.storage.ldap import (
    ATTRIBUTE_TYPES,
    OBJECT_CLASS,
    OID_ARC,
    LDAPStore,
    openldap_schema_ldif,
    subschema_ldif,
)

ldap3 = ldap_store.ldap3

# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def slapd():
    try:
        server = Slapd()
    except SlapdNotFound as exc:
        if os.environ.get("CI"):
            pytest.fail(f"{exc}. The LDAP tests need it in CI (.ci/run installs it).")
        pytest.skip(str(exc))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def admin(slapd):
    """A rootdn connection for setting up and looking behind the store's back (one per
    test: a test may restart the server)."""
    conn = ldap3.Connection(
        ldap3.Server(slapd.url, get_info=ldap3.NONE),
        slapd.root_dn,
        slapd.root_password,
        auto_bind=True,
        raise_exceptions=True,
    )
    yield conn
    conn.unbind()


@pytest.fixture
def base_dn(slapd, admin) -> str:
    """An OU of this test's own."""
    dn = f"ou=t-{uuid.uuid4().hex[:12]},{slapd.suffix}"
    admin.add(dn, ["organizationalUnit"])
    return dn


@pytest.fixture
def store_factory(slapd, base_dn):
    """Store objects over this test's OU, bound as the service account (not the rootdn).
    Each has its own connections, as separate server processes would."""
    made: list[LDAPStore] = []

    def make(**kw) -> LDAPStore:
        kw.setdefault("bind_dn", slapd.service_dn)
        kw.setdefault("password", slapd.service_password)
        kw.setdefault("base_dn", base_dn)
        store = LDAPStore(kw.pop("url", slapd.url), **kw)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


def entry(admin, dn: str) -> dict[str, list[bytes]] | None:
    """The raw attributes of an entry, as the directory holds them."""
    try:
        admin.search(dn, "(objectClass=*)", ldap3.BASE, attributes=["*"])
    except ldap3.core.exceptions.LDAPNoSuchObjectResult:
        return None
    return {name: list(values) for name, values in admin.response[0]["raw_attributes"].items()}


# -- the contract --------------------------------------------------------------------------


class TestLDAPStore(ClientStoreContract):
    """The contract on OpenLDAP, then what only a directory server can show."""

    @pytest.fixture
    def peer_stores(self, store_factory):
        """Eight stores with their own connections, as eight processes would have."""
        return [store_factory() for _ in range(8)]

    @pytest.fixture
    def store(self, store_factory):
        return store_factory()

    # -- the entries -----------------------------------------------------------------------

    def test_entry_layout(self, store, admin, base_dn):
        client = make_client("layout", updated_at=1_700_000_100)
        store.add(client)
        dn = f"obdcrClientId=layout,{base_dn}"
        assert store.dn_of("layout") == dn
        record = client.to_record()
        assert entry(admin, dn) == {
            "objectClass": [b"top", b"obdcrClient"],
            "obdcrClientId": [b"layout"],
            "obdcrClientIdIssuedAt": [b"1700000000"],
            "obdcrSoftwareId": [b"sw-layout"],
            "obdcrOrgId": [b"0015800001041REAAY"],
            "obdcrMetadata": [record["metadata"].encode()],
            "obdcrSsaClaims": [record["ssa_claims"].encode()],
            "obdcrClientSecretHash": [record["client_secret_hash"].encode()],
            "obdcrRegistrationAccessTokenHash": [record["registration_access_token_hash"].encode()],
            "obdcrUpdatedAt": [b"1700000100"],
            "obdcrExtra": [record["extra"].encode()],
        }

    def test_replace_removes_attributes_that_became_none(self, store, admin, base_dn):
        store.add(make_client("c", updated_at=5))
        store.replace(
            make_client(
                "c", client_secret_hash=None, registration_access_token_hash=None, ssa_claims={}
            )
        )
        stored = entry(admin, f"obdcrClientId=c,{base_dn}")
        absent = {
            "obdcrClientSecretHash",
            "obdcrRegistrationAccessTokenHash",
            "obdcrUpdatedAt",
            "obdcrSoftwareId",
            "obdcrOrgId",
        }
        assert absent.isdisjoint(stored)
        assert stored["obdcrSsaClaims"] == [b"{}"]
        assert store.get("c") == make_client(
            "c", client_secret_hash=None, registration_access_token_hash=None, ssa_claims={}
        )

    def test_ids_differing_in_case_are_different_clients(self, store):
        store.add(make_client("abc", issued_at=1))
        store.add(make_client("ABC", issued_at=2))
        assert store.get("abc") == make_client("abc", issued_at=1)
        assert store.get("ABC") == make_client("ABC", issued_at=2)
        assert store.delete("ABC") is True
        assert [c.client_id for c in store.list()] == ["abc"]

    def test_awkward_values_round_trip(self, store, admin, base_dn):
        software_id = "sw-caf\u00e9 \u6771\u4eac\n\tsecond line \U0001f3e6 "
        awkward = make_client(
            "awkward",
            metadata={
                "client_name": "line one\nline two\r\n\u00fcml\u00e4ut \u20ac \U0001f3e6",
                "nul": "a\u0000b",
                "lone_surrogate": "\udc80",
                "leading": '  spaces and # and , + = < > ; \\ "',
                "big": 2**62,
                "float": 0.1,
                "nested": {"z": [1, {"y": None}], "a": True},
                "long": "x" * 1_000_000,
            },
            ssa_claims={"software_id": software_id, "org_id": " org\u0000id ", "k": "\u00e9"},
            extra={"\u00e9": ["\n"]},
        )
        store.add(awkward)
        assert store.get("awkward") == awkward
        stored = entry(admin, f"obdcrClientId=awkward,{base_dn}")
        assert stored["obdcrSoftwareId"] == [software_id.encode()]
        assert stored["obdcrOrgId"] == [" org\u0000id ".encode()]
        assert len(stored["obdcrMetadata"][0]) > 1_000_000
        # the copy is searchable
        admin.search(base_dn, "(obdcrSoftwareId=*second line*)", ldap3.LEVEL, attributes=["1.1"])
        assert [item["dn"] for item in admin.response] == [store.dn_of("awkward")]
        replaced = awkward.with_changes(metadata={"client_name": "\u00e9\n" * 10_000})
        store.replace(replaced)
        assert store.get("awkward") == replaced

    def test_derived_copies_that_ldap_cannot_hold_are_left_out(self, store, admin, base_dn):
        """LDAP has no empty strings: the searchable copies are omitted, the claims kept."""
        odd = make_client("odd", ssa_claims={"software_id": "", "org_id": 42})
        store.add(odd)
        assert store.get("odd") == odd
        stored = entry(admin, f"obdcrClientId=odd,{base_dn}")
        assert {"obdcrSoftwareId", "obdcrOrgId"}.isdisjoint(stored)

    # -- failed writes -------------------------------------------------------------------------

    def test_add_refused_by_the_schema_leaves_nothing(self, store, admin, base_dn):
        # the hashes are IA5 (ASCII) strings: the server refuses the whole entry
        with pytest.raises(StoreError, match=r"invalidAttributeSyntax \(21\)"):
            store.add(make_client("refused", client_secret_hash="sha256:\u00e9"))
        assert store.get("refused") is None
        assert entry(admin, f"obdcrClientId=refused,{base_dn}") is None
        assert len(store) == 0
        store.add(make_client("after"))  # the connection is still good
        assert [c.client_id for c in store.list()] == ["after"]

    def test_replace_refused_by_the_schema_changes_nothing(self, store, admin, base_dn):
        store.add(make_client("kept"))
        before = entry(admin, f"obdcrClientId=kept,{base_dn}")
        bad = make_client(
            "kept",
            metadata={"scope": "openid"},  # would be replaced first...
            updated_at=9,
            registration_access_token_hash="sha256:\u00e9",  # ...but this one is refused
        )
        with pytest.raises(StoreError, match="invalidAttributeSyntax"):
            store.replace(bad)
        assert entry(admin, f"obdcrClientId=kept,{base_dn}") == before
        assert store.get("kept") == make_client("kept")

    def test_an_unknown_attribute_type_refuses_the_whole_add(self, store, admin, base_dn):
        """A directory with an older schema (here: no such attribute type) refuses the entry
        whole: an LDAP add is atomic."""
        dn = f"obdcrClientId=partial,{base_dn}"
        with pytest.raises(ldap3.core.exceptions.LDAPUndefinedAttributeTypeResult):
            admin.add(
                dn,
                ["top", "obdcrClient"],
                {
                    "obdcrClientId": "partial",
                    "obdcrClientIdIssuedAt": "1",
                    "obdcrMetadata": "{}",
                    "obdcrSsaClaims": "{}",
                    "obdcrFutureAttribute": "x",
                },
            )
        assert entry(admin, dn) is None
        assert store.get("partial") is None

    def test_non_integer_times_are_refused_before_sending(self, store):
        with pytest.raises(ValueError, match="client_id_issued_at"):
            store.add(make_client("t", issued_at="1700000000"))
        store.add(make_client("t"))
        with pytest.raises(ValueError, match="updated_at"):
            store.replace(make_client("t", updated_at=1.5))
        assert store.get("t") == make_client("t")

    def test_request_over_the_servers_size_limit_fails_and_stores_nothing(self, store):
        # slapd drops a connection whose request exceeds sockbuf_max_incoming_auth (4 MiB)
        huge = make_client("huge", metadata={"blob": "x" * (5 * 1024 * 1024)})
        with pytest.raises(StoreError, match="lost the connection"):
            store.add(huge)
        assert store.get("huge") is None
        store.add(make_client("small"))
        assert len(store) == 1

    def test_missing_base_dn_is_reported(self, store_factory, slapd):
        store = store_factory(base_dn=f"ou=missing-{uuid.uuid4().hex[:8]},{slapd.suffix}")
        assert store.get("anyone") is None
        assert store.delete("anyone") is False
        with pytest.raises(StoreError, match="base DN .* does not exist"):
            store.add(make_client())
        with pytest.raises(StoreError, match="base DN .* does not exist"):
            list(store.list())
        with pytest.raises(ClientNotFound):
            store.replace(make_client())

    # -- connections -----------------------------------------------------------------------

    def test_reconnects_after_a_server_restart(self, store, slapd):
        store.add(make_client("before", issued_at=1))
        slapd.restart()  # every pooled connection is now dead
        assert store.get("before") == make_client("before", issued_at=1)
        slapd.restart()
        store.add(make_client("after", issued_at=2))  # a write is retried on a new connection
        slapd.restart()
        store.replace(make_client("after", issued_at=2, updated_at=3))
        slapd.restart()
        assert store.delete("before") is True
        assert [c.client_id for c in store.list()] == ["after"]

    @pytest.mark.parametrize(
        ("applied", "meanwhile", "outcome"),
        [
            pytest.param(True, None, "added", id="applied-then-lost"),
            pytest.param(False, None, "added", id="lost-before-applied"),
            pytest.param(False, "other", "exists", id="lost-and-taken-meanwhile"),
        ],
    )
    def test_add_whose_response_was_lost(self, store, monkeypatch, applied, meanwhile, outcome):
        """The connection dies after sending the add: the store retries on a new connection,
        and finding its own client there is success, finding another one is ClientExists."""
        mine = make_client("lost", issued_at=1)
        other = make_client("lost", issued_at=2)
        take = store._take
        failed = []

        def take_then_lose_the_response():
            conn = take()
            if not failed:
                real_add = conn.add

                def add(*args, **kw):
                    failed.append(True)
                    if applied:
                        real_add(*args, **kw)
                    if meanwhile:
                        LDAPStore._add(store, other)
                    raise LDAPSocketReceiveError("connection reset by peer")

                conn.add = add
            return conn

        monkeypatch.setattr(store, "_take", take_then_lose_the_response)
        if outcome == "added":
            store.add(mine)
            assert store.get("lost") == mine
        else:
            with pytest.raises(ClientExists):
                store.add(mine)
            assert store.get("lost") == other
        assert failed == [True]

    def test_unreachable_server(self, store_factory):
        store = store_factory(url=f"ldap://127.0.0.1:{free_port()}", timeout=2)
        with pytest.raises(StoreError, match="cannot reach ldap://127.0.0.1"):
            store.get("anyone")

    def test_wrong_password(self, store_factory, slapd):
        store = store_factory(password="not-the-password")
        with pytest.raises(StoreError, match=r"invalidCredentials \(49\)") as raised:
            store.add(make_client())
        assert slapd.service_dn in str(raised.value)
        assert "not-the-password" not in str(raised.value)
        assert "not-the-password" not in repr(store)

    def test_connections_are_pooled_and_closed(self, store_factory, slapd):
        store = store_factory(max_idle=2)
        errors = run_threads(
            lambda n: [store.add(make_client(f"p{n}-{i}", issued_at=i)) for i in range(5)],
            [(n,) for n in range(6)],
        )
        assert errors == []
        assert len(store._idle) == 2  # at most max_idle kept
        store.close()
        assert store._idle == []
        assert len(store) == 30  # a closed store opens new connections

    # -- size limits and paging ------------------------------------------------------------

    def test_listing_more_entries_than_the_size_limit_pages(self, store_factory, admin, base_dn):
        """The service account is under slapd's size limit (500): paged searches see every
        entry; an unpaged one fails rather than silently truncating the list."""
        for i in range(520):
            admin.add(
                f"obdcrClientId=bulk-{i:04d},{base_dn}",
                ["top", "obdcrClient"],
                {
                    "obdcrClientId": f"bulk-{i:04d}",
                    "obdcrClientIdIssuedAt": str(1000 - i),
                    "obdcrMetadata": "{}",
                    "obdcrSsaClaims": "{}",
                },
            )
        store = store_factory(page_size=100)
        listed = [c.client_id for c in store.list()]
        assert listed == [f"bulk-{i:04d}" for i in reversed(range(520))]
        assert len(store) == 520
        assert store.get("bulk-0007").extra == {}
        unpaged = store_factory(page_size=0)
        with pytest.raises(StoreError, match=r"sizeLimitExceeded \(4\)"):
            list(unpaged.list())

    # -- several processes -----------------------------------------------------------------

    def test_forked_processes_get_their_own_connections(self, store):
        """A pre-forking server: the parent used the store, then forks its workers."""
        store.add(make_client("parent", issued_at=0))
        assert run_forked_writers(store) == [(n, "ok") for n in range(4)]
        assert len(store) == 4 * 25 + 1
        store.add(make_client("after", issued_at=99))  # the parent's connections still work
        assert store.get("after") == make_client("after", issued_at=99)


class TestLDAPStoreAsRootDN(ClientStoreContract):
    """The contract once more bound as the rootdn (no ACLs, no limits), without paging."""

    @pytest.fixture
    def store(self, store_factory, slapd):
        return store_factory(bind_dn=slapd.root_dn, password=slapd.root_password, page_size=0)


# -- configuration and schema --------------------------------------------------------------


@pytest.mark.parametrize("bad", ["", "   ", "not a dn", "ou=x,,dc=y", None])
def test_base_dn_is_checked(bad):
    with pytest.raises(ValueError, match="base_dn"):
        LDAPStore("ldap://127.0.0.1:1", bind_dn="cn=x", password="p", base_dn=bad)


def test_tls_is_verified_by_default():
    import ssl

    store = LDAPStore("ldaps://ldap.example:636", bind_dn="cn=x", password="p", base_dn="dc=x")
    assert store.server.ssl is True
    assert store.server.tls.validate == ssl.CERT_REQUIRED
    start_tls = LDAPStore(
        "ldap://ldap.example", bind_dn="cn=x", password="p", base_dn="dc=x", start_tls=True
    )
    assert start_tls.server.tls.validate == ssl.CERT_REQUIRED


def test_repr_names_the_server_not_the_password():
    store = LDAPStore("ldap://ldap.example:389", bind_dn="cn=x", password="hunter2", base_dn="dc=x")
    assert repr(store) == "LDAPStore('ldap://ldap.example:389', base_dn='dc=x')"


def test_the_server_holds_the_documented_schema(slapd, admin):
    admin.search("cn=Subschema", "(objectClass=subschema)", ldap3.BASE,
                 attributes=["attributeTypes", "objectClasses"])  # fmt: skip
    held = admin.response[0]["attributes"]
    by_oid = {value.split()[1]: " ".join(value.split()) for value in held["attributeTypes"]}
    for definition in ATTRIBUTE_TYPES:
        oid = definition.split()[1]
        assert oid.startswith(OID_ARC + ".1.")
        assert f"NAME '{definition.split()[3][1:-1]}'" in by_oid[oid]
    classes = [value for value in held["objectClasses"] if f"( {OID_ARC}.2.1 " in value]
    assert len(classes) == 1 and "STRUCTURAL" in classes[0]
    assert (
        "MUST ( obdcrClientId $ obdcrClientIdIssuedAt $ obdcrMetadata $ obdcrSsaClaims )"
        in (classes[0])
    )


def test_schema_ldif_with_a_banks_own_arc():
    ldif = openldap_schema_ldif("1.3.6.1.4.1.55555.7")
    assert OID_ARC not in ldif
    assert ldif.count("( 1.3.6.1.4.1.55555.7.1.") == len(ATTRIBUTE_TYPES)
    assert "olcObjectClasses: ( 1.3.6.1.4.1.55555.7.2.1 NAME 'obdcrClient'" in ldif
    modify = subschema_ldif("1.3.6.1.4.1.55555.7")
    assert modify.startswith("dn: cn=schema\nchangetype: modify\nadd: attributeTypes\n")
    assert "objectClasses: ( 1.3.6.1.4.1.55555.7.2.1 NAME 'obdcrClient'" in modify
    assert OBJECT_CLASS.startswith(f"( {OID_ARC}.2.1 NAME 'obdcrClient'")
    with pytest.raises(ValueError, match="oid_arc"):
        openldap_schema_ldif("1.3.6.1.4.1.x")


def test_round_trip_through_ldif_on_the_command_line(slapd, store_factory):
    """What an operator sees with ldapsearch (ldap-utils): JSON text, base64 when needed."""
    import shutil
    import subprocess

    ldapsearch = shutil.which("ldapsearch")
    if ldapsearch is None:
        if os.environ.get("CI"):
            pytest.fail("ldapsearch (ldap-utils) is required in CI")
        pytest.skip("ldapsearch (ldap-utils) is not installed")
    store = store_factory()
    store.add(make_client("cli", metadata={"scope": "openid"}))
    done = subprocess.run(
        [ldapsearch, "-LLL", "-x", "-H", slapd.url, "-D", slapd.service_dn,
         "-w", slapd.service_password, "-b", store.dn_of("cli"), "-s", "base",
         "obdcrMetadata", "obdcrClientIdIssuedAt"],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    assert done.stdout.splitlines() == [
        f"dn: {store.dn_of('cli')}",
        "obdcrClientIdIssuedAt: 1700000000",
        'obdcrMetadata: {"scope":"openid"}',
        "",
    ]
    assert json.loads(done.stdout.splitlines()[2].split(": ", 1)[1]) == {"scope": "openid"}
