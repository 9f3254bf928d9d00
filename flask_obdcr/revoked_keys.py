"""Signing and transport keys the Directory has revoked (docs/architecture.md, "Contract:
revocation").

An SSA names two revoked key sets, ``software_jwks_revoked_endpoint`` and
``org_jwks_revoked_endpoint``. A key listed in either (by ``kid``, or as the same public key)
verifies nothing of that software any more: not a registration request, not a client assertion,
and a transport certificate carrying it is no longer the software's. The sets are fetched under
the same rules as the software JWKS (https, allowed hosts, size and time caps) and cached with
it; a set that cannot be had, with nothing usable cached, is "status unknown": refused with
``OBDCR_REVOCATION="require"``, logged and let through with ``"prefer"``; ``"off"`` fetches
none. Protocol core: no Flask.
"""

from __future__ import annotations

import functools
import json
import threading
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from jwcrypto import jwk
from jwcrypto.common import JWException

from .errors import TemporarilyUnavailable
from .jwks import JWKSClient, JWKSError
from .log import get_logger

__all__ = ["RevokedKey", "RevokedKeys", "key_thumbprint", "REVOKED_ENDPOINT_CLAIMS"]

log = get_logger()

#: the SSA claims naming revoked key sets (OB Directory SSA claim set)
REVOKED_ENDPOINT_CLAIMS = ("software_jwks_revoked_endpoint", "org_jwks_revoked_endpoint")


@dataclass(frozen=True)
class RevokedKey:
    """Where a key was found revoked, for the log and the refusal's detail."""

    endpoint: str
    kid: str | None

    def __str__(self) -> str:
        return f"kid {self.kid!r} listed in {self.endpoint}"


def key_thumbprint(key: jwk.JWK | x509.Certificate) -> str | None:
    """RFC 7638 thumbprint of a JWK or of a certificate's public key; None if it has none."""
    try:
        return _memoised_thumbprint(key)
    except (JWException, ValueError, TypeError):
        return None


# The keys that verify assertions are the JWKS cache's own objects, and a TPP's certificate is
# the certificate loader's cached object: the same on every request of a client. Thumbprints are
# kept by object identity (hashing a certificate would hash its DER each time); holding the
# object keeps its id its own.
_THUMBPRINTS: OrderedDict[int, tuple[Any, str]] = OrderedDict()
_THUMBPRINTS_LOCK = threading.Lock()
_THUMBPRINTS_SIZE = 1024


def _memoised_thumbprint(key: jwk.JWK | x509.Certificate) -> str:
    with _THUMBPRINTS_LOCK:
        known = _THUMBPRINTS.get(id(key))
    if known is not None and known[0] is key:
        return known[1]
    if isinstance(key, x509.Certificate):
        thumbprint = jwk.JWK.from_pyca(key.public_key()).thumbprint()
    else:
        thumbprint = key.thumbprint()
    with _THUMBPRINTS_LOCK:
        _THUMBPRINTS[id(key)] = (key, thumbprint)
        _THUMBPRINTS.move_to_end(id(key))
        while len(_THUMBPRINTS) > _THUMBPRINTS_SIZE:
            _THUMBPRINTS.popitem(last=False)
    return thumbprint


@functools.lru_cache(maxsize=4096)
def _member_thumbprint(member: str) -> str | None:
    # keyed by the key's canonical JSON: a revoked set is re-read on every check
    try:
        return jwk.JWK(**json.loads(member)).thumbprint()
    except (JWException, ValueError, TypeError):
        return None


class RevokedKeys:
    """Looks keys up in the revoked key sets an SSA names."""

    def __init__(self, jwks: JWKSClient, *, mode: str = "require") -> None:
        if mode not in ("require", "prefer", "off"):
            raise ValueError(f"revocation mode {mode!r}")
        self.jwks = jwks
        self.mode = mode
        self._lock = threading.Lock()
        # id(document) -> (document, its kids, its thumbprints -> kid)
        self._indexes: OrderedDict[
            int, tuple[Mapping[str, Any], frozenset[str], dict[str, str | None]]
        ] = OrderedDict()

    def find(
        self,
        ssa_claims: Mapping[str, Any],
        *,
        kid: str | None = None,
        key: jwk.JWK | x509.Certificate | None = None,
        thumbprint: str | None = None,
    ) -> RevokedKey | None:
        """The revoked-set entry matching ``kid``, or the public key of ``key`` (or its RFC 7638
        ``thumbprint``), or None.

        Raises :class:`TemporarilyUnavailable` when a named set cannot be fetched and the mode
        is ``"require"``."""
        if self.mode == "off":
            return None
        if key is not None:
            thumbprint = key_thumbprint(key)
        if isinstance(key, jwk.JWK) and kid is None:
            kid = key.get("kid")
        for claim in REVOKED_ENDPOINT_CLAIMS:
            endpoint = ssa_claims.get(claim)
            if not isinstance(endpoint, str) or not endpoint:
                continue
            try:
                document = self.jwks.shared_document(endpoint)
            except JWKSError as exc:
                self._unknown(endpoint, exc)
                continue
            kids, thumbprints = self._index(document)
            if kid is not None and kid in kids:
                return RevokedKey(endpoint, kid)
            if thumbprint is not None and thumbprint in thumbprints:
                return RevokedKey(endpoint, thumbprints[thumbprint])
        return None

    def _index(self, document: Mapping[str, Any]) -> tuple[frozenset[str], dict[str, str | None]]:
        """The kids and thumbprints of a revoked set, worked out once per cached document
        (the JWKS cache hands out the same object until it refreshes the set)."""
        with self._lock:
            known = self._indexes.get(id(document))
        if known is not None and known[0] is document:
            return known[1], known[2]
        kids, thumbprints = _index(document)
        with self._lock:
            self._indexes[id(document)] = (document, kids, thumbprints)
            self._indexes.move_to_end(id(document))
            while len(self._indexes) > 256:
                self._indexes.popitem(last=False)
        return kids, thumbprints

    def _unknown(self, endpoint: str, exc: Exception) -> None:
        if self.mode == "require":
            raise TemporarilyUnavailable(
                "The revoked keys of the software cannot be checked right now; retry later.",
                detail=f"revoked key set {endpoint}: {exc}",
            )
        log.warning("revoked key set %s unavailable, going on (prefer): %s", endpoint, exc)


def _index(document: Mapping[str, Any]) -> tuple[frozenset[str], dict[str, str | None]]:
    kids: set[str] = set()
    thumbprints: dict[str, str | None] = {}
    for member in document.get("keys") or ():
        if not isinstance(member, Mapping):
            continue
        member_kid = member.get("kid") if isinstance(member.get("kid"), str) else None
        if member_kid is not None:
            kids.add(member_kid)
        public = {k: v for k, v in member.items() if k in _PUBLIC_MEMBERS}
        thumbprint = _member_thumbprint(json.dumps(public, sort_keys=True))
        if thumbprint is not None:
            thumbprints.setdefault(thumbprint, member_kid)
    return frozenset(kids), thumbprints


# the members RFC 7638 thumbprints are made of (per kty), nothing else
_PUBLIC_MEMBERS = frozenset({"kty", "n", "e", "crv", "x", "y"})
