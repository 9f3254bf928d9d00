"""OCSP (RFC 6960): ask the responder a certificate names whether it is revoked.

The request is one CertID (SHA-1 by default: what every responder understands; the hash only
identifies the issuer, it signs nothing) sent by POST as ``application/ocsp-request``. The
response is believed only when:

* its status is ``successful`` and it holds a single response for exactly our CertID
  (issuer name hash, issuer key hash, serial);
* it is signed, with an allow-listed algorithm (:mod:`.signature`), by the certificate's
  issuer, or by a responder certificate included in the response that the issuer signed, that
  carries the OCSP-signing extended key usage, and that is valid now;
* its thisUpdate is not in the future (beyond ``skew``) and its nextUpdate is not past. A
  response without a nextUpdate ("newer information is always available") is accepted only if
  its thisUpdate is at most ``max_age`` seconds old, so an old "good" cannot be replayed.

No nonce is sent: most responders pre-produce their responses (RFC 5019) and ignore one;
replay is bounded by thisUpdate/nextUpdate instead.
"""

from __future__ import annotations

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID

from ..fetch import FetchError
from .base import Answer, Fetch, NoAnswer, current_window, fetchable
from .signature import SignatureRefused, verify_signature

__all__ = ["CERT_ID_HASHES", "build_request", "ocsp_urls", "query", "verify_response"]

#: hashes a CertID may use (an identifier, not a signature: SHA-1 is the norm)
CERT_ID_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1,  # noqa: S303 - identifies the issuer, signs nothing
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}

#: a response carrying more certificates than this is not looked through
_MAX_RESPONDER_CERTIFICATES = 4
#: OCSP responses are small; a larger body is not one
MAX_RESPONSE_BYTES = 64 * 1024

_REASONS = {status: status.name.lower() for status in ocsp.OCSPCertStatus}


def ocsp_urls(certificate: x509.Certificate) -> tuple[str, ...]:
    """The http(s) OCSP responders the certificate's authorityInfoAccess names (at most
    :data:`~.base.MAX_URLS`)."""
    try:
        access = certificate.extensions.get_extension_for_class(
            x509.AuthorityInformationAccess
        ).value
    except x509.ExtensionNotFound:
        return ()
    return fetchable(
        description.access_location.value
        for description in access
        if description.access_method == AuthorityInformationAccessOID.OCSP
        and isinstance(description.access_location, x509.UniformResourceIdentifier)
    )


def build_request(
    certificate: x509.Certificate,
    issuer: x509.Certificate,
    algorithm: hashes.HashAlgorithm | None = None,
) -> bytes:
    """The DER OCSP request for ``certificate`` (CertID hashed with ``algorithm``, SHA-1 by
    default)."""
    builder = ocsp.OCSPRequestBuilder().add_certificate(
        certificate,
        issuer,
        algorithm if algorithm is not None else hashes.SHA1(),  # noqa: S303
    )
    return builder.build().public_bytes(serialization.Encoding.DER)


def query(
    fetch: Fetch,
    url: str,
    certificate: x509.Certificate,
    issuer: x509.Certificate,
    *,
    now: float,
    skew: float,
    max_age: float,
    algorithm: hashes.HashAlgorithm | None = None,
) -> Answer:
    """POST the request to ``url`` with ``fetch`` and verify the answer; :class:`NoAnswer`
    on any failure (unreachable, refused, malformed, badly signed, stale)."""
    request = build_request(certificate, issuer, algorithm)
    try:
        response = fetch(
            url,
            method="POST",
            body=request,
            headers={
                "Content-Type": "application/ocsp-request",
                "Accept": "application/ocsp-response",
            },
            max_bytes=MAX_RESPONSE_BYTES,
        )
    except FetchError as error:
        raise NoAnswer(str(error)) from error
    return verify_response(response.body, certificate, issuer, now=now, skew=skew, max_age=max_age)


def verify_response(
    data: bytes,
    certificate: x509.Certificate,
    issuer: x509.Certificate,
    *,
    now: float,
    skew: float,
    max_age: float,
) -> Answer:
    """The verified answer of a DER OCSP response about ``certificate`` (issued by
    ``issuer``); :class:`NoAnswer` unless every rule of the module docstring holds."""
    try:
        response = ocsp.load_der_ocsp_response(data)
    except ValueError as error:
        raise NoAnswer(f"not a DER OCSP response: {error}") from None
    if response.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        raise NoAnswer(f"the responder answered {response.response_status.name}")
    try:
        signer = _signer(response, issuer, now=now, skew=skew)
        verify_signature(
            signer.public_key(),
            response.signature,
            response.tbs_response_bytes,
            algorithm=response.signature_algorithm_oid,
            hash_algorithm=response.signature_hash_algorithm,
        )
        single = _single_response(response, certificate, issuer)
    except SignatureRefused as error:
        raise NoAnswer(f"response signature refused: {error}") from None
    except (ValueError, TypeError) as error:  # an odd encoding cryptography cannot read
        raise NoAnswer(f"response unreadable: {error}") from None
    this_update, next_update = current_window(
        "the response",
        single.this_update_utc,
        single.next_update_utc,
        now=now,
        skew=skew,
        max_age=max_age,
    )
    status = single.certificate_status
    if status == ocsp.OCSPCertStatus.GOOD:
        return Answer("good", this_update, next_update)
    if status == ocsp.OCSPCertStatus.REVOKED:
        reason = single.revocation_reason
        revoked_at = single.revocation_time_utc
        return Answer(
            "revoked",
            this_update,
            next_update,
            revoked_at=revoked_at.timestamp() if revoked_at is not None else None,
            reason=reason.name if reason is not None else None,
        )
    return Answer("unknown", this_update, next_update)


def _identifies(response: ocsp.OCSPResponse, candidate: x509.Certificate) -> bool:
    """Whether the response's ResponderID names ``candidate`` (by name or by key hash)."""
    if response.responder_name is not None:
        return response.responder_name == candidate.subject
    key_hash = x509.SubjectKeyIdentifier.from_public_key(candidate.public_key()).digest
    return response.responder_key_hash == key_hash  # SHA-1 of the key, as RFC 6960 says


def _signer(
    response: ocsp.OCSPResponse, issuer: x509.Certificate, *, now: float, skew: float
) -> x509.Certificate:
    if _identifies(response, issuer):
        return issuer
    for candidate in response.certificates[:_MAX_RESPONDER_CERTIFICATES]:
        if _identifies(response, candidate):
            _check_delegate(candidate, issuer, now=now, skew=skew)
            return candidate
    raise NoAnswer("the response is signed by neither the issuer nor a responder it delegated to")


def _check_delegate(
    responder: x509.Certificate, issuer: x509.Certificate, *, now: float, skew: float
) -> None:
    """A delegated responder: issued (and signed) by the issuer, OCSP-signing EKU, valid now."""
    subject = responder.subject.rfc4514_string()
    if responder.issuer != issuer.subject:
        raise NoAnswer(f"responder certificate {subject} is not issued by the certificate's issuer")
    verify_signature(
        issuer.public_key(),
        responder.signature,
        responder.tbs_certificate_bytes,
        algorithm=responder.signature_algorithm_oid,
        hash_algorithm=responder.signature_hash_algorithm,
    )
    try:
        usage = responder.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        usage = None
    if usage is None or ExtendedKeyUsageOID.OCSP_SIGNING not in usage:
        raise NoAnswer(f"responder certificate {subject} lacks the OCSP-signing key usage")
    try:
        key_usage = responder.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        key_usage = None
    if key_usage is not None and not key_usage.digital_signature:
        raise NoAnswer(f"responder certificate {subject} may not make signatures")
    if not (
        responder.not_valid_before_utc.timestamp() - skew
        <= now
        <= responder.not_valid_after_utc.timestamp() + skew
    ):
        raise NoAnswer(f"responder certificate {subject} is not valid now")


def _single_response(
    response: ocsp.OCSPResponse, certificate: x509.Certificate, issuer: x509.Certificate
) -> ocsp.OCSPSingleResponse:
    expected: dict[str, tuple[bytes, bytes]] = {}
    for single in response.responses:
        if single.serial_number != certificate.serial_number:
            continue
        name = single.hash_algorithm.name
        if name not in CERT_ID_HASHES:
            continue
        if name not in expected:
            request = (
                ocsp.OCSPRequestBuilder()
                .add_certificate(certificate, issuer, CERT_ID_HASHES[name]())
                .build()
            )
            expected[name] = (request.issuer_name_hash, request.issuer_key_hash)
        if (single.issuer_name_hash, single.issuer_key_hash) == expected[name]:
            return single
    raise NoAnswer("the response holds no answer about this certificate")
