"""The registration validation pipeline and its default policies, in order.

>>> from flask_obdcr.policies import default_pipeline, policy
>>> pipeline = default_pipeline()
>>> @policy("only_aisps")
... def only_aisps(context):
...     ...
>>> pipeline.insert_after("scope", only_aisps)  # doctest: +ELLIPSIS
<flask_obdcr.policies.base.Pipeline object at ...>
"""

from .base import Pipeline, Policy, RegistrationContext, policy
from .client_metadata import (
    ROLE_SCOPES,
    ApplicationType,
    GrantTypes,
    Scope,
    SigningAlgorithms,
    TokenEndpointAuth,
)
from .key_revocation import KeyRevocation
from .redirect_uris import RedirectURIs
from .request_body import MEDIA_TYPES, RequestBody
from .request_claims import RequestClaims
from .request_jwt import RequestJWT
from .request_signature import RequestSignature
from .software_statement import SoftwareStatement
from .transport_certificate import TransportCertificate


def default_pipeline() -> Pipeline:
    """The OB DCR checks, in the order they run."""
    return Pipeline(
        [
            RequestBody(),  # request_body: media type, size, compact JWS
            RequestJWT(),  # request_jwt: decoded unverified, alg allowed, SSA taken out
            SoftwareStatement(),  # software_statement: verified with the Directory's JWKS
            RequestSignature(),  # request_signature: verified with the software JWKS
            RequestClaims(),  # request_claims: iss, aud, exp, iat, jti
            RedirectURIs(),  # redirect_uris
            TokenEndpointAuth(),  # token_endpoint_auth
            GrantTypes(),  # grant_types (and response_types)
            Scope(),  # scope
            ApplicationType(),  # application_type
            SigningAlgorithms(),  # signing_algorithms
            TransportCertificate(),  # transport_certificate: chain and binding to the SSA
            KeyRevocation(),  # key_revocation: request and certificate keys not revoked
        ]
    )


__all__ = [
    "MEDIA_TYPES",
    "ROLE_SCOPES",
    "ApplicationType",
    "GrantTypes",
    "KeyRevocation",
    "Pipeline",
    "Policy",
    "RedirectURIs",
    "RegistrationContext",
    "RequestBody",
    "RequestClaims",
    "RequestJWT",
    "RequestSignature",
    "Scope",
    "SigningAlgorithms",
    "SoftwareStatement",
    "TokenEndpointAuth",
    "TransportCertificate",
    "default_pipeline",
    "policy",
]
