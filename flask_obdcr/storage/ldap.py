"""Registered clients as entries of an LDAP directory (OpenLDAP, PingDirectory, ...).

Install the ``ldap`` extra (ldap3)::

    pip install 'flask-obdcr[ldap]'

    store = LDAPStore(
        "ldaps://ldap.internal:636",
        bind_dn="cn=obdcr,ou=services,dc=anybank,dc=example",
        password=os.environ["OBDCR_LDAP_PASSWORD"],
        base_dn="ou=obdcr-clients,dc=anybank,dc=example",
    )

Each client is one entry ``obdcrClientId=<client_id>,<base_dn>`` of the structural object
class ``obdcrClient``; its attributes mirror :meth:`StoredClient.to_record` (the schema is in
:data:`ATTRIBUTE_TYPES` and :data:`OBJECT_CLASS`; :func:`openldap_schema_ldif` and
:func:`subschema_ldif` print it for loading). The server must know that schema and the base
DN must exist; the bind DN needs read and write access below the base DN.

Every write is one LDAP operation (add, modify with every attribute replaced, delete), which
the directory applies whole or not at all. Connections come from a small pool: each
operation takes one, so threads never share a socket; a connection that fails is dropped and
the operation is retried once on a new one. A forked child opens its own connections.
"""

from __future__ import annotations

import math
import os
import ssl
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

try:
    with warnings.catch_warnings():
        # ldap3 2.9.1 imports names that pyasn1 >= 0.6.1 deprecates; nothing a user can act on
        warnings.filterwarnings("ignore", r"(tagMap|typeMap) is deprecated", DeprecationWarning)
        import ldap3
    from ldap3.core.exceptions import (
        LDAPBindError,
        LDAPCommunicationError,
        LDAPResponseTimeoutError,
        LDAPStartTLSError,
    )
    from ldap3.utils.dn import escape_rdn, parse_dn
except ImportError as error:  # pragma: no cover - exercised only without the extra
    raise ImportError("LDAPStore needs ldap3: pip install 'flask-obdcr[ldap]'") from error

from .base import ClientExists, ClientNotFound, ClientStore, StoredClient, StoreError

_T = TypeVar("_T")

__all__ = [
    "ATTRIBUTE_TYPES",
    "ATTRIBUTES",
    "OBJECT_CLASS",
    "OID_ARC",
    "LDAPStore",
    "openldap_schema_ldif",
    "subschema_ldif",
]

# -- the schema ----------------------------------------------------------------------------

#: A PLACEHOLDER arc (enterprise number 99999 is not assigned to this project). A bank
#: loading the schema into its directory replaces it by an arc under its own IANA private
#: enterprise number; the names stay, and only the names are used by :class:`LDAPStore`.
OID_ARC = "1.3.6.1.4.1.99999.1"

_IA5 = "1.3.6.1.4.1.1466.115.121.1.26"  # IA5 String (ASCII)
_INTEGER = "1.3.6.1.4.1.1466.115.121.1.27"
_DIRECTORY_STRING = "1.3.6.1.4.1.1466.115.121.1.15"  # UTF-8

#: record field -> (LDAP attribute name, OID, definition after the name)
ATTRIBUTES: dict[str, tuple[str, str, str]] = {
    "client_id": (
        "obdcrClientId",
        f"{OID_ARC}.1.1",
        "DESC 'OB DCR client_id (the RDN)' EQUALITY caseExactIA5Match "
        f"SYNTAX {_IA5}{{36}} SINGLE-VALUE",
    ),
    "client_id_issued_at": (
        "obdcrClientIdIssuedAt",
        f"{OID_ARC}.1.2",
        "DESC 'client_id_issued_at, seconds since the epoch' EQUALITY integerMatch "
        f"ORDERING integerOrderingMatch SYNTAX {_INTEGER} SINGLE-VALUE",
    ),
    "software_id": (
        "obdcrSoftwareId",
        f"{OID_ARC}.1.3",
        "DESC 'software_id of the SSA (a copy, for searches)' EQUALITY caseExactMatch "
        f"SUBSTR caseExactSubstringsMatch SYNTAX {_DIRECTORY_STRING} SINGLE-VALUE",
    ),
    "org_id": (
        "obdcrOrgId",
        f"{OID_ARC}.1.4",
        "DESC 'org_id of the SSA (a copy, for searches)' EQUALITY caseExactMatch "
        f"SUBSTR caseExactSubstringsMatch SYNTAX {_DIRECTORY_STRING} SINGLE-VALUE",
    ),
    "metadata": (
        "obdcrMetadata",
        f"{OID_ARC}.1.5",
        f"DESC 'registered client metadata, JSON text' SYNTAX {_DIRECTORY_STRING} SINGLE-VALUE",
    ),
    "ssa_claims": (
        "obdcrSsaClaims",
        f"{OID_ARC}.1.6",
        f"DESC 'claims of the software statement, JSON text' SYNTAX {_DIRECTORY_STRING} "
        "SINGLE-VALUE",
    ),
    "client_secret_hash": (
        "obdcrClientSecretHash",
        f"{OID_ARC}.1.7",
        f"DESC 'hash of the client secret' EQUALITY caseExactIA5Match SYNTAX {_IA5} SINGLE-VALUE",
    ),
    "registration_access_token_hash": (
        "obdcrRegistrationAccessTokenHash",
        f"{OID_ARC}.1.8",
        "DESC 'hash of the registration access token' EQUALITY caseExactIA5Match "
        f"SYNTAX {_IA5} SINGLE-VALUE",
    ),
    "updated_at": (
        "obdcrUpdatedAt",
        f"{OID_ARC}.1.9",
        "DESC 'last update, seconds since the epoch' EQUALITY integerMatch "
        f"ORDERING integerOrderingMatch SYNTAX {_INTEGER} SINGLE-VALUE",
    ),
    "extra": (
        "obdcrExtra",
        f"{OID_ARC}.1.10",
        f"DESC 'deployment-specific data, JSON text' SYNTAX {_DIRECTORY_STRING} SINGLE-VALUE",
    ),
}

_MUST = ("client_id", "client_id_issued_at", "metadata", "ssa_claims")
_OBJECT_CLASS_NAME = "obdcrClient"

#: the attribute type definitions (RFC 4512), in ``attributeTypes`` value form
ATTRIBUTE_TYPES: tuple[str, ...] = tuple(
    f"( {oid} NAME '{name}' {definition} )" for name, oid, definition in ATTRIBUTES.values()
)

#: the object class definition (RFC 4512), in ``objectClasses`` value form
OBJECT_CLASS = (
    f"( {OID_ARC}.2.1 NAME '{_OBJECT_CLASS_NAME}' DESC 'an OB DCR registered client' "
    "SUP top STRUCTURAL "
    f"MUST ( {' $ '.join(ATTRIBUTES[f][0] for f in _MUST)} ) "
    f"MAY ( {' $ '.join(a[0] for f, a in ATTRIBUTES.items() if f not in _MUST)} "
    "$ description ) )"
)


def openldap_schema_ldif(oid_arc: str = OID_ARC) -> str:
    """The schema as an OpenLDAP ``cn=config`` entry, for ``ldapadd -Y EXTERNAL -H ldapi:///``
    (or ``slapadd -n0``). ``oid_arc`` replaces the placeholder arc."""
    lines = [
        "dn: cn=obdcr,cn=schema,cn=config",
        "objectClass: olcSchemaConfig",
        "cn: obdcr",
    ]
    lines += [f"olcAttributeTypes: {_rearc(value, oid_arc)}" for value in ATTRIBUTE_TYPES]
    lines.append(f"olcObjectClasses: {_rearc(OBJECT_CLASS, oid_arc)}")
    return "\n".join(lines) + "\n"


def subschema_ldif(oid_arc: str = OID_ARC, subschema_dn: str = "cn=schema") -> str:
    """The schema as an RFC 4512 subschema modification, for ``ldapmodify`` against servers
    that take schema changes over LDAP (PingDirectory, 389 Directory Server, ...), or, without
    the ``changetype`` lines, as a file in PingDirectory's ``config/schema`` directory."""
    lines = [f"dn: {subschema_dn}", "changetype: modify", "add: attributeTypes"]
    lines += [f"attributeTypes: {_rearc(value, oid_arc)}" for value in ATTRIBUTE_TYPES]
    lines += ["-", "add: objectClasses", f"objectClasses: {_rearc(OBJECT_CLASS, oid_arc)}", "-"]
    return "\n".join(lines) + "\n"


def _rearc(definition: str, oid_arc: str) -> str:
    if not oid_arc or not all(part.isdigit() for part in oid_arc.split(".")):
        raise ValueError(f"oid_arc must be a dotted OID, got {oid_arc!r}")
    return definition.replace(f"( {OID_ARC}.", f"( {oid_arc}.", 1)


# -- the store -----------------------------------------------------------------------------

_NAMES = {field: spec[0] for field, spec in ATTRIBUTES.items()}
_FIELDS = {spec[0].lower(): field for field, spec in ATTRIBUTES.items()}
_INTEGERS = ("client_id_issued_at", "updated_at")
_DERIVED = ("software_id", "org_id")  # copies of SSA claims, for searches only
_FETCH = list(_NAMES.values())
_FILTER = f"(objectClass={_OBJECT_CLASS_NAME})"

# result codes (RFC 4511)
_SUCCESS = 0
_NO_SUCH_OBJECT = 32
_ALREADY_EXISTS = 68
_PAGED_RESULTS = "1.2.840.113556.1.4.319"  # RFC 2696


class LDAPStore(ClientStore):
    """Registered clients as ``obdcrClient`` entries one level below ``base_dn``.

    ``server_url`` is an ``ldap://`` or ``ldaps://`` URL, or an :class:`ldap3.Server` or
    :class:`ldap3.ServerPool` (failover between replicas). ``bind_dn`` and ``password`` are
    used for a simple bind: off loopback use ``ldaps://`` or ``start_tls=True``. ``tls`` is an
    :class:`ldap3.Tls`; by default the server certificate is checked against the system CAs
    and its host name. ``timeout`` bounds connecting and waiting for each response (seconds;
    responses in whole seconds). :meth:`list` reads ``page_size`` entries per round trip
    (RFC 2696 paged results; 0 asks for all in one response, within the server's size
    limit). At most ``max_idle`` idle connections are kept for reuse.

    An operation whose connection fails is retried once on a new connection. A write whose
    response was lost may have been applied: a retried :meth:`add` that finds the very same
    client stored counts as done, and a retried :meth:`delete` may report False for the
    client it removed.
    """

    def __init__(
        self,
        server_url: str | ldap3.Server | ldap3.ServerPool,
        *,
        bind_dn: str,
        password: str,
        base_dn: str,
        tls: ldap3.Tls | None = None,
        start_tls: bool = False,
        timeout: float = 10.0,
        page_size: int = 500,
        max_idle: int = 8,
    ) -> None:
        if not isinstance(base_dn, str) or not base_dn.strip():
            raise ValueError("base_dn must be a DN such as 'ou=obdcr-clients,dc=bank,dc=example'")
        try:
            parse_dn(base_dn)
        except Exception as exc:  # ldap3 raises several types for a malformed DN
            raise ValueError(f"base_dn is not a valid DN: {base_dn!r}") from exc
        if page_size < 0 or max_idle < 0:
            raise ValueError("page_size and max_idle must not be negative")
        if isinstance(server_url, str):
            if tls is None and (server_url.lower().startswith("ldaps:") or start_tls):
                tls = ldap3.Tls(validate=ssl.CERT_REQUIRED)  # ldap3's own default checks nothing
            self.server: ldap3.Server | ldap3.ServerPool = ldap3.Server(
                server_url, tls=tls, connect_timeout=timeout, get_info=ldap3.NONE
            )
        elif tls is not None:
            raise TypeError("tls applies only when server_url is a URL; configure the Server")
        else:
            self.server = server_url
        self.bind_dn = bind_dn
        self._password = password
        self.base_dn = base_dn
        self.start_tls = start_tls
        self.timeout = timeout
        self.page_size = page_size
        self.max_idle = max_idle
        self._idle: list[ldap3.Connection] = []
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({_describe(self.server)!r}, base_dn={self.base_dn!r})"

    def dn_of(self, client_id: str) -> str:
        """The DN of a client's entry."""
        return f"{_NAMES['client_id']}={escape_rdn(client_id)},{self.base_dn}"

    # -- connections ---------------------------------------------------------------------

    def _connect(self) -> ldap3.Connection:
        conn = ldap3.Connection(
            self.server,
            user=self.bind_dn,
            password=self._password,
            client_strategy=ldap3.SYNC,
            raise_exceptions=False,
            receive_timeout=max(1, math.ceil(self.timeout)),  # ldap3: whole seconds
            auto_referrals=False,
        )
        where = _describe(self.server)
        try:
            conn.open()
            if self.start_tls and not conn.start_tls():
                raise StoreError(f"StartTLS with {where} failed: {_result(conn)}")
            if not conn.bind():
                raise StoreError(f"bind as {self.bind_dn!r} to {where} failed: {_result(conn)}")
        except (LDAPCommunicationError, LDAPResponseTimeoutError, LDAPStartTLSError) as exc:
            _close_quietly(conn)
            raise StoreError(f"cannot reach {where}: {exc}") from exc
        except LDAPBindError as exc:
            _close_quietly(conn)
            raise StoreError(f"bind as {self.bind_dn!r} to {where} failed: {exc}") from exc
        except BaseException:
            _close_quietly(conn)
            raise
        return conn

    def _take(self) -> ldap3.Connection:
        with self._lock:
            if self._pid != os.getpid():
                # inherited through fork(): the parent's sockets are not ours to use or close
                self._idle = []
                self._pid = os.getpid()
            conn = self._idle.pop() if self._idle else None
        return conn if conn is not None else self._connect()

    def _give_back(self, conn: ldap3.Connection) -> None:
        with self._lock:
            if self._pid == os.getpid() and len(self._idle) < self.max_idle and not conn.closed:
                self._idle.append(conn)
                return
        _close_quietly(conn)

    def _run(self, operation: Callable[[ldap3.Connection, bool], _T]) -> _T:
        """``operation(conn, retried)`` on a pooled connection; once more on a new connection
        if that one fails (a server restart, an idle timeout, a load balancer's reset)."""
        for retried in (False, True):
            conn = self._take()
            try:
                result = operation(conn, retried)
            except (LDAPCommunicationError, LDAPResponseTimeoutError) as exc:
                _close_quietly(conn)
                if retried:
                    where = _describe(self.server)
                    raise StoreError(f"lost the connection to {where}: {exc}") from exc
                continue
            except BaseException:
                # a refused write or a failure of ours: the connection itself is fine
                self._give_back(conn)
                raise
            self._give_back(conn)
            return result
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        """Unbind the idle connections (the store opens new ones if it is used again)."""
        with self._lock:
            idle, self._idle = self._idle, []
            inherited = self._pid != os.getpid()
        if not inherited:
            for conn in idle:
                _close_quietly(conn)

    # -- records <-> entries -------------------------------------------------------------

    @staticmethod
    def _attributes(client: StoredClient) -> dict[str, list[bytes]]:
        """Every attribute of the client's entry; an absent value is an empty list."""
        record = client.to_record()
        attributes: dict[str, list[bytes]] = {}
        for field, name in _NAMES.items():
            value = record[field]
            if field in _DERIVED and not (isinstance(value, str) and value and _is_text(value)):
                value = None  # LDAP has no empty strings; from_record reads the SSA claims
            if value is None:
                attributes[name] = []
            elif field in _INTEGERS:
                if isinstance(value, bool) or not isinstance(value, int):
                    raise ValueError(f"{field} must be an integer, got {value!r}")
                attributes[name] = [str(value).encode()]
            else:
                attributes[name] = [value.encode("utf-8")]
        return attributes

    @staticmethod
    def _client(raw: Mapping[str, Sequence[bytes]]) -> StoredClient:
        record: dict[str, Any] = {}
        for name, values in raw.items():
            field = _FIELDS.get(name.split(";", 1)[0].lower())
            if field is not None and values:
                record[field] = values[0].decode("utf-8")
        for field in _INTEGERS:
            if field in record:
                record[field] = int(record[field])
        return StoredClient.from_record(record)

    # -- primitives ----------------------------------------------------------------------

    def _add(self, client: StoredClient) -> None:
        dn = self.dn_of(client.client_id)
        attributes = {name: values for name, values in self._attributes(client).items() if values}
        attributes["objectClass"] = [b"top", _OBJECT_CLASS_NAME.encode()]

        def add(conn: ldap3.Connection, retried: bool) -> None:
            if conn.add(dn, attributes=attributes):
                return
            code = conn.result["result"]
            if code == _ALREADY_EXISTS:
                if retried and self._get(client.client_id) == client:
                    return  # our first attempt got through before its connection failed
                raise ClientExists(client.client_id)
            if code == _NO_SUCH_OBJECT:
                raise StoreError(f"cannot add {dn!r}: the base DN {self.base_dn!r} does not exist")
            raise StoreError(f"add of {dn!r} refused: {_result(conn)}")

        self._run(add)

    def _get(self, client_id: str) -> StoredClient | None:
        dn = self.dn_of(client_id)

        def get(conn: ldap3.Connection, _retried: bool) -> StoredClient | None:
            found = conn.search(
                dn,
                _FILTER,
                search_scope=ldap3.BASE,
                dereference_aliases=ldap3.DEREF_NEVER,
                attributes=_FETCH,
            )
            if not found:
                if conn.result["result"] in (_SUCCESS, _NO_SUCH_OBJECT):
                    return None
                raise StoreError(f"read of {dn!r} failed: {_result(conn)}")
            entries = _entries(conn)
            return self._client(entries[0]) if entries else None

        return self._run(get)

    def _search_level(self, attributes: list[str]) -> list[Mapping[str, Sequence[bytes]]]:
        """The client entries one level below the base DN, ``page_size`` at a time."""

        def search(conn: ldap3.Connection, _retried: bool) -> list[Mapping[str, Sequence[bytes]]]:
            entries: list[Mapping[str, Sequence[bytes]]] = []
            cookie: bytes | None = None
            while True:
                conn.search(
                    self.base_dn,
                    _FILTER,
                    search_scope=ldap3.LEVEL,
                    dereference_aliases=ldap3.DEREF_NEVER,
                    attributes=attributes,
                    paged_size=self.page_size or None,
                    paged_cookie=cookie,
                )
                code = conn.result["result"]
                if code == _NO_SUCH_OBJECT:
                    raise StoreError(f"the base DN {self.base_dn!r} does not exist")
                if code != _SUCCESS:  # sizeLimitExceeded included: never a silent truncation
                    raise StoreError(f"search below {self.base_dn!r} failed: {_result(conn)}")
                entries.extend(_entries(conn))
                control = (conn.result.get("controls") or {}).get(_PAGED_RESULTS)
                cookie = control["value"]["cookie"] if control else None
                if not self.page_size or not cookie:
                    return entries

        return self._run(search)

    def _list(self) -> Iterator[StoredClient]:
        clients = [self._client(raw) for raw in self._search_level(_FETCH)]
        clients.sort(key=lambda client: (client.client_id_issued_at, client.client_id))
        return iter(clients)

    def __len__(self) -> int:
        return len(self._search_level([ldap3.NO_ATTRIBUTES]))

    def _replace(self, client: StoredClient) -> None:
        dn = self.dn_of(client.client_id)
        # every attribute in one modify: the directory applies all of them or none
        changes = {
            name: [(ldap3.MODIFY_REPLACE, values)]
            for name, values in self._attributes(client).items()
            if name != _NAMES["client_id"]
        }

        def modify(conn: ldap3.Connection, _retried: bool) -> None:
            if conn.modify(dn, changes):
                return
            if conn.result["result"] == _NO_SUCH_OBJECT:
                raise ClientNotFound(client.client_id)
            raise StoreError(f"modify of {dn!r} refused: {_result(conn)}")

        self._run(modify)

    def _delete(self, client_id: str) -> bool:
        dn = self.dn_of(client_id)

        def delete(conn: ldap3.Connection, _retried: bool) -> bool:
            if conn.delete(dn):
                return True
            if conn.result["result"] == _NO_SUCH_OBJECT:
                return False
            raise StoreError(f"delete of {dn!r} refused: {_result(conn)}")

        return self._run(delete)


# -- helpers -------------------------------------------------------------------------------


def _entries(conn: ldap3.Connection) -> list[Mapping[str, Sequence[bytes]]]:
    return [
        item["raw_attributes"] for item in conn.response or () if item["type"] == "searchResEntry"
    ]


def _is_text(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate
        return False
    return True


def _result(conn: ldap3.Connection) -> str:
    result = conn.result or {}
    text = f"{result.get('description')} ({result.get('result')})"
    return f"{text}: {result['message']}" if result.get("message") else text


def _describe(server: Any) -> str:
    if isinstance(server, ldap3.ServerPool):
        return ", ".join(_describe(member) for member in server.servers)
    return str(getattr(server, "name", server))


def _close_quietly(conn: ldap3.Connection) -> None:
    try:
        conn.unbind()
    except Exception:  # noqa: BLE001, S110 - a dead connection may refuse even the unbind
        pass
