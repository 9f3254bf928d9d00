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
        if isinstance(key, x509.Certificate):
            return _pyca_thumbprint(key)
        return key.thumbprint()
    except (JWException, ValueError, TypeError):
        return None


@functools.lru_cache(maxsize=256)
def _pyca_thumbprint(certificate: x509.Certificate) -> str:
    return jwk.JWK.from_pyca(certificate.public_key()).thumbprint()


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
                document = self.jwks.document(endpoint)
            except JWKSError as exc:
                self._unknown(endpoint, exc)
                continue
            found = _match(document, endpoint, kid, thumbprint)
            if found is not None:
                return found
        return None

    def _unknown(self, endpoint: str, exc: Exception) -> None:
        if self.mode == "require":
            raise TemporarilyUnavailable(
                "The revoked keys of the software cannot be checked right now; retry later.",
                detail=f"revoked key set {endpoint}: {exc}",
            )
        log.warning("revoked key set %s unavailable, going on (prefer): %s", endpoint, exc)


def _match(
    document: Mapping[str, Any], endpoint: str, kid: str | None, thumbprint: str | None
) -> RevokedKey | None:
    for member in document.get("keys") or ():
        if not isinstance(member, Mapping):
            continue
        member_kid = member.get("kid") if isinstance(member.get("kid"), str) else None
        if kid is not None and member_kid == kid:
            return RevokedKey(endpoint, member_kid)
        if thumbprint is not None:
            public = {k: v for k, v in member.items() if k in _PUBLIC_MEMBERS}
            if _member_thumbprint(json.dumps(public, sort_keys=True)) == thumbprint:
                return RevokedKey(endpoint, member_kid)
    return None


# the members RFC 7638 thumbprints are made of (per kty), nothing else
_PUBLIC_MEMBERS = frozenset({"kty", "n", "e", "crv", "x", "y"})
