"""Errors of the registration protocol, one exception type per wire error.

Every error carries what goes on the wire (status, ``error`` code, a short public
``description``) apart from ``detail``: what we log for the operator and never send.
"""

from __future__ import annotations

from typing import Any


class RegistrationError(Exception):
    """Base of every error the DCR endpoints turn into a JSON error response."""

    status: int = 400
    error: str = "invalid_request"
    default_description: str = "The request is invalid."

    def __init__(
        self,
        description: str | None = None,
        *,
        detail: str | None = None,
        headers: dict[str, str] | None = None,
        policy: str | None = None,
    ) -> None:
        self.description = _clip(description or self.default_description)
        self.detail = detail or self.description
        self.headers = dict(headers or {})
        #: name of the check that refused the request, for the log and the
        #: ``registration_rejected`` signal: set by the pipeline for its policies, and by the
        #: raiser for checks outside it ("jti_replay", "request_body", "management", ...)
        self.policy: str | None = policy
        super().__init__(self.description)

    def to_dict(self) -> dict[str, Any]:
        return {"error": self.error, "error_description": self.description}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.error!r}, {self.description!r})"


def _clip(text: str) -> str:
    # RFC 7591 descriptions are human-readable and the OB schema caps them at 500.
    text = " ".join(str(text).split()) or "Error."
    return text if len(text) <= 500 else text[:497] + "..."


class InvalidClient(RegistrationError):
    """No client certificate, or one that is untrusted, expired or not yet valid."""

    status = 401
    error = "invalid_client"
    default_description = "A valid client certificate is required."


class InvalidSoftwareStatement(RegistrationError):
    error = "invalid_software_statement"
    default_description = "The software statement is invalid."


class UnapprovedSoftwareStatement(RegistrationError):
    error = "unapproved_software_statement"
    default_description = "The software statement is not approved by this server."


class InvalidClientMetadata(RegistrationError):
    error = "invalid_client_metadata"
    default_description = "The client metadata is invalid."


class InvalidRedirectURI(RegistrationError):
    error = "invalid_redirect_uri"
    default_description = "The redirect URIs are invalid."


class UnsupportedMediaType(InvalidClientMetadata):
    status = 415
    default_description = (
        "The request body must be a signed JWT sent as application/jwt, "
        "application/jose or application/json."
    )


class RequestTooLarge(InvalidClientMetadata):
    status = 413
    default_description = "The request body is too large."


class TemporarilyUnavailable(RegistrationError):
    status = 503
    error = "temporarily_unavailable"
    default_description = "The server cannot validate the request right now; retry later."

    def __init__(self, description: str | None = None, *, retry_after: int = 30, **kw: Any):
        super().__init__(description, **kw)
        self.headers.setdefault("Retry-After", str(int(retry_after)))


class TooManyRequests(RegistrationError):
    """One software (or client) sends more requests than its share of a bounded resource
    allows (RFC 6585 section 4); ``retry_after`` seconds is when it may try again.

    The code: OB DCR's error enum covers 400 responses only, and RFC 6749 has nothing for
    rate limiting. Its ``invalid_request`` says the request is malformed (a client would
    change it rather than retry) and ``temporarily_unavailable`` says the server is
    overloaded (our 503). RFC 6749 section 8.5 lets an extension define codes, so this one
    is named after its status: a client that does not know it still acts on the 429 and its
    ``Retry-After``.
    """

    status = 429
    error = "too_many_requests"
    default_description = "Too many requests; retry later."

    def __init__(self, description: str | None = None, *, retry_after: int = 30, **kw: Any):
        super().__init__(description, **kw)
        self.headers.setdefault("Retry-After", str(int(retry_after)))


class InvalidToken(RegistrationError):
    """GET/PUT/DELETE /register/<id> without a valid access token for that client."""

    status = 401
    error = "invalid_token"
    default_description = "The access token is missing, invalid or not issued to this client."

    def __init__(self, description: str | None = None, **kw: Any):
        super().__init__(description, **kw)
        # RFC 6750 quoted-string: no double quotes or backslashes inside the value
        safe = self.description.replace("\\", "").replace('"', "'")
        self.headers.setdefault(
            "WWW-Authenticate", f'Bearer error="invalid_token", error_description="{safe}"'
        )


class InsufficientScope(RegistrationError):
    """A protected resource called with a token that lacks the scope it needs (RFC 6750)."""

    status = 403
    error = "insufficient_scope"
    default_description = "The access token does not carry the scope this resource needs."

    def __init__(self, scope: str, **kw: Any) -> None:
        super().__init__(**kw)
        self.headers.setdefault(
            "WWW-Authenticate", f'Bearer error="insufficient_scope", scope="{scope}"'
        )


class ConfigurationError(RuntimeError):
    """A wrong or missing OBDCR_* setting; raised at start-up, naming the key."""
