"""Verify the request JWT with the software's JWKS named by the (verified) SSA."""

from __future__ import annotations

from urllib.parse import urlsplit

from .. import jose
from ..errors import InvalidClientMetadata, InvalidSoftwareStatement
from ..jwks import JWKSError, KeyNotFound
from .base import RegistrationContext


class RequestSignature:
    """The request JWT verified with a key of the software JWKS the SSA names (fetched only
    from an allowed https host)."""

    name = "request_signature"
    clause = (
        'OB DCR v3.3 "Of JWS & JWKS" (the request is a JWS verified with the software\'s JWKS,'
        " served over TLS); RFC 7515 §5.2 (signature validation); docs/architecture.md"
        ' "Contract: errors" (software_jwks_endpoint https on an allowed host; signed with a'
        " key of the software JWKS)"
    )

    def __call__(self, context: RegistrationContext) -> None:
        endpoint = context.ssa_claims["software_jwks_endpoint"]
        parts = urlsplit(endpoint)
        host = (parts.hostname or "").lower()
        # checked here as well as in the fetcher: no request leaves for a host we do not trust
        if parts.scheme != "https" or host not in context.rules.fetch_allowed_hosts:
            raise InvalidSoftwareStatement(
                "The software_jwks_endpoint must be an https URL on an allowed host.",
                detail=f"software_jwks_endpoint {endpoint!r}",
            )
        alg = context.request_header["alg"]
        kid = context.request_header.get("kid")
        kid = kid if isinstance(kid, str) else None
        try:
            keys = context.jwks.candidate_keys(endpoint, kid=kid, alg=alg)
        except KeyNotFound:
            raise InvalidClientMetadata(
                "The request JWT is not signed with a key of the software JWKS.",
                detail=f"kid {kid!r} alg {alg} not in {endpoint}",
            ) from None
        except JWKSError as exc:
            raise InvalidSoftwareStatement(
                "The software JWKS cannot be fetched.", detail=str(exc)
            ) from None
        token: str | jose.CompactJWS = context.request_jwt
        decoded = context.request_jws
        if decoded is not None and decoded.token == token:
            token = decoded  # decoded once, by the request_jwt policy
        try:
            context.request_key = jose.verify(token, keys, alg)
        except (jose.BadSignature, jose.MalformedJWS):
            raise InvalidClientMetadata(
                "The request JWT is not signed with a key of the software JWKS.",
                detail=f"kid {kid!r} alg {alg}: no key of {endpoint} verifies the signature",
            ) from None
        context.software_jwks_endpoint = endpoint
