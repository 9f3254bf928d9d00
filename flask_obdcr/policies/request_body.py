"""The body: a compact JWS sent as application/jwt, application/jose or a JSON string."""

from __future__ import annotations

import json

from ..errors import InvalidClientMetadata, RequestTooLarge, UnsupportedMediaType
from .base import RegistrationContext

#: OB DCR v3.1 says application/jwt, v3.3's swagger application/jose, its OpenAPI a JSON string
MEDIA_TYPES = frozenset({"application/jwt", "application/jose", "application/json"})


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


class RequestBody:
    """The body: an accepted media type, within OBDCR_MAX_REQUEST_BYTES, a compact JWS."""

    name = "request_body"
    clause = (
        'OB DCR v3.3 "POST /register" (the TPP submits a JWS payload) and "Of JWS & JWKS";'
        " RFC 7515 §7.1 (JWS Compact Serialization); docs/architecture.md"
        ' "Contract: endpoints and responses" (media types) and "Contract: configuration and'
        ' the extension" (OBDCR_MAX_REQUEST_BYTES)'
    )

    def __call__(self, context: RegistrationContext) -> None:
        if len(context.body) > context.rules.max_request_bytes:
            raise RequestTooLarge(
                f"The request body is larger than {context.rules.max_request_bytes} bytes."
            )
        kind = media_type(context.content_type)
        if kind not in MEDIA_TYPES:
            raise UnsupportedMediaType(detail=f"Content-Type {context.content_type!r}")
        try:
            text = context.body.decode("ascii")
        except UnicodeDecodeError:
            raise InvalidClientMetadata("The request body is not a compact JWS.") from None
        if kind == "application/json":
            try:
                text = json.loads(text)
            except (json.JSONDecodeError, RecursionError):
                raise InvalidClientMetadata(
                    "An application/json body must be the signed JWT as a JSON string."
                ) from None
            if not isinstance(text, str):
                raise InvalidClientMetadata(
                    "An application/json body must be the signed JWT as a JSON string."
                )
        context.request_jwt = text.strip()
