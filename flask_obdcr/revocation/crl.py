"""CRLs (RFC 5280 section 5): the list a certificate's distribution point names.

A CRL is believed only when it is a complete CRL (not a delta, not indirect, covering every
reason and the kind of certificate asked about), its issuer is the certificate's issuer, it is
signed with the issuer's key by an allow-listed algorithm (:mod:`.signature`) and the issuer
may sign CRLs (keyUsage cRLSign, when the issuer states a keyUsage), its thisUpdate is not in
the future (beyond ``skew``) and its nextUpdate is not past. A CRL without a nextUpdate (RFC
5280 requires one) is used for ``max_age`` seconds from its thisUpdate at most.

Distribution points are fetched over http or https, DER or PEM. A distribution point that
names a CRL issuer of its own (an indirect CRL) or only some reasons is not used.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography import x509

from ..fetch import FetchError
from .base import Answer, Fetch, NoAnswer, current_window, fetchable, uris
from .signature import SignatureRefused, verify_signature

__all__ = ["VerifiedCRL", "crl_urls", "fetch_crl", "load_crl", "verify_crl"]


def crl_urls(certificate: x509.Certificate) -> tuple[str, ...]:
    """The http(s) CRL distribution points of the certificate (at most
    :data:`~.base.MAX_URLS`)."""
    try:
        points = certificate.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
    except x509.ExtensionNotFound:
        return ()
    urls: list[str] = []
    for point in points:
        if point.crl_issuer or point.reasons:
            continue  # indirect or partitioned by reason: not a complete answer
        urls.extend(uris(point.full_name))
    return fetchable(urls)


def load_crl(data: bytes) -> x509.CertificateRevocationList:
    """A CRL from DER or PEM bytes; :class:`NoAnswer` if it is neither."""
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_crl(data.strip())
        return x509.load_der_x509_crl(data)
    except ValueError as error:
        raise NoAnswer(f"not a CRL: {error}") from None


@dataclass(frozen=True)
class VerifiedCRL:
    """A CRL whose signature, issuer, scope and times were checked. Times are POSIX seconds."""

    url: str
    crl: x509.CertificateRevocationList
    this_update: float
    next_update: float | None
    fetched_at: float
    #: whether it lists only CA certificates (True), only end entities (False), or both (None)
    only_ca: bool | None

    def status_of(self, certificate: x509.Certificate) -> Answer:
        """The answer this CRL gives about ``certificate`` (which its issuer issued)."""
        is_ca = _is_ca(certificate)
        if self.only_ca is not None and self.only_ca != is_ca:
            raise NoAnswer("the CRL does not cover this kind of certificate")
        entry = self.crl.get_revoked_certificate_by_serial_number(certificate.serial_number)
        if entry is None:
            return Answer("good", self.this_update, self.next_update)
        reason: str | None = None
        try:
            reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason.name
        except x509.ExtensionNotFound:
            pass
        if reason == "remove_from_crl":  # only meaningful in delta CRLs: not revoked
            return Answer("good", self.this_update, self.next_update)
        return Answer(
            "revoked",
            self.this_update,
            self.next_update,
            revoked_at=entry.revocation_date_utc.timestamp(),
            reason=reason,
        )


def verify_crl(
    crl: x509.CertificateRevocationList,
    issuer: x509.Certificate,
    *,
    url: str,
    now: float,
    skew: float,
    max_age: float,
) -> VerifiedCRL:
    """Check ``crl`` against ``issuer`` (see the module docstring); :class:`NoAnswer` if it
    may not be relied on."""
    if crl.issuer != issuer.subject:
        raise NoAnswer(
            f"the CRL is issued by {crl.issuer.rfc4514_string()}, not by the certificate's "
            f"issuer {issuer.subject.rfc4514_string()}"
        )
    try:
        key_usage = issuer.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        key_usage = None
    if key_usage is not None and not key_usage.crl_sign:
        raise NoAnswer("the CRL's issuer may not sign CRLs (keyUsage lacks cRLSign)")
    try:
        verify_signature(
            issuer.public_key(),
            crl.signature,
            crl.tbs_certlist_bytes,
            algorithm=crl.signature_algorithm_oid,
            hash_algorithm=crl.signature_hash_algorithm,
        )
    except SignatureRefused as error:
        raise NoAnswer(f"CRL signature refused: {error}") from None
    except (ValueError, TypeError) as error:
        raise NoAnswer(f"CRL unreadable: {error}") from None
    only_ca = _scope(crl)
    this_update, next_update = current_window(
        "the CRL", crl.last_update_utc, crl.next_update_utc, now=now, skew=skew, max_age=max_age
    )
    return VerifiedCRL(url, crl, this_update, next_update, fetched_at=now, only_ca=only_ca)


def fetch_crl(
    fetch: Fetch,
    url: str,
    issuer: x509.Certificate,
    *,
    now: float,
    skew: float,
    max_age: float,
    max_bytes: int | None = None,
) -> VerifiedCRL:
    """Fetch, parse and verify the CRL at ``url``; :class:`NoAnswer` on any failure."""
    try:
        response = fetch(
            url,
            headers={"Accept": "application/pkix-crl, application/x-pkcs7-crl, */*"},
            max_bytes=max_bytes,
        )
    except FetchError as error:
        raise NoAnswer(str(error)) from error
    crl = load_crl(response.body)
    return verify_crl(crl, issuer, url=url, now=now, skew=skew, max_age=max_age)


def _is_ca(certificate: x509.Certificate) -> bool:
    try:
        return certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False


def _scope(crl: x509.CertificateRevocationList) -> bool | None:
    """Which certificates the CRL covers; :class:`NoAnswer` for a CRL we cannot use."""
    only_ca: bool | None = None
    for extension in crl.extensions:
        value = extension.value
        if isinstance(value, x509.DeltaCRLIndicator):
            raise NoAnswer("a delta CRL is not a complete list")
        if isinstance(value, x509.IssuingDistributionPoint):
            if value.indirect_crl or value.only_some_reasons or value.only_contains_attribute_certs:
                raise NoAnswer("the CRL is indirect or partial; it is not used")
            if value.only_contains_ca_certs:
                only_ca = True
            elif value.only_contains_user_certs:
                only_ca = False
        elif extension.critical and isinstance(value, x509.UnrecognizedExtension):
            oid = extension.oid.dotted_string
            raise NoAnswer(f"the CRL has an unknown critical extension {oid}")
    return only_ca
