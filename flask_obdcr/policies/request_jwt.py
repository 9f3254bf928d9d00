"""Decode the registration request without trusting it, and take out its SSA."""

from __future__ import annotations

from .. import jose
from ..errors import InvalidClientMetadata, InvalidSoftwareStatement
from .base import RegistrationContext


class RequestJWT:
    """The request JWT decoded (not yet verified): an allowed alg, no key-bearing headers,
    and the software_statement claim taken out for the next policy."""

    name = "request_jwt"
    clause = (
        'OB DCR v3.3 "Of JWS & JWKS" (no key and no JWKS URL in the JOSE header); RFC 7515'
        " §4.1.1 (alg), §4.1.2 (jku), §4.1.3 (jwk), §4.1.5 (x5u), §4.1.6 (x5c); RFC 7591 §3.1.1"
        ' (software_statement in the request); docs/architecture.md "Contract: errors" (alg'
        " not allowed: none, HS*, RS256 unless configured)"
    )

    def __call__(self, context: RegistrationContext) -> None:
        try:
            decoded = jose.decode(context.request_jwt)
        except jose.MalformedJWS as exc:
            raise InvalidClientMetadata(
                "The request body is not a signed JWT.", detail=str(exc)
            ) from None
        header, claims, alg = decoded.header, decoded.claims, decoded.alg
        if alg not in context.rules.signing_algs:
            raise InvalidClientMetadata(
                f"The request JWT is signed with {alg!r}; accepted:"
                f" {', '.join(context.rules.signing_algs)}."
            )
        bearing = sorted(jose.KEY_BEARING_HEADERS & header.keys())
        if bearing:
            raise InvalidClientMetadata(
                "The request JWT header must not carry or point at keys"
                f" ({', '.join(bearing)}); keys come from the software JWKS."
            )
        context.request_header, context.request_claims = header, claims
        context.request_jws = decoded
        statement = claims.get("software_statement")
        if not isinstance(statement, str) or not statement:
            raise InvalidSoftwareStatement("The request has no software_statement.")
        context.software_statement = statement
