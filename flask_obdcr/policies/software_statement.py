"""Verify the software statement with the JWKS of the Directory that issued it."""

from __future__ import annotations

from .. import jose
from ..errors import InvalidSoftwareStatement, TemporarilyUnavailable, UnapprovedSoftwareStatement
from ..jwks import JWKSError, JWKSUnavailable, KeyNotFound
from .base import RegistrationContext, numeric_date


def _int_claim(claims: dict, name: str) -> int | None:
    return numeric_date(claims.get(name))


class SoftwareStatement:
    """The SSA: from a trusted directory, signed with one of its keys, current, complete.

    Statements that verified are remembered (:class:`~flask_obdcr.jose.VerifiedTokens`): a
    TPP sends the same SSA with each registration, and the directory's key set changes
    rarely. Every claim is still checked on every request. ``remember=0`` decodes and
    verifies every time.
    """

    name = "software_statement"
    clause = (
        'OB DCR v3.3 "Software Statement" (a JWS from an issuer the ASPSP trusts) and "Of JWS'
        ' & JWKS"; RFC 7591 §2.3 (Software Statement) and §3.1.1; RFC 7515 §5.2 (signature'
        " validation); RFC 7519 §4.1.4 (exp), §4.1.6 (iat); docs/architecture.md"
        ' "Contract: errors" (untrusted issuer, org_status not Active, OBDCR_SSA_MAX_AGE)'
    )

    def __init__(self, *, remember: int = 1024) -> None:
        self.verified = jose.VerifiedTokens(remember)

    def __call__(self, context: RegistrationContext) -> None:
        settings = context.rules
        try:
            header, claims = self.verified.peek(context.software_statement)
        except jose.MalformedJWS as exc:
            raise InvalidSoftwareStatement(
                "The software_statement is not a signed JWT.", detail=str(exc)
            ) from None

        issuer = claims.get("iss")
        jwks_url = settings.trusted_directories.get(issuer) if isinstance(issuer, str) else None
        if jwks_url is None:
            raise UnapprovedSoftwareStatement(
                "The software statement was not issued by a directory this server trusts.",
                detail=f"SSA iss {issuer!r}",
            )
        alg = header["alg"]
        if alg not in settings.signing_algs:
            raise InvalidSoftwareStatement(
                f"The software statement is signed with {alg!r}; accepted:"
                f" {', '.join(settings.signing_algs)}."
            )
        if jose.KEY_BEARING_HEADERS & header.keys():
            raise InvalidSoftwareStatement(
                "The software statement header must not carry or point at keys."
            )

        kid = header.get("kid")
        kid = kid if isinstance(kid, str) else None
        try:
            keys = context.jwks.candidate_keys(jwks_url, kid=kid, alg=alg)
        except KeyNotFound:
            raise InvalidSoftwareStatement(
                "The software statement is signed with a key the directory does not publish.",
                detail=f"kid {kid!r} not in {jwks_url}",
            ) from None
        except JWKSUnavailable as exc:
            raise TemporarilyUnavailable(
                "The directory's keys cannot be fetched right now; retry later.",
                detail=str(exc),
            ) from None
        except JWKSError as exc:
            raise TemporarilyUnavailable(detail=str(exc)) from None
        try:
            self.verified.verify(context.software_statement, keys, alg)
        except (jose.BadSignature, jose.MalformedJWS):
            raise InvalidSoftwareStatement("The software statement signature is invalid.") from None

        now, skew = context.now, settings.clock_skew
        iat = _int_claim(claims, "iat")
        if iat is None:
            raise InvalidSoftwareStatement("The software statement has no iat.")
        if iat > now + skew:
            raise InvalidSoftwareStatement("The software statement iat is in the future.")
        if settings.ssa_max_age is not None and now - iat > settings.ssa_max_age + skew:
            raise InvalidSoftwareStatement(
                f"The software statement is older than {settings.ssa_max_age} seconds."
            )
        if "exp" in claims:
            exp = _int_claim(claims, "exp")
            if exp is None or now > exp + skew:
                raise InvalidSoftwareStatement("The software statement has expired.")
        software_id = claims.get("software_id")
        if not isinstance(software_id, str) or not software_id:
            raise InvalidSoftwareStatement("The software statement has no software_id.")
        for name in ("org_id", "software_jwks_endpoint"):
            if not isinstance(claims.get(name), str) or not claims[name]:
                raise InvalidSoftwareStatement(f"The software statement has no {name}.")
        status = claims.get("org_status")
        # the Directory spec notes inconsistent case in its status flags
        if status is not None and (not isinstance(status, str) or status.lower() != "active"):
            raise UnapprovedSoftwareStatement(
                f"The organisation's status in the software statement is {status!r}, not Active."
            )
        context.ssa_header, context.ssa_claims = header, claims
