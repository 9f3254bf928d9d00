"""The client metadata: auth method, grant and response types, scope, algorithms."""

from __future__ import annotations

from collections.abc import Mapping

from ..certificates import certificate_matches_dn
from ..errors import InvalidClient, InvalidClientMetadata
from .base import RegistrationContext, claim_strings

GRANT_TYPES = frozenset({"authorization_code", "client_credentials", "refresh_token"})
RESPONSE_TYPES = ("code", "code id_token")
DEFAULT_RESPONSE_TYPES = ["code id_token"]  # OB DCR data dictionary
DEFAULT_GRANT_TYPES = ["authorization_code"]  # RFC 7591 section 2
APPLICATION_TYPES = ("web", "mobile")
#: OB scope -> the SSA software role it needs; "openid" needs none
ROLE_SCOPES: Mapping[str, str] = {
    "accounts": "AISP",
    "payments": "PISP",
    "fundsconfirmations": "CBPII",
}
ALG_CLAIMS = (
    "token_endpoint_auth_signing_alg",
    "id_token_signed_response_alg",
    "request_object_signing_alg",
)
#: 1..1 in the OB DCR data dictionary, and required in the OpenAPI's registration response:
#: with no default FAPI allows (OIDC's is RS256), a request without them is refused
REQUIRED_ALG_CLAIMS = ("id_token_signed_response_alg", "request_object_signing_alg")
MAX_DN_LENGTH = 1024


def _string_claim(claims: dict, name: str, *, required: bool = False) -> str | None:
    value = claims.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise InvalidClientMetadata(f"{name} must be a non-empty string.")
    return value


class TokenEndpointAuth:
    """token_endpoint_auth_method and the claims it makes mandatory."""

    name = "token_endpoint_auth"
    clause = (
        'OB DCR v3.3 "OBClientRegistrationRequest1" data dictionary, token_endpoint_auth_method,'
        " token_endpoint_auth_signing_alg, tls_client_auth_subject_dn; RFC 7591 §2"
        " (token_endpoint_auth_method); RFC 8705 §2.1.2 (tls_client_auth_subject_dn);"
        ' docs/architecture.md "Contract: configuration and the extension"'
        " (OBDCR_TOKEN_ENDPOINT_AUTH_METHODS)"
    )

    def __call__(self, context: RegistrationContext) -> None:
        claims, settings = context.request_claims, context.rules
        method = _string_claim(claims, "token_endpoint_auth_method", required=True)
        if method not in settings.token_endpoint_auth_methods:
            raise InvalidClientMetadata(
                f"token_endpoint_auth_method {method!r} is not supported; supported:"
                f" {', '.join(settings.token_endpoint_auth_methods)}."
            )
        metadata = context.metadata
        metadata["token_endpoint_auth_method"] = method
        signing_alg = _string_claim(claims, "token_endpoint_auth_signing_alg")
        if method == "private_key_jwt" and signing_alg is None:
            raise InvalidClientMetadata(
                "token_endpoint_auth_signing_alg is required with private_key_jwt."
            )
        if signing_alg is not None:
            metadata["token_endpoint_auth_signing_alg"] = signing_alg

        subject_dn = _string_claim(claims, "tls_client_auth_subject_dn")
        if method == "tls_client_auth":
            if subject_dn is None:
                raise InvalidClientMetadata(
                    "tls_client_auth_subject_dn is required with tls_client_auth."
                )
            certificate = context.certificate
            if certificate is None:
                raise InvalidClient("A client certificate is required.")
            if len(subject_dn) > MAX_DN_LENGTH or not certificate_matches_dn(
                subject_dn, certificate
            ):
                raise InvalidClientMetadata(
                    "tls_client_auth_subject_dn does not match the subject of the presented"
                    " certificate.",
                    detail=f"registered {subject_dn!r}, presented"
                    f" {certificate.subject.rfc4514_string()!r}",
                )
            metadata["tls_client_auth_subject_dn"] = subject_dn
        # with another method the claim means nothing; it is ignored, as the spec allows


class GrantTypes:
    name = "grant_types"
    clause = (
        'OB DCR v3.3 "OBClientRegistrationRequest1" data dictionary, grant_types and response_types'
        " (default code id_token); RFC 7591 §2 (grant_types, response_types; default"
        " authorization_code) and §2.1"
    )

    def __call__(self, context: RegistrationContext) -> None:
        claims = context.request_claims
        grants = claim_strings(claims.get("grant_types", DEFAULT_GRANT_TYPES))
        if not grants or not set(grants) <= GRANT_TYPES:
            raise InvalidClientMetadata(
                f"grant_types must be drawn from {', '.join(sorted(GRANT_TYPES))}."
            )
        responses = claim_strings(claims.get("response_types", DEFAULT_RESPONSE_TYPES))
        if responses is None or not responses or not set(responses) <= set(RESPONSE_TYPES):
            raise InvalidClientMetadata(
                f"response_types must be drawn from {', '.join(RESPONSE_TYPES)}."
            )
        context.metadata["grant_types"] = list(dict.fromkeys(grants))
        context.metadata["response_types"] = list(dict.fromkeys(responses))


class Scope:
    """scope: within what the SSA's software roles allow (defaults to all of it)."""

    name = "scope"
    clause = (
        'OB DCR v3.3 "OBClientRegistrationRequest1" data dictionary, scope, and "Data Mapping",'
        " scope (a subset of the SSA's); RFC 7591 §2 (scope); docs/architecture.md"
        ' "Contract: registration rules" (Scopes and roles)'
    )

    def __init__(self, role_scopes: Mapping[str, str] = ROLE_SCOPES) -> None:
        self.role_scopes = dict(role_scopes)

    def __call__(self, context: RegistrationContext) -> None:
        roles = set(claim_strings(context.ssa_claims.get("software_roles")) or [])
        allowed = ["openid"] + [s for s, role in self.role_scopes.items() if role in roles]
        requested = context.request_claims.get("scope")
        if requested is None or requested == "":
            scopes = allowed  # "if not specified, default scopes are assigned by the AS"
        elif not isinstance(requested, str):
            raise InvalidClientMetadata("scope must be a space-separated string.")
        else:
            scopes = list(dict.fromkeys(requested.split()))
            beyond = [s for s in scopes if s not in allowed]
            if beyond:
                raise InvalidClientMetadata(
                    f"scope {' '.join(beyond)!r} is beyond what the software roles allow"
                    f" ({' '.join(allowed)})."
                )
        context.metadata["scope"] = " ".join(scopes)


class ApplicationType:
    name = "application_type"
    clause = (
        'OB DCR v3.3 "OBClientRegistrationRequest1" data dictionary, application_type (web,'
        " mobile); OpenID Connect Dynamic Client Registration 1.0 §2 (application_type)"
    )

    def __call__(self, context: RegistrationContext) -> None:
        value = context.request_claims.get("application_type", "web")
        if value not in APPLICATION_TYPES:
            raise InvalidClientMetadata(
                f"application_type must be one of {', '.join(APPLICATION_TYPES)}."
            )
        context.metadata["application_type"] = value


class SigningAlgorithms:
    """Every *_alg claim within the algorithms this server accepts (never none, never HS*)."""

    name = "signing_algorithms"
    clause = (
        'OB DCR v3.3 "OBClientRegistrationRequest1" data dictionary, id_token_signed_response_alg'
        " and request_object_signing_alg (1..1), token_endpoint_auth_signing_alg; OpenID"
        ' Connect Dynamic Client Registration 1.0 §2; docs/architecture.md "Contract:'
        ' configuration and the extension" (OBDCR_SIGNING_ALGS)'
    )

    def __call__(self, context: RegistrationContext) -> None:
        claims, accepted = context.request_claims, context.rules.signing_algs
        for name in ALG_CLAIMS:
            if name not in claims:
                if name in REQUIRED_ALG_CLAIMS:
                    raise InvalidClientMetadata(f"{name} is required.")
                continue
            value = claims[name]
            if value not in accepted:
                raise InvalidClientMetadata(
                    f"{name} {value!r} is not supported; supported: {', '.join(accepted)}."
                )
            context.metadata[name] = value
