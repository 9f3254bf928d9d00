"""Registered clients at an Authlib authorization server.

One call equips an ``authlib.integrations.flask_oauth2.AuthorizationServer`` with the
client authentication methods an OB bank needs (RFC 8705 ``tls_client_auth``, RFC 7523
``private_key_jwt`` verified with the software's JWKS, and hashed client secrets), and
issues certificate-bound access tokens (RFC 8705 section 3)::

    server = AuthorizationServer(app, query_client=dcr.query_client, save_token=dcr.save_token)
    dcr.configure_authorization_server(server)
"""

from __future__ import annotations

import binascii
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from authlib.oauth2.rfc6749 import ClientMixin, InvalidClientError, InvalidScopeError, OAuth2Error
from authlib.oauth2.rfc6749.grants import ClientCredentialsGrant as _ClientCredentialsGrant
from authlib.oauth2.rfc6749.util import list_to_scope, scope_to_list
from flask import request as flask_request

from . import jose
from .certificates import VerifiedCertificate, certificate_matches_dn
from .errors import InvalidClient, RegistrationError, TemporarilyUnavailable, TooManyRequests
from .jwks import JWKSError
from .log import get_logger, redact_authlib_tokens
from .management import software_jwks
from .policies.base import numeric_date
from .registration import suspension
from .storage import StoredClient
from .storage.replay import ReplayCache, ReplayQuotaExceeded, ReplayRefused

if TYPE_CHECKING:
    from authlib.integrations.flask_oauth2 import AuthorizationServer

    from .state import DCRState

logger = get_logger()

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
#: the order a bank advertises them in: the FAPI-compliant ones first
AUTH_METHODS = ("tls_client_auth", "private_key_jwt", "client_secret_basic", "client_secret_post")
#: where the token endpoint keeps the verified certificate it will bind the token to
CERTIFICATE_ATTRIBUTE = "obdcr_certificate"


class OBClient(ClientMixin):
    """A stored client as Authlib sees it."""

    def __init__(self, stored: StoredClient) -> None:
        self.stored = stored
        self.client_id = stored.client_id
        self.metadata = stored.metadata

    def __repr__(self) -> str:
        return f"<OBClient {self.client_id}>"

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str | None:
        uris = self.metadata.get("redirect_uris") or []
        return uris[0] if uris else None

    def get_allowed_scope(self, scope: str | None) -> str:
        """The scope of the token to issue (Authlib asks at every grant's token request).

        No scope asked: none granted, the pre-defined default RFC 6749 section 3.3 allows,
        and what the OB management endpoints need ("A scope need not be specified for the
        grant", OB DCR v3.3, "Authentication"); never a wider default, which would hand an
        authorization-code token scopes nobody consented to.

        A scope the client did not register, alone or among registered ones: 400
        ``invalid_scope`` (RFC 6749 section 5.2), naming it. Refused rather than narrowed:
        section 3.3 lets a server issue less than asked if it says so in the response's
        ``scope``, but a client that does not read it holds a token it believes covers
        ``payments`` and learns otherwise only from a 403 at the resource, far from the
        cause; refused, it learns at once, and asks again for what it registered.
        """
        if not scope:
            return ""
        registered = scope_to_list(self.metadata.get("scope", "")) or []
        requested = list(dict.fromkeys(scope_to_list(scope) or []))
        beyond = [s for s in requested if s not in registered]
        if beyond:
            raise InvalidScopeError(
                description=f"The client is not registered for scope '{_printable(beyond)}'"
                f" (registered: '{_printable(registered)}'); ask for those only, or update"
                " the registration (PUT /register/<client_id>).",
            )
        return list_to_scope(requested)

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in (self.metadata.get("redirect_uris") or [])

    def check_client_secret(self, client_secret: str) -> bool:
        return self.stored.check_client_secret(client_secret)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        # a client authenticates only the way it registered, at every endpoint
        return method == self.metadata.get("token_endpoint_auth_method")

    def check_response_type(self, response_type: str) -> bool:
        return response_type in (self.metadata.get("response_types") or [])

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in (self.metadata.get("grant_types") or [])


def _printable(scopes: list[str]) -> str:
    """Scopes as an error_description may carry them (RFC 6749 section 5.2: visible ASCII,
    no double quote or backslash), cut short: a client's own value is echoed back."""
    text = " ".join(scopes)
    text = "".join(c if " " <= c <= "~" and c not in "\\\"'" else "?" for c in text)
    return text if len(text) <= 100 else text[:97] + "..."


class ClientCredentialsGrant(_ClientCredentialsGrant):
    """client_credentials with the OB client authentication methods."""

    TOKEN_ENDPOINT_AUTH_METHODS = list(AUTH_METHODS)


class ClientAuthenticator:
    """The tls_client_auth and private_key_jwt methods, bound to one app's DCR state."""

    def __init__(self, state_getter: Callable[[], DCRState], *, token_endpoint: str | None = None):
        self._state = state_getter
        self.token_endpoint = token_endpoint

    # -- RFC 8705 section 2.1 ------------------------------------------------------------
    def tls_client_auth(self, query_client, request) -> OBClient | None:
        client_id = request.form.get("client_id")
        if not client_id:
            return None
        client = query_client(client_id)
        if client is None or client.metadata.get("token_endpoint_auth_method") != "tls_client_auth":
            return None  # not a tls_client_auth client: let the other methods have a go
        try:
            verified = self._state().certificates.verified(flask_request.environ)
        except TemporarilyUnavailable:
            raise  # revocation status unknown: a 503, whatever the auth method
        except RegistrationError as exc:
            raise _invalid(exc.description) from None
        subject_dn = client.metadata.get("tls_client_auth_subject_dn")
        if not subject_dn or not certificate_matches_dn(subject_dn, verified.certificate):
            raise _invalid("The client certificate does not match the registered subject.")
        setattr(request, CERTIFICATE_ATTRIBUTE, verified)
        return client

    # -- RFC 7523 section 2.2 / OIDC private_key_jwt -------------------------------------
    def private_key_jwt(self, query_client, request) -> OBClient | None:
        form = request.form
        assertion = form.get("client_assertion")
        if form.get("client_assertion_type") != ASSERTION_TYPE or not assertion:
            return None
        state = self._state()
        rules = state.registrar.rules
        try:
            # decoded once: verify() below takes it as it is, without splitting it again
            decoded = jose.decode(assertion)
        except jose.MalformedJWS:
            raise _invalid("The client assertion is not a signed JWT.") from None
        header, claims = decoded.header, decoded.claims
        alg = header["alg"]
        if alg not in rules.signing_algs or jose.KEY_BEARING_HEADERS & header.keys():
            raise _invalid(f"The client assertion algorithm {alg!r} is not accepted.")
        client_id = claims.get("sub")
        if not isinstance(client_id, str) or claims.get("iss") != client_id:
            raise _invalid("The client assertion iss and sub must both be the client_id.")
        if form.get("client_id") not in (None, client_id):
            raise _invalid("client_id does not match the client assertion.")
        client = query_client(client_id)
        if client is None or client.metadata.get("token_endpoint_auth_method") != "private_key_jwt":
            raise _invalid("Unknown client.")
        registered_alg = client.metadata.get("token_endpoint_auth_signing_alg")
        if registered_alg and alg != registered_alg:
            raise _invalid(f"The client registered {registered_alg} for client assertions.")
        endpoint = client.stored.ssa_claims.get("software_jwks_endpoint")
        kid = header.get("kid") if isinstance(header.get("kid"), str) else None
        try:
            keys = state.jwks.candidate_keys(endpoint, kid=kid, alg=alg)
            key = jose.verify(decoded, keys, alg)
        except (JWKSError, jose.BadSignature, jose.MalformedJWS):
            raise _invalid("The client assertion signature is invalid.") from None
        revoked = state.revoked_keys.find(client.stored.ssa_claims, kid=kid, key=key)
        if revoked is not None:
            raise _invalid(
                "The client assertion is signed with a key the Directory has revoked.",
                detail=str(revoked),
            )

        now = state.clock()
        skew = rules.clock_skew
        audiences = claims.get("aud")
        audiences = audiences if isinstance(audiences, list) else [audiences]
        # configured values only (docs/architecture.md, "Contract: tokens, published URLs and
        # keys"): never the request's own URL, which follows the Host header and would accept
        # an assertion made for another bank
        accepted = rules.assertion_audiences
        if self.token_endpoint:
            accepted = accepted | {self.token_endpoint}
        if not any(isinstance(a, str) and a in accepted for a in audiences):
            raise _invalid(
                "The client assertion aud must be the token endpoint or the issuer.",
                detail=f"aud {audiences!r} is none of {sorted(accepted)}",
            )
        exp = numeric_date(claims.get("exp"))
        if exp is None:
            raise _invalid("The client assertion has no exp (seconds since 1970).")
        if now > exp + skew:
            raise _invalid("The client assertion has expired.")
        if exp - now > rules.max_assertion_lifetime:
            raise _invalid(
                f"The client assertion exp is more than {rules.max_assertion_lifetime} seconds"
                " ahead."
            )
        for name in ("iat", "nbf"):  # optional; when present, a time that has come
            if name in claims:
                value = numeric_date(claims[name])
                if value is None or value > now + skew:
                    raise _invalid(f"The client assertion {name} is not a past time.")
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti:
            raise _invalid("The client assertion has no jti.")
        try:
            key, expires_at = f"assertion:{client_id}:{jti}", exp + skew
            if isinstance(state.replay_cache, ReplayCache):  # counted against the client's quota
                fresh = state.replay_cache.remember(key, expires_at, owner=f"assertion:{client_id}")
            else:  # a cache written to the 0.2 protocol: remember(key, expires_at)
                fresh = state.replay_cache.remember(key, expires_at)
        except ReplayQuotaExceeded as exc:  # this client's share is used up: 429, not a replay
            raise TooManyRequests(
                "This client has sent too many client assertions; retry later.",
                retry_after=exc.retry_after,
                detail=str(exc),
            ) from None
        except ReplayRefused as exc:  # the whole cache is full
            raise TemporarilyUnavailable(
                "The client assertion cannot be checked right now; retry later.",
                retry_after=exc.retry_after,
                detail=repr(exc),
            ) from None
        except Exception:  # a shared cache that is down: fail closed
            logger.exception("replay cache unavailable while checking a client assertion")
            raise _invalid("The client assertion cannot be checked right now.") from None
        if not fresh:
            raise _invalid("The client assertion has been used before.")
        return client

    # -- RFC 8705 section 3: the certificate every token is bound to ------------------------
    # (docs/architecture.md, "Contract: tokens, published URLs and keys", bound tokens)
    def bind(self, client: OBClient, request: Any) -> None:
        """After any client authentication at the token endpoint: find the certificate the
        token will be bound to. With OBDCR_CERTIFICATE_BOUND_TOKENS a token is issued only
        over mTLS with a trusted certificate that belongs to the client; without it, a
        certificate is used only if it would pass the same test."""
        state = self._state()
        suspended = suspension(client.stored)
        if suspended is not None:
            raise _invalid(
                "The client is suspended; it must pass re-validation again.",
                detail=f"client {client.client_id}: {suspended.get('reason')}",
            )
        required = state.settings.certificate_bound_tokens
        verified = getattr(request, CERTIFICATE_ATTRIBUTE, None)
        if verified is None:
            try:
                verified = self._belonging_certificate(state, client)
            except TemporarilyUnavailable:
                raise  # status unknown: a 503, bound tokens or not
            except RegistrationError as exc:
                if required:
                    raise _invalid(exc.description, detail=exc.detail) from None
                logger.info("token for %s issued unbound: %s", client.client_id, exc.detail)
                return
        revoked = state.revoked_keys.find(client.stored.ssa_claims, key=verified.certificate)
        if revoked is not None:
            raise _invalid(
                "The client certificate's key has been revoked by the Directory.",
                detail=str(revoked),
            )
        setattr(request, CERTIFICATE_ATTRIBUTE, verified)

    @staticmethod
    def _belonging_certificate(state: DCRState, client: OBClient) -> VerifiedCertificate:
        certificate = state.certificates.from_environ(flask_request.environ)
        if certificate is None:
            raise InvalidClient(
                "A client certificate (mutual TLS) is required: tokens are certificate-bound."
            )
        verified = state.certificates.verify(certificate)
        rule = state.certificates.binding(
            certificate,
            ssa_claims=client.stored.ssa_claims,
            software_jwks=software_jwks(state, client.stored),
            subject_dn=client.metadata.get("tls_client_auth_subject_dn"),
        )
        if rule is None:
            raise InvalidClient(
                "The client certificate does not belong to this client's software.",
                detail=(
                    f"certificate {certificate.subject.rfc4514_string()!r} presented for"
                    f" client {client.client_id}"
                ),
            )
        return verified


class WireError(OAuth2Error):
    """A :class:`RegistrationError` raised inside Authlib's token endpoint, answered with its
    own status, code and headers (e.g. 503 ``temporarily_unavailable`` + Retry-After)."""

    def __init__(self, error: RegistrationError) -> None:
        super().__init__(description=error.description, status_code=error.status, error=error.error)
        self._extra_headers = dict(error.headers)
        if error.detail != error.description:
            logger.info("token endpoint: %s (%s)", error.description, error.detail)

    def get_headers(self) -> list[tuple[str, str]]:
        return [*super().get_headers(), *self._extra_headers.items()]


def _invalid(description: str, *, detail: str | None = None) -> InvalidClientError:
    if detail:
        logger.info("token endpoint: %s (%s)", description, detail)
    return InvalidClientError(status_code=401, description=description)


def configure_authorization_server(
    server: AuthorizationServer,
    state_getter: Callable[[], DCRState],
    *,
    token_endpoint: str | None = None,
    register_grant: bool = True,
) -> ClientAuthenticator:
    """Register tls_client_auth and private_key_jwt (and, by default, a client_credentials
    grant that accepts all four OB methods) on an Authlib authorization server."""
    authenticator = ClientAuthenticator(state_getter, token_endpoint=token_endpoint)
    server.register_client_auth_method("tls_client_auth", authenticator.tls_client_auth)
    server.register_client_auth_method("private_key_jwt", authenticator.private_key_jwt)
    if register_grant:
        server.register_grant(ClientCredentialsGrant)

    # Every grant authenticates its client through server.authenticate_client: wrapping it
    # binds the certificate for all of them (client_credentials, authorization_code, ...),
    # whatever method the client authenticated with.
    authenticate_client = server.authenticate_client

    def authenticate_and_bind(request: Any, methods: Any, endpoint: str = "token") -> Any:
        try:
            client = authenticate_client(request, methods, endpoint)
            if endpoint == "token":
                authenticator.bind(client, request)
        except RegistrationError as exc:  # e.g. revocation status unknown: 503, not a 500
            raise WireError(exc) from None
        except (UnicodeDecodeError, ValueError, binascii.Error):
            # Authlib decodes an Authorization: Basic header without catching what a malformed
            # one raises (not base64, not UTF-8, no colon): refused, not a 500
            raise _invalid("The client credentials are malformed.") from None
        return client

    handle_error_response = server.handle_error_response

    def log_and_handle_error(request: Any, error: OAuth2Error) -> Any:
        form = getattr(request, "form", None) or {}
        logger.warning(
            "OAuth2 %s %s refused: %s (%s) client_id=%s",
            getattr(request, "method", "-"),
            getattr(request, "uri", "-"),
            error.error,
            error.description,
            form.get("client_id", "-") if hasattr(form, "get") else "-",
        )
        return handle_error_response(request, error)

    redact_authlib_tokens()
    _replace_default_token_strings(server)
    server.authenticate_client = authenticate_and_bind  # type: ignore[method-assign]
    server.handle_error_response = log_and_handle_error  # type: ignore[method-assign]
    return authenticator


#: where Authlib's Flask server defines the token strings it makes by default
_AUTHLIB_DEFAULT_GENERATOR = (
    "authlib.integrations.flask_oauth2.authorization_server",
    "create_token_generator.<locals>.token_generator",
)


def access_token_string(*_args: Any, **_kwargs: Any) -> str:
    """A new access token string: 256 random bits from the OS, base64url (43 characters of
    RFC 6750's b64token set)."""
    return secrets.token_urlsafe(32)


def refresh_token_string(*_args: Any, **_kwargs: Any) -> str:
    """A new refresh token string: 288 random bits from the OS, base64url (48 characters)."""
    return secrets.token_urlsafe(36)


def _replace_default_token_strings(server: AuthorizationServer) -> None:
    """Where the server makes token strings with Authlib's default (a character at a time
    from ``random.SystemRandom``: one ``os.urandom`` call per character, a tenth of a
    client_credentials request), make them with one call of :func:`secrets.token_urlsafe`,
    of at least the same strength. A generator the bank configured
    (``OAUTH2_ACCESS_TOKEN_GENERATOR``, ``OAUTH2_REFRESH_TOKEN_GENERATOR``) is left alone."""
    default = getattr(server, "_token_generators", {}).get("default")
    for attribute, replacement in (
        ("access_token_generator", access_token_string),
        ("refresh_token_generator", refresh_token_string),
    ):
        current = getattr(default, attribute, None)
        where = (getattr(current, "__module__", None), getattr(current, "__qualname__", None))
        if where == _AUTHLIB_DEFAULT_GENERATOR:
            setattr(default, attribute, replacement)


def save_token(state: DCRState, token: dict[str, Any], request: Any) -> None:
    """Authlib's ``save_token``: keep the token hashed, bound to the certificate the token
    endpoint verified, living ``OBDCR_ACCESS_TOKEN_LIFETIME`` seconds (docs/architecture.md,
    "Contract: tokens, published URLs and keys")."""
    verified: VerifiedCertificate | None = getattr(request, CERTIFICATE_ATTRIBUTE, None)
    if verified is None and state.settings.certificate_bound_tokens:
        # a grant that did not authenticate its client through the server: fail closed
        raise _invalid("A client certificate (mutual TLS) is required: tokens are bound.")
    lifetime = state.settings.access_token_lifetime
    token["expires_in"] = lifetime  # Authlib's and the host app's own defaults do not apply
    now = int(state.clock())
    state.tokens.save(
        token["access_token"],
        client_id=request.client.get_client_id(),
        scope=token.get("scope", "") or "",
        issued_at=now,
        expires_at=now + lifetime,
        x5t_s256=verified.thumbprint if verified is not None else None,
    )
