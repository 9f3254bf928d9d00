"""Resource-server side: check a (certificate-bound) access token, RFC 6750 / RFC 8705."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .certificates import client_certificate_from_environ, thumbprint_sha256
from .errors import InvalidToken, RegistrationError
from .management import bearer_token
from .tokens import AccessToken

if TYPE_CHECKING:
    from .extension import DCRState


class InsufficientScope(RegistrationError):
    status = 403
    error = "insufficient_scope"
    default_description = "The access token does not carry the scope this resource needs."

    def __init__(self, scope: str, **kw: Any) -> None:
        super().__init__(**kw)
        self.headers.setdefault(
            "WWW-Authenticate", f'Bearer error="insufficient_scope", scope="{scope}"'
        )


def check_access_token(
    state: DCRState, authorization: str | None, environ: Mapping[str, Any], scope: str | None
) -> AccessToken:
    token = bearer_token(authorization)
    record = state.tokens.find(token)
    if record is None or state.store.get(record.client_id) is None:
        raise InvalidToken()
    if record.x5t_s256 is not None:
        try:
            certificate = client_certificate_from_environ(
                environ,
                header=state.settings.client_cert_header,
                trusted_proxies=state.settings.trusted_proxies,
            )
        except RegistrationError:
            certificate = None
        if certificate is None or thumbprint_sha256(certificate) != record.x5t_s256:
            raise InvalidToken("The access token is bound to another certificate.")
    if scope is not None and scope not in record.scope.split():
        raise InsufficientScope(scope)
    return record
