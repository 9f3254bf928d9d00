"""Whether a transport certificate is one we trust: chain, validity, key and usage."""

from __future__ import annotations

import datetime
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from ..errors import InvalidClient

# Public descriptions (they go on the wire); the reason goes to ``detail`` (the log).
_NOT_TRUSTED = "The client certificate is not trusted."
_OUT_OF_VALIDITY = "The client certificate has expired or is not yet valid."
_NOT_CLIENT_CERTIFICATE = (
    "The client certificate is not a TLS client certificate (clientAuth extended key usage)."
)

# Leaf keys we accept: the CA/B Forum set that cryptography enforces for CA keys. cryptography
# checks the key of every *issuer* but not the leaf's own key, so without this a 1024-bit RSA or
# P-224 client certificate would pass (measured with cryptography 50).
_MIN_RSA_BITS = 2048
_ALLOWED_CURVES = ("secp256r1", "secp384r1", "secp521r1")


def _ee_policy() -> ExtensionPolicy:
    # Start from cryptography's WebPKI end-entity profile and relax only what the UK Open Banking
    # transport profile does not have:
    # * subjectAltName: OB transport certificates name the TPP in the subject DN
    #   (CN=<software_id>, OU=<org_id>, O=OpenBanking, C=GB) and carry no SAN, while the
    #   default client policy requires one.
    # * authorityKeyIdentifier: required by CA/B for the Web PKI; some OB/sandbox issuers omit it.
    #   It only helps path building; the issuer's signature is still verified.
    # Kept from the defaults: extendedKeyUsage, when present, must contain clientAuth (serverAuth
    # alongside it is fine; anyExtendedKeyUsage alone is refused); keyUsage must not assert
    # keyCertSign and basicConstraints must not say cA: a CA certificate is never a client
    # certificate. Added (docs/architecture.md, "Contract: tokens, published URLs and keys"): the
    # EKU must be present at all. RFC 5280 reads a missing EKU as "any use", but an OB signing
    # certificate has none and carries the same subject from the same CA as the TPP's transport
    # certificate, so it would pass for one.
    return (
        ExtensionPolicy.webpki_defaults_ee()
        .may_be_present(x509.SubjectAlternativeName, Criticality.AGNOSTIC, None)
        .may_be_present(x509.AuthorityKeyIdentifier, Criticality.NON_CRITICAL, None)
        .require_present(x509.ExtendedKeyUsage, Criticality.AGNOSTIC, _client_auth_usage)
    )


def _client_auth_usage(policy: object, certificate: object, eku: x509.ExtendedKeyUsage) -> None:
    if ExtendedKeyUsageOID.CLIENT_AUTH not in eku:
        raise ValueError("the extendedKeyUsage does not include clientAuth")


class TransportCertificateVerifier:
    """Checks that a TPP transport certificate chains to the configured trust anchors.

    A trust anchor may be a root CA, or the "OpenBanking Issuing CA" itself (what banks usually
    configure): any certificate in the store ends a chain, self-signed or not. Anchors must be CA
    certificates (basicConstraints cA, keyUsage keyCertSign, valid at verification time), as
    cryptography's CA policy checks the anchor like any other issuer.

    The store and extension policies are built once; each :meth:`verify` builds a verifier for
    its own ``now``, which is cheap, so an injected clock costs nothing. Signature checks
    dominate the chain check (figures in benchmarks/README.md).

    A TPP presents the same certificate on every call, so a chain that verified is remembered
    (a bounded LRU of ``cache_size`` certificates) with the one thing that can change its
    verdict for a fixed store: time. The entry holds the window in which every certificate of
    the verified chain is valid; a later call inside that window is the same verification with
    the same answer, and one outside it is verified afresh (and refused). Failures are never
    remembered. ``cache_size=0`` turns this off.
    """

    def __init__(
        self, trust_anchors: Sequence[x509.Certificate], *, cache_size: int = 1024
    ) -> None:
        anchors = list(trust_anchors)
        if not anchors:
            raise ValueError("at least one transport trust anchor certificate is required")
        for anchor in anchors:
            _require_ca(anchor)
        self._anchors = tuple(anchors)
        self._store = Store(anchors)
        self._ca_policy = ExtensionPolicy.webpki_defaults_ca()
        self._ee_policy = _ee_policy()
        self._cache_size = cache_size
        # (leaf, intermediates) -> (not before, not after) of the verified chain as a whole,
        # and the chain
        self._verified: OrderedDict[
            tuple[x509.Certificate, tuple[x509.Certificate, ...]],
            tuple[datetime.datetime, datetime.datetime, tuple[x509.Certificate, ...]],
        ] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def from_pem_file(cls, path: str | os.PathLike[str]) -> TransportCertificateVerifier:
        """Build a verifier from a PEM file holding one or more CA certificates."""
        with open(path, "rb") as fh:
            data = fh.read()
        try:
            anchors = x509.load_pem_x509_certificates(data)
        except ValueError as exc:
            raise ValueError(
                f"{os.fspath(path)}: no PEM certificates could be read: {exc}"
            ) from None
        try:
            return cls(anchors)
        except ValueError as exc:
            raise ValueError(f"{os.fspath(path)}: {exc}") from None

    @property
    def trust_anchors(self) -> tuple[x509.Certificate, ...]:
        """The configured anchors, in file order."""
        return self._anchors

    def verify(
        self,
        certificate: x509.Certificate,
        *,
        now: datetime.datetime,
        intermediates: Sequence[x509.Certificate] = (),
    ) -> tuple[x509.Certificate, ...]:
        """The verified chain (leaf first, the trust anchor last); ``InvalidClient`` unless
        ``certificate`` is a valid client certificate at ``now``.

        ``now`` may be aware (any zone) or naive (taken as UTC). Validity bounds are inclusive,
        as in RFC 5280: valid at exactly ``notAfter``, expired one second later.
        """
        now = _as_utc(now)

        key = (certificate, tuple(intermediates))
        if self._cache_size:
            # a chain verified before, valid as a whole at `now` (the leaf included)
            with self._lock:
                remembered = self._verified.get(key)
                if remembered is not None:
                    self._verified.move_to_end(key)
            if remembered is not None and remembered[0] <= now <= remembered[1]:
                return remembered[2]

        # Checked here rather than left to the chain builder so that the public description can
        # say what is wrong: the builder reports every failure as "validation failed: ...".
        not_before, not_after = certificate.not_valid_before_utc, certificate.not_valid_after_utc
        if now < not_before or now > not_after:
            raise InvalidClient(
                _OUT_OF_VALIDITY,
                detail=(
                    f"client certificate {certificate.subject.rfc4514_string()} is valid from "
                    f"{not_before.isoformat()} to {not_after.isoformat()}; now is {now.isoformat()}"
                ),
            )

        weak = _weak_key_reason(certificate)
        if weak is not None:
            raise InvalidClient(_NOT_TRUSTED, detail=weak)
        usage = _client_auth_reason(certificate)
        if usage is not None:
            raise InvalidClient(_NOT_CLIENT_CERTIFICATE, detail=usage)

        verifier = (
            PolicyBuilder()
            .store(self._store)
            .time(now)
            .extension_policies(ca_policy=self._ca_policy, ee_policy=self._ee_policy)
            .build_client_verifier()
        )
        try:
            verified = verifier.verify(certificate, list(intermediates))
        except (VerificationError, x509.UnsupportedGeneralNameType, ValueError) as exc:
            # UnsupportedGeneralNameType: raised after the chain is built, when the leaf's SAN
            # holds a name type cryptography cannot represent. Refused rather than guessed at.
            raise InvalidClient(
                _NOT_TRUSTED,
                detail=f"client certificate {certificate.subject.rfc4514_string()}: {exc}",
            ) from exc
        chain = tuple(verified.chain)
        if self._cache_size:
            entry = (
                max(c.not_valid_before_utc for c in chain),
                min(c.not_valid_after_utc for c in chain),
                chain,
            )
            with self._lock:
                self._verified[key] = entry
                self._verified.move_to_end(key)
                while len(self._verified) > self._cache_size:
                    self._verified.popitem(last=False)
        return chain


def _client_auth_reason(certificate: x509.Certificate) -> str | None:
    subject = certificate.subject.rfc4514_string()
    try:
        eku = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        return f"client certificate {subject} has no extendedKeyUsage (clientAuth required)"
    if ExtendedKeyUsageOID.CLIENT_AUTH not in eku:
        return f"client certificate {subject} extendedKeyUsage lacks clientAuth"
    return None


def _require_ca(anchor: x509.Certificate) -> None:
    # cryptography would reject a non-CA anchor at verification time, making every client
    # "not trusted"; say so at start-up instead.
    try:
        bc = anchor.extensions.get_extension_for_class(x509.BasicConstraints).value
        ku = anchor.extensions.get_extension_for_class(x509.KeyUsage).value
        is_ca = bc.ca and ku.key_cert_sign
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise ValueError(
            f"trust anchor {anchor.subject.rfc4514_string()} is not a CA certificate "
            "(needs basicConstraints cA=TRUE and keyUsage keyCertSign)"
        )


def _weak_key_reason(certificate: x509.Certificate) -> str | None:
    key = certificate.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < _MIN_RSA_BITS:
            return f"client certificate RSA key has {key.key_size} bits; {_MIN_RSA_BITS} needed"
        return None
    if isinstance(key, ec.EllipticCurvePublicKey):
        if key.curve.name not in _ALLOWED_CURVES:
            return f"client certificate EC curve {key.curve.name} is not accepted"
        return None
    return f"client certificate key type {type(key).__name__} is not accepted"


def _as_utc(now: datetime.datetime) -> datetime.datetime:
    if now.tzinfo is None:
        return now.replace(tzinfo=datetime.timezone.utc)
    return now.astimezone(datetime.timezone.utc)
