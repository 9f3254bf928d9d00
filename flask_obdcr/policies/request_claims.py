"""The JWT claims of the registration request: who sent it, to whom, when, and once."""

from __future__ import annotations

from ..errors import InvalidClientMetadata
from .base import RegistrationContext

MAX_JTI_LENGTH = 256


def _timestamp(claims: dict, name: str) -> int:
    value = claims.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidClientMetadata(f"The request JWT must carry {name} as a number of seconds.")
    return int(value)


class RequestClaims:
    name = "request_claims"

    def __call__(self, context: RegistrationContext) -> None:
        claims, settings, now = context.request_claims, context.settings, context.now
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
        if not any(isinstance(a, str) and a in settings.accepted_audiences for a in audiences):
            raise InvalidClientMetadata(
                "The request aud does not name this authorization server.",
                detail=f"aud {audience!r}",
            )

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
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti.strip() or len(jti) > MAX_JTI_LENGTH:
            raise InvalidClientMetadata("The request JWT must carry a jti.")
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
        context.metadata["software_id"] = software_id
        context.metadata["software_statement"] = context.software_statement
