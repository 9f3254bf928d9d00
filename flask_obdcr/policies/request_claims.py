"""The JWT claims of the registration request: who sent it, to whom, when, and once."""

from __future__ import annotations

import re

from ..errors import InvalidClientMetadata
from .base import RegistrationContext, numeric_date

#: A jti is a UUIDv4: "The value must be a UUIDv4 GUID" (OB DCR v3.3 data dictionary), and
#: the OpenAPI pattern for it, both cases of hex digits. The data dictionary's own pattern
#: has capitals only, but the OB conformance tool, Python's and Go's uuid libraries all
#: write lowercase: refusing those would refuse nearly every TPP, so case is not judged.
#: Anything else (a 16-hex Directory-style id, a random string, a UUIDv1, a braced UUID) is
#: refused rather than registered: the response must echo the jti, and the OpenAPI allows
#: only a UUIDv4 there.
UUID4_JTI = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", re.I)

#: The OpenAPI's aud: one string, Base62, up to 18 characters ("the unique identifier for
#: the ASPSP issued by the issuer of the software statement", the Directory org id).
OB_AUDIENCE = re.compile(r"[0-9a-zA-Z]{1,18}")


def _timestamp(claims: dict, name: str) -> int:
    value = numeric_date(claims.get(name))
    if value is None:
        raise InvalidClientMetadata(
            f"The request JWT must carry {name} as a number of seconds since 1970."
        )
    return value


class RequestClaims:
    name = "request_claims"
    clause = (
        'OB DCR v3.3 "OBClientRegistrationRequest1" data dictionary, iss (the software_id), iat,'
        " exp, aud, jti (a UUIDv4), software_id; RFC 7519 §4.1.1 (iss), §4.1.3 (aud), §4.1.4"
        ' (exp), §4.1.5 (nbf), §4.1.6 (iat), §4.1.7 (jti); docs/architecture.md "Contract:'
        ' errors" (iss, software_id, aud, exp, iat, jti)'
    )

    def __call__(self, context: RegistrationContext) -> None:
        claims, settings, now = context.request_claims, context.rules, context.now
        software_id = context.ssa_claims["software_id"]
        if claims.get("iss") != software_id:
            raise InvalidClientMetadata(
                "The request iss must be the software_id of the software statement."
            )
        if "software_id" in claims and claims["software_id"] != software_id:
            raise InvalidClientMetadata(
                "The request software_id differs from the software statement's."
            )
        audience = claims.get("aud")
        audiences = audience if isinstance(audience, list) else [audience]
        named = [a for a in audiences if isinstance(a, str) and a in settings.accepted_audiences]
        if not named:
            raise InvalidClientMetadata(
                "The request aud does not name this authorization server.",
                detail=f"aud {audience!r}",
            )
        # The response's aud is one string (OpenAPI), a request's may be a list (RFC 7519):
        # answer the value that named this server, the OB-shaped one (our Directory org id)
        # if several did. A bank addressed by its issuer URL answers with that URL, as sent,
        # though the OpenAPI's aud pattern wants the org id: the request is accepted, so its
        # aud is not rewritten into something the TPP did not send.
        answered_aud = next((a for a in named if OB_AUDIENCE.fullmatch(a)), named[0])

        exp = _timestamp(claims, "exp")
        iat = _timestamp(claims, "iat")
        if now > exp + settings.clock_skew:
            raise InvalidClientMetadata("The request JWT has expired.")
        if iat > now + settings.clock_skew:
            raise InvalidClientMetadata("The request JWT iat is in the future.")
        if exp - now > settings.max_request_lifetime:
            raise InvalidClientMetadata(
                f"The request JWT exp is more than {settings.max_request_lifetime} seconds ahead."
            )
        # RFC 7519 section 4.1.5: not to be accepted before nbf
        if "nbf" in claims and _timestamp(claims, "nbf") > now + settings.clock_skew:
            raise InvalidClientMetadata("The request JWT is not valid yet (nbf).")
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti:
            raise InvalidClientMetadata("The request JWT must carry a jti.")
        if not UUID4_JTI.fullmatch(jti):
            raise InvalidClientMetadata(
                "The request jti must be a UUIDv4 (OB DCR data dictionary).",
                detail=f"jti {jti[:64]!r}",
            )
        # A replayed jti is refused by the registrar's atomic check-and-set, once every check
        # has passed and just before the client is stored: no early look here, which would
        # cost a shared cache a second round trip on every request and decide nothing.

        existing = context.existing
        if existing is not None and (
            existing.software_id != software_id
            or existing.org_id != context.ssa_claims.get("org_id")
        ):
            raise InvalidClientMetadata(
                "An update cannot change the software or organisation of a client."
            )
        # The request's own iss/iat/exp/aud/jti, as sent on this POST or PUT (timestamps as
        # whole seconds: the OpenAPI's are integers), kept with the metadata so that GET
        # answers them too. The OB data dictionary marks them "Request only" yet the OpenAPI
        # requires them in the response; the software statement's registered claims of the
        # same names (its iss "OpenBanking Ltd", its jti and iat) are flattened into the
        # response with every other SSA claim, but the metadata wins over them.
        context.metadata.update(iss=software_id, iat=iat, exp=exp, aud=answered_aud, jti=jti)
        context.metadata["software_id"] = software_id
        context.metadata["software_statement"] = context.software_statement
