"""Who may use what the token endpoint issued: ``/register/<id>`` and protected resources.

* :func:`authorize_management`: GET/PUT/DELETE ``/register/<id>``. Two kinds of token are
  accepted: the OB way, an access token the same client obtained with client_credentials; and
  the RFC 7592 way, the registration_access_token returned at registration. Either way the
  caller must also present, over mutual TLS, a certificate of the client's own software or
  organisation. Anything wrong is a 401 and, where the token exists, the token is revoked
  (OB DCR: "immediately revokes the access token").
* :func:`check_access_token`: ``require_token`` (RFC 6750, RFC 8705 section 3): an active token,
  bound to the certificate presented with it, carrying the scope.

Core side: the request arrives as its ``Authorization`` header and WSGI environ; no Flask.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .errors import (
    InsufficientScope,
    InvalidClient,
    InvalidToken,
    RegistrationError,
    TemporarilyUnavailable,
)
from .jwks import JWKSError
from .registration import suspension
from .state import DCRState
from .storage import AccessToken, StoredClient, secret_matches

__all__ = ["MANAGEMENT_CHECK", "authorize_management", "bearer_token", "check_access_token"]

#: the name of :func:`authorize_management`'s refusals in the log and the signal
MANAGEMENT_CHECK = "management"
#: what a TPP whose token was just revoked must do next (the OB rule revokes on a mismatch)
FETCH_A_NEW_TOKEN = (
    " It has been revoked: fetch a new one from the token endpoint (client_credentials) and"
    " present it with the certificate it is bound to."
)


def bearer_token(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return None
    return token


def authorize_management(
    state: DCRState, client_id: str, authorization: str | None, environ: Mapping[str, Any]
) -> StoredClient:
    """The client whose registration the request may read, update or delete. A refusal is
    named :data:`MANAGEMENT_CHECK` (``error.policy``) in the log."""
    try:
        return _authorize(state, client_id, authorization, environ)
    except RegistrationError as exc:
        exc.policy = exc.policy or MANAGEMENT_CHECK
        raise


def _authorize(
    state: DCRState, client_id: str, authorization: str | None, environ: Mapping[str, Any]
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
            raise InvalidToken(
                "The access token was not issued to this client." + FETCH_A_NEW_TOKEN,
                detail=f"token of {record.client_id} used for {client_id}",
            )
        bound_to = record.x5t_s256
    elif client is not None and secret_matches(token, client.registration_access_token_hash):
        bound_to = None
    else:
        raise InvalidToken()

    certificate = state.certificates.from_environ(environ)
    if certificate is None:
        raise InvalidClient("A client certificate is required (mutual TLS).")
    # a revoked certificate (OCSP/CRL) is an invalid_token here (docs/architecture.md)
    verified = state.certificates.verify(certificate, revoked_error=InvalidToken)
    if bound_to is not None and verified.thumbprint != bound_to:
        # revoked at once, as OB DCR revokes a token presented for an unknown ClientId; the
        # description says so, or the TPP would go on presenting the dead token with the
        # right certificate and never learn why it keeps failing
        state.tokens.revoke(token)
        raise InvalidToken(
            "The access token is bound to another certificate." + FETCH_A_NEW_TOKEN,
            detail=f"token of {client_id} bound to {bound_to}, presented with"
            f" {verified.thumbprint}",
        )
    if (
        state.certificates.binding(
            certificate, ssa_claims=client.ssa_claims, software_jwks=software_jwks(state, client)
        )
        is None
    ):
        description = "The client certificate does not belong to this client's software."
        if record is not None:
            state.tokens.revoke(token)
            description += FETCH_A_NEW_TOKEN
        raise InvalidToken(
            description, detail=f"certificate {certificate.subject.rfc4514_string()!r}"
        )
    revoked = state.revoked_keys.find(client.ssa_claims, key=certificate)
    if revoked is not None:
        raise InvalidClient(
            "The client certificate's key has been revoked by the Directory.", detail=str(revoked)
        )
    return client


def check_access_token(
    state: DCRState, authorization: str | None, environ: Mapping[str, Any], scope: str | None
) -> AccessToken:
    """The record of the request's access token; ``InvalidToken`` unless it is active, its
    client is still registered and not suspended, and it is bound to the certificate presented
    (docs/architecture.md, "Contract: tokens, published URLs and keys");
    ``InsufficientScope`` unless it carries ``scope``."""
    token = bearer_token(authorization)
    try:
        record = state.tokens.find(token)
        # through the client cache (registration.ClientCache: its bound is the most a
        # suspension or deletion by another process takes to be seen here); a suspended
        # client's tokens are revoked when it is suspended, and refused here too in case one
        # was issued meanwhile
        client = state.registrar.clients.get(record.client_id) if record is not None else None
    except Exception as exc:  # a backend is down: fail closed, and say so (503, not 500)
        raise TemporarilyUnavailable(
            "The access token cannot be checked right now; retry later.", detail=repr(exc)
        ) from exc
    if record is None or client is None or suspension(client) is not None:
        raise InvalidToken()
    if record.x5t_s256 is not None or state.settings.certificate_bound_tokens:
        if record.x5t_s256 is None:
            raise InvalidToken("The access token is not bound to a client certificate.")
        try:
            certificate = state.certificates.from_environ(environ)
        except InvalidClient:
            certificate = None
        if certificate is None:
            raise InvalidToken("The access token is bound to a client certificate; present it.")
        try:
            verified = state.certificates.verify(certificate, revoked_error=InvalidToken)
        except InvalidClient as exc:  # e.g. expired since the token was issued
            raise InvalidToken(exc.description, detail=exc.detail) from None
        if verified.thumbprint != record.x5t_s256:
            raise InvalidToken("The access token is bound to another certificate.")
    if scope is not None and scope not in record.scope.split():
        raise InsufficientScope(scope)
    return record


def software_jwks(state: DCRState, client: StoredClient) -> Mapping[str, Any] | None:
    """The client's software JWKS (for the x5c binding rule, which only reads it: the cache's
    own copy), or None if it cannot be had."""
    try:
        return state.jwks.shared_document(client.ssa_claims["software_jwks_endpoint"])
    except (JWKSError, KeyError, TypeError):
        return None
