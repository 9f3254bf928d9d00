"""Who may read, update or delete a registration (GET/PUT/DELETE /register/<id>).

Two kinds of token are accepted: the OB way, an access token the same client obtained
with client_credentials; and the RFC 7592 way, the registration_access_token returned at
registration. Either way the caller must also present, over mutual TLS, a certificate of
the client's own software or organisation. Anything wrong is a 401 and, where the token
exists, the token is revoked (OB DCR: "immediately revokes the access token").
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import TYPE_CHECKING

from cryptography import x509

from .certificates import certificate_belongs_to_software, thumbprint_sha256
from .errors import InvalidClient, InvalidToken, TemporarilyUnavailable
from .jwks import JWKSError
from .storage import StoredClient, secret_matches

if TYPE_CHECKING:
    from .extension import DCRState


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def authorize_management(
    state: DCRState,
    client_id: str,
    authorization: str | None,
    certificate_loader: Callable[[], x509.Certificate | None],
) -> StoredClient:
    token = bearer_token(authorization)
    if token is None:
        raise InvalidToken("An access token is required (Authorization: Bearer).")
    try:
        client = state.store.get(client_id)
        record = state.tokens.find(token)
    except Exception as exc:  # the backend is down: say so, as a registration would
        raise TemporarilyUnavailable(
            "The registration cannot be read right now; retry later.", detail=repr(exc)
        ) from exc
    if record is not None:
        if client is None or record.client_id != client_id:
            state.tokens.revoke(token)
            raise InvalidToken(detail=f"token of {record.client_id} used for {client_id}")
        bound_to = record.x5t_s256
    elif client is not None and secret_matches(token, client.registration_access_token_hash):
        bound_to = None
    else:
        raise InvalidToken()

    certificate = certificate_loader()
    if certificate is None:
        raise InvalidClient("A client certificate is required (mutual TLS).")
    now = datetime.datetime.fromtimestamp(state.registrar.clock(), datetime.timezone.utc)
    state.transport_verifier.verify(certificate, now=now)
    if bound_to is not None and thumbprint_sha256(certificate) != bound_to:
        state.tokens.revoke(token)
        raise InvalidToken("The access token is bound to another certificate.")
    try:
        jwks = state.jwks.document(client.ssa_claims["software_jwks_endpoint"])
    except (JWKSError, KeyError):
        jwks = None
    if (
        certificate_belongs_to_software(
            certificate, ssa_claims=client.ssa_claims, software_jwks=jwks
        )
        is None
    ):
        if record is not None:
            state.tokens.revoke(token)
        raise InvalidToken("The client certificate does not belong to this client's software.")
    return client
