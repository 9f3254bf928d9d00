"""The ClientStore contract every storage backend fulfils.

Public methods check the invariants once, here; backends implement the ``_``-prefixed
primitives and must make each of them atomic (a failed write leaves nothing behind).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from .tokens import TokenStore

#: the OB data dictionary caps client_id at 36 characters (``\Z``, not ``$``: ``$`` would
#: also accept a trailing newline)
CLIENT_ID_RE = re.compile(r"^[A-Za-z0-9._~-]{1,36}\Z")


class StoreError(Exception):
    """Base of storage errors."""


class ClientExists(StoreError):
    """``add`` of a client_id that is already stored."""


class ClientNotFound(StoreError):
    """``replace`` of a client_id that is not stored."""


def hash_secret(secret: str) -> str:
    """Hash of a server-generated secret (client secret, registration access token).

    The secrets we hash are 216+ random bits, so a fast hash is as strong as a slow KDF
    here and keeps token-endpoint authentication cheap.
    """
    return "sha256:" + hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(secret: str | None, secret_hash: str | None) -> bool:
    """Constant-time comparison of a presented secret with a stored hash."""
    if not secret or not secret_hash:
        return False
    return hmac.compare_digest(hash_secret(secret), secret_hash)


@dataclass(frozen=True)
class StoredClient:
    """A registered client: what the TPP registered, the SSA claims, hashed secrets.

    ``metadata`` holds the validated registration metadata (``redirect_uris``,
    ``token_endpoint_auth_method``, ``software_statement``...) and the registration
    request's own ``iss``/``iat``/``exp``/``aud``/``jti``; ``ssa_claims`` holds every claim
    of the software statement (PingFederate's "extended client metadata").
    """

    client_id: str
    client_id_issued_at: int
    metadata: Mapping[str, Any]
    ssa_claims: Mapping[str, Any]
    client_secret_hash: str | None = None
    registration_access_token_hash: str | None = None
    updated_at: int | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def software_id(self) -> str | None:
        return self.ssa_claims.get("software_id")

    @property
    def org_id(self) -> str | None:
        return self.ssa_claims.get("org_id")

    @property
    def token_endpoint_auth_method(self) -> str | None:
        return self.metadata.get("token_endpoint_auth_method")

    def check_client_secret(self, secret: str | None) -> bool:
        return secret_matches(secret, self.client_secret_hash)

    def to_response(self) -> dict[str, Any]:
        """The OB registration response (OpenAPI ``OBClientRegistration1``): every SSA claim
        flattened to the top level, then the registered metadata, which wins on a clash,
        then the server-assigned values.

        The metadata holds the registration request's own ``iss`` (the software_id),
        ``iat``, ``exp``, ``aud`` and ``jti``, as the last POST or PUT sent them: the OpenAPI
        requires those five, and the SSA's registered claims of the same names (its
        ``iss: "OpenBanking Ltd"``, its jti and iat) describe the statement, not this
        request, so they must never win. A client stored before the request claims were
        kept has none in its metadata and answers with the SSA's until its next PUT.
        """
        body: dict[str, Any] = dict(self.ssa_claims)
        body.update(self.metadata)  # the request's iss/iat/exp/aud/jti over the SSA's
        body["client_id"] = self.client_id
        body["client_id_issued_at"] = self.client_id_issued_at
        return body

    # mapping-style access to the response view, for templates and quick inspection
    def __getitem__(self, key: str) -> Any:
        return self.to_response()[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.to_response().get(key, default)

    def with_changes(self, **changes: Any) -> StoredClient:
        return replace(self, **changes)

    def to_record(self) -> dict[str, Any]:
        """A flat, JSON-friendly record for backends."""
        return {
            "client_id": self.client_id,
            "client_id_issued_at": self.client_id_issued_at,
            "software_id": self.software_id,
            "org_id": self.org_id,
            # key order kept: GET /register/<id> shows the claims in the order POST did
            "metadata": _COMPACT.encode(self.metadata),
            "ssa_claims": _COMPACT.encode(self.ssa_claims),
            "client_secret_hash": self.client_secret_hash,
            "registration_access_token_hash": self.registration_access_token_hash,
            "updated_at": self.updated_at,
            "extra": _COMPACT_SORTED.encode(self.extra),
        }

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> StoredClient:
        return cls(
            client_id=record["client_id"],
            client_id_issued_at=int(record["client_id_issued_at"]),
            metadata=_json(record["metadata"]),
            ssa_claims=_json(record["ssa_claims"]),
            client_secret_hash=record.get("client_secret_hash"),
            registration_access_token_hash=record.get("registration_access_token_hash"),
            updated_at=None if record.get("updated_at") is None else int(record["updated_at"]),
            extra=_json(record.get("extra") or "{}"),
        )


# One encoder each for every record: json.dumps with any option builds a new one per call.
# An encoder keeps no state between calls, so threads share them.
_COMPACT = json.JSONEncoder(separators=(",", ":"))
_COMPACT_SORTED = json.JSONEncoder(separators=(",", ":"), sort_keys=True)


def _json(value: Any) -> dict[str, Any]:
    return json.loads(value) if isinstance(value, str | bytes) else dict(value)


class ClientStore(ABC):
    """Where registered clients live: the contract every backend fulfils.

    The public methods check the invariants (a valid ``client_id``, a :class:`StoredClient`)
    once, here; a backend implements the ``_``-prefixed primitives, each atomic: a write that
    fails leaves nothing behind and raises, and the registrar turns the failure into a 503.
    ``tests/test_storage.py`` runs one contract test class against every backend.
    """

    #: True for a store whose clients live in this process only (MemoryStore): the access
    #: tokens may live there too, and the extension says nothing about it
    process_local: ClassVar[bool] = False

    def token_store(self, *, clock: Callable[[], float] = time.time) -> TokenStore | None:
        """The token store keeping access tokens beside these clients (the same database),
        with ``clock``; None when this backend keeps none (the extension then keeps them in
        Redis with ``OBDCR_REDIS_URL``, else in the process)."""
        return None

    def add(self, client: StoredClient) -> StoredClient:
        """Store a new client; :class:`ClientExists` if the id is taken."""
        self._check(client)
        self._add(client)
        return client

    def get(self, client_id: str) -> StoredClient | None:
        """The stored client, or None for an unknown or malformed id (never raises for one)."""
        if not isinstance(client_id, str) or not CLIENT_ID_RE.match(client_id):
            return None
        return self._get(client_id)

    def list(self) -> Iterator[StoredClient]:
        """Every stored client, in no promised order."""
        return iter(self._list())

    def replace(self, client: StoredClient) -> StoredClient:
        """Overwrite a stored client whole; :class:`ClientNotFound` if it is not there."""
        self._check(client)
        self._replace(client)
        return client

    def delete(self, client_id: str) -> bool:
        """Remove a client; True if it existed."""
        if not isinstance(client_id, str) or not CLIENT_ID_RE.match(client_id):
            return False
        return self._delete(client_id)

    def __len__(self) -> int:
        return sum(1 for _ in self._list())

    def __bool__(self) -> bool:
        # an empty store is still a store: `store or default` must not replace it
        return True

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections; the default has none."""

    @staticmethod
    def _check(client: StoredClient) -> None:
        if not isinstance(client, StoredClient):
            raise TypeError(f"expected a StoredClient, got {type(client).__name__}")
        if not isinstance(client.client_id, str) or not CLIENT_ID_RE.match(client.client_id):
            raise ValueError(f"invalid client_id {client.client_id!r}")

    @abstractmethod
    def _add(self, client: StoredClient) -> None: ...

    @abstractmethod
    def _get(self, client_id: str) -> StoredClient | None: ...

    @abstractmethod
    def _list(self) -> Iterator[StoredClient]: ...

    @abstractmethod
    def _replace(self, client: StoredClient) -> None: ...

    @abstractmethod
    def _delete(self, client_id: str) -> bool: ...
