"""The mutual-TLS certificate: trusted, valid now, and the SSA's software's own."""

from __future__ import annotations

from ..errors import InvalidClient, InvalidSoftwareStatement
from ..jwks import JWKSError
from .base import RegistrationContext


class TransportCertificate:
    """The mTLS certificate: trusted, valid now, a client certificate, and bound to the SSA's
    software or organisation by one of the binding rules."""

    name = "transport_certificate"
    clause = (
        'OB DCR v3.3 "Authentication", POST Operations (TLS mutual authentication); RFC 8705'
        ' §2.1 (PKI mutual-TLS: a chain to a trusted CA); docs/architecture.md "Contract:'
        ' registration rules" (a transport certificate belongs to the SSA), "Contract:'
        ' tokens, published URLs and keys" (clientAuth usage), "Contract: revocation"'
    )

    def __call__(self, context: RegistrationContext) -> None:
        certificate = context.certificate
        if certificate is None:
            raise InvalidClient("A client certificate is required (mutual TLS).")
        context.certificates.verify(certificate, now=context.now)
        try:
            # the cache's own document, not a copy: the binding rules only read it
            software_jwks = context.jwks.shared_document(context.software_jwks_endpoint)
        except JWKSError:
            software_jwks = None
        rule = context.certificates.binding(
            certificate, ssa_claims=context.ssa_claims, software_jwks=software_jwks
        )
        if rule is None:
            raise InvalidSoftwareStatement(
                "The client certificate does not belong to the software statement's software"
                " or organisation.",
                detail=f"certificate subject {certificate.subject.rfc4514_string()!r}",
            )
        context.certificate_binding = rule
