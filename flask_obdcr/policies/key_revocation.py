"""Keys the Directory has revoked: the request's signing key and the transport certificate's."""

from __future__ import annotations

from ..errors import InvalidClient, InvalidClientMetadata
from .base import RegistrationContext


class KeyRevocation:
    """Neither the key that signed the request JWT nor the transport certificate's key is
    listed in the SSA's ``software_jwks_revoked_endpoint`` or ``org_jwks_revoked_endpoint``
    (docs/architecture.md, "Contract: revocation"). A set that cannot be fetched is status
    unknown: 503 with ``OBDCR_REVOCATION="require"``."""

    name = "key_revocation"
    clause = (
        'docs/architecture.md "Contract: revocation" (signing keys: the SSA\'s'
        " software_jwks_revoked_endpoint and org_jwks_revoked_endpoint); OB DCR v3.3"
        ' "Of JWS & JWKS"'
    )

    def __call__(self, context: RegistrationContext) -> None:
        revoked = context.revoked_keys
        if revoked is None:
            return
        kid = context.request_header.get("kid")
        found = revoked.find(
            context.ssa_claims,
            kid=kid if isinstance(kid, str) else None,
            key=context.request_key,
        )
        if found is not None:
            raise InvalidClientMetadata(
                "The request JWT is signed with a key the Directory has revoked.",
                detail=str(found),
            )
        certificate = context.certificate
        if certificate is not None:
            found = revoked.find(context.ssa_claims, key=certificate)
            if found is not None:
                raise InvalidClient(
                    "The client certificate's key has been revoked by the Directory.",
                    detail=str(found),
                )
