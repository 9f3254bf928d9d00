"""AnyBank's side of the OB AISP consent journey: the request object, Authlib's grants and the
id_token (OpenID Connect hybrid flow, FAPI 1 Advanced as OB profiles it).

* :meth:`Journey.verify_request`: ``GET /authorize``'s request object (RFC 9101 / OIDC
  section 6.1), verified with the client's software JWKS through the extension's JWKS client
  (the ``software_jwks_endpoint`` of the SSA stored at registration; never a URL the request
  names), the client's registered ``request_object_signing_alg``, and the consent it names.
  Every refusal is a :class:`AuthorizationRefused` whose message the bank shows on a page:
  the redirect URI is not trusted until the request object is.
* :class:`HybridGrant` (``response_type=code id_token``, fragment), :class:`CodeGrant`
  (``grant_type=authorization_code`` with :class:`BankOpenIDCode`) and :class:`RefreshGrant`:
  Authlib's, with the bank's store, keys and client authentication methods.

Authlib 1.9's ``rfc9101.JWTAuthenticationRequest`` is not used: it verifies with keys
imported by joserfc from a key set the app hands it (no per-``kid`` refresh, none of the
extension's key floors or revoked-key checks), accepts any algorithm of a server-wide list
rather than the client's registered one, leaves ``exp``/``nbf`` unchecked, and answers every
failure with the same ``invalid_request_object``, where the customer's page must say why.

Authlib computes ``c_hash`` and ``at_hash`` but not ``s_hash`` (FAPI 1 Advanced 5.2.2.1:
the id_token of the authorization response carries the hash of ``state``):
:meth:`HybridGrant.generate_user_info` adds it, with Authlib's own half-hash.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from authlib.oauth2.rfc6749 import (
    AccessDeniedError,
    InvalidGrantError,
    OAuth2Error,
    OAuth2Request,
)
from authlib.oauth2.rfc6749.grants import AuthorizationCodeGrant, RefreshTokenGrant
from authlib.oauth2.rfc6749.requests import BasicOAuth2Payload
from authlib.oidc.core.grants import OpenIDCode, OpenIDHybridGrant
from authlib.oidc.core.util import create_half_hash
from flask import Response, current_app

from flask_obdcr import OpenBankingDCR, RegistrationError, jose
from flask_obdcr.authlib_server import AUTH_METHODS
from flask_obdcr.extension import EXTENSION_KEY, DCRState
from flask_obdcr.jwks import JWKSError, JWKSUnavailable
from flask_obdcr.policies.base import numeric_date
from flask_obdcr.registration import suspension
from flask_obdcr.storage import StoredClient

from ._util import b64url_json
from .bank_keys import ID_TOKEN_ALGS, IdTokenKeys
from .bank_store import AUTHORISED, AWAITING, BankStore, CodeReplayed, RefreshToken

__all__ = [
    "ACR_SCA",
    "CODE_LIFETIME",
    "AuthorizationRefused",
    "Authorisation",
    "Journey",
    "PendingAuthorization",
    "install_grants",
]

log = logging.getLogger(__name__)

#: the acr of a customer authenticated with strong customer authentication (OB security profile)
ACR_SCA = "urn:openbanking:psd2:sca"
#: seconds an authorization code lives (FAPI: short-lived; RFC 6749: at most 10 minutes)
CODE_LIFETIME = 60
#: FAPI 1 Advanced 5.2.2 (13): a request object's exp - nbf is at most 60 minutes
MAX_REQUEST_OBJECT_LIFETIME = 3600
RESPONSE_TYPE = "code id_token"


class AuthorizationRefused(Exception):
    """An authorization request the bank refuses, with what its page says (plain words)."""

    def __init__(self, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass(frozen=True)
class PendingAuthorization:
    """A verified authorization request waiting for the customer (kept in their session)."""

    client_id: str
    redirect_uri: str
    scope: str
    state: str | None
    nonce: str
    consent_id: str
    acr: str = ACR_SCA

    def payload(self) -> dict[str, str]:
        """The OAuth parameters as Authlib's grants read them: the request object's."""
        values = {
            "client_id": self.client_id,
            "response_type": RESPONSE_TYPE,
            "redirect_uri": self.redirect_uri,
            "scope": self.scope,
            "nonce": self.nonce,
            "response_mode": "fragment",
        }
        if self.state is not None:
            values["state"] = self.state
        return values

    def to_session(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_session(cls, value: Any) -> PendingAuthorization | None:
        try:
            return cls(**value)
        except TypeError:  # an older or tampered shape: as if there were none
            return None


@dataclass(frozen=True)
class Authorisation:
    """Authlib's "user": the consent a customer authorised (the id_token's ``sub``)."""

    consent_id: str
    customer: str | None = None
    auth_time: int | None = None
    acr: str = ACR_SCA
    #: the authorization code the tokens come from (None at the authorization endpoint)
    code_hash: str | None = None


def _journey() -> Journey:
    return current_app.extensions["anybank"]["journey"]  # type: ignore[no-any-return]


# -- the id_token -------------------------------------------------------------------------------


class BankIdToken:
    """What both id_tokens (authorization response and token response) share: signed by the
    bank with the client's registered ``id_token_signed_response_alg``, ``iss`` the issuer,
    ``aud`` the client, ``sub`` and ``openbanking_intent_id`` the ConsentId."""

    def get_client_algorithm(self, client: Any) -> str:
        return str(client.metadata.get("id_token_signed_response_alg"))

    def resolve_client_private_key(self, client: Any) -> Any:
        return _journey().keys.key(self.get_client_algorithm(client))

    def get_encode_header(self, client: Any) -> dict[str, str]:
        alg = self.get_client_algorithm(client)
        return {"alg": alg, "kid": str(_journey().keys.key(alg).kid)}

    def get_client_claims(self, client: Any) -> dict[str, Any]:
        return {"iss": _journey().issuer, "aud": client.get_client_id()}

    def generate_user_info(self, user: Authorisation, scope: str) -> dict[str, Any]:
        claims: dict[str, Any] = {
            "sub": user.consent_id,
            "openbanking_intent_id": user.consent_id,
            "acr": user.acr,
        }
        if user.auth_time is not None:
            claims["auth_time"] = user.auth_time
        return claims


class HybridGrant(BankIdToken, OpenIDHybridGrant):
    """``response_type=code id_token``, answered in the fragment."""

    def exists_nonce(self, nonce: str, request: OAuth2Request) -> bool:
        return _journey().store.nonce_used(request.payload.client_id, nonce)

    def save_authorization_code(self, code: str, request: OAuth2Request) -> None:
        user: Authorisation = request.user
        _journey().store.save_code(
            code,
            client_id=request.client.get_client_id(),
            redirect_uri=request.payload.redirect_uri,
            scope=request.scope,
            nonce=request.payload.data.get("nonce"),
            consent_id=user.consent_id,
            customer=user.customer or "",
            auth_time=int(user.auth_time or 0),
            acr=user.acr,
            lifetime=CODE_LIFETIME,
        )

    def generate_user_info(self, user: Authorisation, scope: str) -> dict[str, Any]:
        claims = super().generate_user_info(user, scope)
        state = self.request.payload.state
        if state:  # Authlib makes c_hash, not s_hash
            s_hash = create_half_hash(state, self.get_client_algorithm(self.request.client))
            claims["s_hash"] = s_hash.decode("ascii")
        return claims

    def create_authorization_response(self, redirect_uri: str, grant_user: Any) -> Any:
        if not grant_user:
            # Authlib's hybrid grant sends access_denied without the state; as an error the
            # server adds it (RFC 6749 section 4.1.2.1: state is REQUIRED in an error too)
            raise AccessDeniedError(
                description="The customer did not authorise the consent.",
                redirect_uri=redirect_uri,
                redirect_fragment=True,
            )
        return super().create_authorization_response(redirect_uri, grant_user)


class BankOpenIDCode(BankIdToken, OpenIDCode):
    """The id_token of the token response (``nonce``, ``auth_time``, ``acr`` from the code)."""

    def exists_nonce(self, nonce: str, request: OAuth2Request) -> bool:
        return _journey().store.nonce_used(request.payload.client_id, nonce)


def _authorised_consent(consent_id: str, what: str) -> None:
    journey = _journey()
    consent = journey.store.consent(consent_id)
    if consent is None or consent.status != AUTHORISED:
        status = "unknown" if consent is None else consent.status
        raise InvalidGrantError(f"The consent of this {what} is {status}, not Authorised.")
    if consent.is_expired(journey.store.clock()):
        raise InvalidGrantError(f"The consent of this {what} has expired.")


class CodeGrant(AuthorizationCodeGrant):
    """``grant_type=authorization_code``: single-use codes bound to client and redirect URI.

    No ``response_type`` of its own: ``code id_token`` is :class:`HybridGrant`'s, and the plain
    ``code`` flow (no id_token to protect the response) is not offered."""

    TOKEN_ENDPOINT_AUTH_METHODS = list(AUTH_METHODS)
    RESPONSE_TYPES: set[str] = set()

    def query_authorization_code(self, code: str, client: Any) -> Any:
        try:
            return _journey().store.use_code(code, client_id=client.get_client_id())
        except CodeReplayed as replayed:
            log.warning(
                "authorization code of consent %s used twice by client %s: what it issued is"
                " revoked",
                replayed,
                client.get_client_id(),
            )
            return None

    def delete_authorization_code(self, authorization_code: Any) -> None:
        """Nothing: :meth:`query_authorization_code` marked it used, and a used code is kept
        a while so that a replay is recognised."""

    def authenticate_user(self, authorization_code: Any) -> Authorisation:
        _authorised_consent(authorization_code.consent_id, "code")
        return Authorisation(
            consent_id=authorization_code.consent_id,
            customer=authorization_code.customer,
            auth_time=authorization_code.auth_time,
            acr=authorization_code.acr,
            code_hash=authorization_code.code_hash,
        )


class RefreshGrant(RefreshTokenGrant):
    """``grant_type=refresh_token``: a new access token for the same consent, only with the
    client certificate the first one was bound to. The refresh token itself is kept (not
    rotated): it lives as long as its consent."""

    TOKEN_ENDPOINT_AUTH_METHODS = list(AUTH_METHODS)

    def authenticate_refresh_token(self, refresh_token: str) -> RefreshToken | None:
        journey = _journey()
        record = journey.store.refresh_token(refresh_token)
        if record is None:
            return None
        try:
            thumbprint = journey.dcr.client_certificate().thumbprint
        except RegistrationError:
            thumbprint = None
        if record.x5t_s256 is not None and thumbprint != record.x5t_s256:
            raise InvalidGrantError("The refresh token is bound to another client certificate.")
        _authorised_consent(record.consent_id, "refresh token")
        return record

    def authenticate_user(self, refresh_token: RefreshToken) -> Authorisation:
        return Authorisation(consent_id=refresh_token.consent_id, code_hash=refresh_token.code_hash)

    def revoke_old_credential(self, refresh_token: RefreshToken) -> None:
        """Nothing: no new refresh token is issued, the old one stays usable."""


def install_grants(server: Any) -> None:
    """Register the journey's grants on the bank's Authlib server (client_credentials is the
    extension's)."""
    server.register_grant(HybridGrant)
    server.register_grant(CodeGrant, [BankOpenIDCode(require_nonce=True)])
    server.register_grant(RefreshGrant)


# -- the journey ---------------------------------------------------------------------------------


class Journey:
    """The bank's consent journey: request objects in, Authlib responses out."""

    def __init__(
        self, dcr: OpenBankingDCR, server: Any, store: BankStore, keys: IdTokenKeys
    ) -> None:
        self.dcr = dcr
        self.server = server
        self.store = store
        self.keys = keys

    @property
    def issuer(self) -> str:
        return str(self.dcr.urls.issuer)

    def _state(self) -> DCRState:
        return current_app.extensions[EXTENSION_KEY]  # type: ignore[no-any-return]

    # -- GET /authorize ----------------------------------------------------------------------

    def verify_request(self, args: Mapping[str, str]) -> PendingAuthorization:
        """The authorization request of ``args`` (the query), checked whole; the request
        object's values win over the query's. :class:`AuthorizationRefused` says why not."""
        client_id = args.get("client_id")
        if not client_id:
            raise AuthorizationRefused(
                "The request does not say which TPP it comes from (no client_id)."
            )
        stored = self._registered_client(client_id)
        if "request_uri" in args:
            raise AuthorizationRefused(
                "This bank does not fetch request objects (request_uri): the TPP must send it"
                " in the request parameter."
            )
        raw = args.get("request")
        if not raw:
            raise AuthorizationRefused(
                "The request has no request object: this bank accepts only authorization"
                " requests signed by the TPP (the request parameter)."
            )
        claims = self._verified_claims(stored, raw)
        return self._checked_request(stored, args, claims)

    def _registered_client(self, client_id: str) -> StoredClient:
        """The client, registered and not suspended; else :class:`AuthorizationRefused`."""
        stored = self.dcr.store.get(client_id)
        if stored is None:
            raise AuthorizationRefused("No TPP is registered at this bank with this client_id.")
        if suspension(stored) is not None:
            raise AuthorizationRefused("This TPP's registration is suspended at this bank.")
        return stored

    def _verified_claims(self, stored: StoredClient, raw: str) -> dict[str, Any]:
        registered = stored.metadata.get("request_object_signing_alg")
        unsigned = AuthorizationRefused(
            "The request object is not signed (alg none): this bank accepts only request"
            f" objects signed with the TPP's registered algorithm ({registered})."
        )
        try:
            header, _ = jose.peek(raw)
        except jose.MalformedJWS:
            if _unsecured(raw):  # an empty signature is no compact JWS: say what it is
                raise unsigned from None
            raise AuthorizationRefused("The request object is not a signed JWT.") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg.lower() == "none":
            raise unsigned
        if alg != registered:
            raise AuthorizationRefused(
                f"The request object is signed with {alg[:20]}, not with the algorithm this TPP"
                f" registered ({registered})."
            )
        if jose.KEY_BEARING_HEADERS & header.keys():
            raise AuthorizationRefused(
                "The request object's header carries or points at a key (jwk, jku, x5u or"
                " x5c): only the keys the Directory publishes for the TPP's software count."
            )
        kid = header.get("kid") if isinstance(header.get("kid"), str) else None
        state = self._state()
        endpoint = str(stored.ssa_claims.get("software_jwks_endpoint"))
        try:
            keys = state.jwks.candidate_keys(endpoint, kid=kid, alg=alg)
            key = jose.verify(raw, keys, alg)
        except JWKSUnavailable:
            raise AuthorizationRefused(
                "The bank cannot fetch the TPP's keys from the Directory right now; try again"
                " in a minute.",
                status=503,
            ) from None
        except (JWKSError, jose.BadSignature, jose.MalformedJWS):
            raise AuthorizationRefused(
                "The request object's signature does not verify with the keys the Directory"
                " publishes for the TPP's software."
            ) from None
        try:
            revoked = state.revoked_keys.find(stored.ssa_claims, kid=kid, key=key)
        except RegistrationError:  # the revoked key set cannot be had and is required
            raise AuthorizationRefused(
                "The bank cannot check the TPP's revoked keys right now; try again in a minute.",
                status=503,
            ) from None
        if revoked is not None:
            raise AuthorizationRefused(
                "The request object is signed with a key the Directory has revoked."
            )
        return jose.peek(raw)[1]

    def _checked_request(
        self, stored: StoredClient, args: Mapping[str, str], claims: dict[str, Any]
    ) -> PendingAuthorization:
        client_id = stored.client_id
        now = self._state().clock()
        skew = self.dcr.settings.clock_skew
        if claims.get("iss") != client_id:
            raise AuthorizationRefused(
                "The request object's issuer (iss) is not the TPP's client_id."
            )
        if claims.get("client_id") != args.get("client_id"):
            raise AuthorizationRefused(
                "The client_id of the request does not match the client_id inside the request"
                " object."
            )
        audiences = claims.get("aud")
        audiences = audiences if isinstance(audiences, list) else [audiences]
        if self.issuer not in audiences:
            raise AuthorizationRefused(
                f"The request object is meant for another bank: its audience (aud) is not"
                f" {self.issuer}."
            )
        exp, nbf = numeric_date(claims.get("exp")), numeric_date(claims.get("nbf"))
        if exp is None or nbf is None:
            raise AuthorizationRefused(
                "The request object must say when it is valid (exp and nbf)."
            )
        if now > exp + skew:
            raise AuthorizationRefused("The request object has expired (its exp has passed).")
        if nbf > now + skew:
            raise AuthorizationRefused("The request object is not valid yet (its nbf is ahead).")
        if exp - nbf > MAX_REQUEST_OBJECT_LIFETIME:
            raise AuthorizationRefused(
                "The request object's lifetime (exp - nbf) is over 60 minutes, the most FAPI"
                " allows."
            )
        iat = numeric_date(claims.get("iat")) if "iat" in claims else None
        if "iat" in claims and (iat is None or iat > now + skew):
            raise AuthorizationRefused("The request object's iat is not a past time.")
        if not isinstance(claims.get("jti"), str) or not claims["jti"]:
            raise AuthorizationRefused("The request object has no jti.")
        response_type = claims.get("response_type")
        if not isinstance(response_type, str) or set(response_type.split()) != {"code", "id_token"}:
            raise AuthorizationRefused(
                "The request object must ask for response_type 'code id_token'."
            )
        redirect_uri = claims.get("redirect_uri")
        if not isinstance(redirect_uri, str) or redirect_uri not in (
            stored.metadata.get("redirect_uris") or []
        ):
            raise AuthorizationRefused(
                "The redirect URI of the request object is not one the TPP registered."
            )
        scope = claims.get("scope")
        if not isinstance(scope, str) or "openid" not in scope.split():
            raise AuthorizationRefused("The request object's scope must include openid.")
        nonce = claims.get("nonce")
        if not isinstance(nonce, str) or not nonce:
            raise AuthorizationRefused("The request object has no nonce.")
        state = claims.get("state")
        if state is not None and not isinstance(state, str):
            raise AuthorizationRefused("The request object's state must be a string.")
        if stored.metadata.get("id_token_signed_response_alg") not in ID_TOKEN_ALGS:
            raise AuthorizationRefused(
                "The TPP registered an id_token algorithm this bank does not sign with"
                f" (it signs with {' or '.join(ID_TOKEN_ALGS)})."
            )
        consent_id, acr = self._asked_claims(claims)
        self._check_consent(client_id, consent_id)
        pending = PendingAuthorization(
            client_id=client_id,
            redirect_uri=redirect_uri,
            scope=scope,
            state=state,
            nonce=nonce,
            consent_id=consent_id,
            acr=acr,
        )
        self._authlib_grant(pending).validate_consent_request()  # Authlib's own checks too
        return pending

    @staticmethod
    def _asked_claims(claims: Mapping[str, Any]) -> tuple[str, str]:
        """The ConsentId and acr the request object's ``claims`` parameter asks for."""
        asked = claims.get("claims")
        id_token = asked.get("id_token") if isinstance(asked, dict) else None
        intent = id_token.get("openbanking_intent_id") if isinstance(id_token, dict) else None
        consent_id = intent.get("value") if isinstance(intent, dict) else None
        if not isinstance(consent_id, str) or not consent_id:
            raise AuthorizationRefused(
                "The request object does not name a consent (claims.id_token."
                "openbanking_intent_id.value)."
            )
        acr = id_token.get("acr") if isinstance(id_token, dict) else None
        if isinstance(acr, dict):
            values = acr.get("values", [acr.get("value")] if "value" in acr else None)
            if values is not None and (not isinstance(values, list) or ACR_SCA not in values):
                raise AuthorizationRefused(
                    f"The request object asks for an acr this bank does not give ({ACR_SCA} only)."
                )
        return consent_id, ACR_SCA

    def _check_consent(self, client_id: str, consent_id: str) -> None:
        consent = self.store.consent(consent_id)
        if consent is None or consent.client_id != client_id:
            raise AuthorizationRefused("The consent named in the request is unknown to this bank.")
        if consent.status != AWAITING:
            raise AuthorizationRefused(
                f"The consent named in the request is not awaiting authorisation (it is"
                f" {consent.status})."
            )
        if consent.is_expired(self.store.clock()):
            raise AuthorizationRefused("The consent named in the request has expired.")

    def _authlib_grant(self, pending: PendingAuthorization) -> Any:
        request = self.server.create_oauth2_request(None)
        request.payload = BasicOAuth2Payload(pending.payload())
        try:
            return _CheckedGrant(self.server.get_authorization_grant(request))
        except OAuth2Error as error:
            raise AuthorizationRefused(_words(error)) from None

    # -- the customer's decision ---------------------------------------------------------------

    def approve(
        self, pending: PendingAuthorization, *, customer: str, auth_time: int, accounts: list[str]
    ) -> Response:
        """The consent Authorised with ``accounts``: 302 to the redirect URI with ``code``,
        ``id_token`` and ``state`` in the fragment."""
        # checked again: an operator may have suspended the TPP since GET /authorize, and
        # Authlib's checks pass a suspended client (its token requests are what they refuse)
        self._registered_client(pending.client_id)
        grant = self._authlib_grant(pending)
        grant.validate_consent_request()
        self._check_consent(pending.client_id, pending.consent_id)
        if not self.store.authorise(pending.consent_id, customer=customer, accounts=accounts):
            raise AuthorizationRefused("The consent is no longer awaiting authorisation.")
        user = Authorisation(
            consent_id=pending.consent_id, customer=customer, auth_time=auth_time, acr=pending.acr
        )
        log.info("consent %s authorised for client %s", pending.consent_id, pending.client_id)
        return grant.respond(user)

    def deny(self, pending: PendingAuthorization) -> Response:
        """The consent Rejected: 302 to the redirect URI with ``error=access_denied``."""
        grant = self._authlib_grant(pending)
        grant.validate_consent_request()
        self.store.reject(pending.consent_id)
        log.info("consent %s rejected for client %s", pending.consent_id, pending.client_id)
        return grant.respond(None)

    # -- tokens ------------------------------------------------------------------------------

    def save_token(self, token: dict[str, Any], request: Any) -> None:
        """Authlib's ``save_token``: the extension keeps the access token (hashed, bound);
        a token of the authorization-code grant is also linked to its consent, and its
        refresh token kept hashed with the certificate it is bound to."""
        self.dcr.save_token(token, request)
        user = request.user
        if not isinstance(user, Authorisation):
            return  # client_credentials: no consent behind it
        access_token = token["access_token"]
        record = self.dcr.tokens.find(access_token)
        try:
            if record is None or user.code_hash is None:
                raise RuntimeError("the access token just saved is not found")
            self.store.link_access_token(
                record.token_hash,
                consent_id=user.consent_id,
                client_id=record.client_id,
                code_hash=user.code_hash,
                expires_at=record.expires_at,
            )
            if token.get("refresh_token"):
                self.store.save_refresh_token(
                    token["refresh_token"],
                    consent_id=user.consent_id,
                    client_id=record.client_id,
                    code_hash=user.code_hash,
                    scope=record.scope,
                    x5t_s256=record.x5t_s256,
                )
        except Exception:
            self.dcr.tokens.revoke(access_token)  # no token without its consent
            raise


class _CheckedGrant:
    """An Authlib authorization grant whose refusals are :class:`AuthorizationRefused`."""

    def __init__(self, grant: Any) -> None:
        self.grant = grant

    def validate_consent_request(self) -> None:
        try:
            self.grant.validate_consent_request()
        except OAuth2Error as error:
            raise AuthorizationRefused(_words(error)) from None

    def respond(self, user: Authorisation | None) -> Response:
        server = self.grant.server
        response: Response = server.create_authorization_response(
            request=self.grant.request, grant_user=user, grant=self.grant
        )
        return response


def _unsecured(raw: str) -> bool:
    """Whether ``raw`` is an unsecured JWT (RFC 7519 section 6: ``alg`` none, no signature)."""
    try:
        header = b64url_json(raw.split(".", 1)[0])
    except ValueError:  # not base64url JSON (binascii.Error and JSONDecodeError are ones)
        return False
    return isinstance(header, dict) and str(header.get("alg")).lower() == "none"


def _words(error: OAuth2Error) -> str:
    description = error.description or error.error
    return f"The authorization request is refused: {description}"
