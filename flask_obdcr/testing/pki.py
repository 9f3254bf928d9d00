"""A small PKI shaped like the Open Banking one: a root, an issuing CA, and leaf
certificates with the OB subject structure and no subjectAltName, as the real
transport and signing certificates have.

For revocation tests a CA can also name a CRL distribution point and an OCSP responder in the
certificates it issues (off by default), keep a register of the serials it revoked, and make
signed CRLs and OCSP responses from it, right or deliberately wrong (another key, a responder
without the OCSP-signing usage, past their nextUpdate). :mod:`flask_obdcr.testing.revocation`
serves them over HTTP.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

KeyType = Literal["RSA", "EC"]
#: what a leaf certificate is for (:meth:`CertificateAuthority.issue`)
Usage = Literal["transport", "signing", "server"]
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

#: the eIDAS organizationIdentifier attribute (ETSI EN 319 412-1)
ORGANIZATION_IDENTIFIER = x509.ObjectIdentifier("2.5.4.97")
#: what an OCSP responder says about a certificate (:meth:`CertificateAuthority.ocsp_response`)
OCSPStatus = Literal["good", "revoked", "unknown"]


def _utcnow() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def generate_key(key_type: KeyType = "RSA") -> PrivateKey:
    if key_type == "EC":
        return ec.generate_private_key(ec.SECP256R1())
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def ob_subject(software_id: str, org_id: str) -> x509.Name:
    """``CN=<software_id>, OU=<org_id>, O=OpenBanking, C=GB`` (RFC 4514 order)."""
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "GB"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "OpenBanking"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, org_id),
            x509.NameAttribute(NameOID.COMMON_NAME, software_id),
        ]
    )


def eidas_subject(org_id: str, org_name: str, organization_identifier: str) -> x509.Name:
    """An OBWAC/eIDAS-style subject carrying the PSD2 organizationIdentifier."""
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "GB"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, org_name),
            x509.NameAttribute(ORGANIZATION_IDENTIFIER, organization_identifier),
            x509.NameAttribute(NameOID.COMMON_NAME, org_id),
        ]
    )


def pem(certificate: x509.Certificate) -> str:
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


def key_pem(key: PrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


@dataclass(frozen=True)
class Revocation:
    """An entry of a CA's revocation register."""

    serial: int
    revoked_at: datetime.datetime
    reason: x509.ReasonFlags | None = x509.ReasonFlags.key_compromise


@dataclass(frozen=True)
class OCSPResponder:
    """A delegated OCSP responder: a certificate the CA issued for signing OCSP responses."""

    certificate: x509.Certificate
    key: PrivateKey


@dataclass
class CertificateAuthority:
    name: x509.Name
    key: PrivateKey
    certificate: x509.Certificate
    #: serial -> revocation, for :meth:`crl` and :meth:`ocsp_response`
    revoked: dict[int, Revocation] = field(default_factory=dict, repr=False, compare=False)
    #: the serials this CA issued; OCSP answers "unknown" for any other
    issued: set[int] = field(default_factory=set, repr=False, compare=False)

    @classmethod
    def from_pem(cls, certificate_pem: str | bytes, key_pem: str | bytes) -> CertificateAuthority:
        """A CA from its certificate and (unencrypted) private key, as :meth:`to_pem` wrote them."""
        if isinstance(certificate_pem, str):
            certificate_pem = certificate_pem.encode()
        if isinstance(key_pem, str):
            key_pem = key_pem.encode()
        certificate = x509.load_pem_x509_certificate(certificate_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
        if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
            raise ValueError("a CA key must be RSA or EC")
        certificate_key = certificate.public_key()
        if (
            not isinstance(certificate_key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey)
            or key.public_key().public_numbers() != certificate_key.public_numbers()
        ):
            raise ValueError("the private key does not belong to the CA certificate")
        return cls(certificate.subject, key, certificate)

    def to_pem(self) -> tuple[str, str]:
        """``(certificate PEM, private key PEM)``: keep the key secret (it is not encrypted)."""
        return pem(self.certificate), key_pem(self.key)

    @classmethod
    def root(
        cls, common_name: str, *, now: datetime.datetime | None = None
    ) -> CertificateAuthority:
        key = generate_key("RSA")
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.COUNTRY_NAME, "GB"),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "OpenBanking"),
                x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            ]
        )
        certificate = _ca_builder(name, name, key.public_key(), key.public_key(), now).sign(
            key, hashes.SHA256()
        )
        return cls(name, key, certificate)

    def intermediate(
        self,
        common_name: str,
        *,
        crl_url: str | None = None,
        ocsp_url: str | None = None,
    ) -> CertificateAuthority:
        """A CA this one issues; ``crl_url`` / ``ocsp_url`` name where its status is found."""
        key = generate_key("RSA")
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.COUNTRY_NAME, "GB"),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "OpenBanking"),
                x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            ]
        )
        builder = _ca_builder(name, self.name, key.public_key(), self.key.public_key(), None)
        builder = builder.add_extension(
            x509.BasicConstraints(ca=True, path_length=0), critical=True
        )
        builder = _revocation_pointers(builder, crl_url, ocsp_url)
        certificate = builder.sign(self.key, hashes.SHA256())
        self.issued.add(certificate.serial_number)
        return CertificateAuthority(name, key, certificate)

    def issue(
        self,
        subject: x509.Name,
        public_key,
        *,
        usage: Usage = "transport",
        not_before: datetime.datetime | None = None,
        not_after: datetime.datetime | None = None,
        dns_names: Sequence[str] = (),
        ip_addresses: Sequence[str] = (),
        crl_url: str | None = None,
        ocsp_url: str | None = None,
    ) -> x509.Certificate:
        """A leaf certificate. Transport certificates carry clientAuth (and serverAuth, as
        OB's do) and no subjectAltName; signing certificates digitalSignature and
        nonRepudiation only; ``server`` certificates a SAN, for the sandbox's HTTPS.
        ``crl_url`` adds a CRL distribution point, ``ocsp_url`` an OCSP responder
        (authorityInfoAccess); neither by default."""
        import ipaddress

        now = datetime.datetime.now(datetime.timezone.utc)
        not_before = not_before or now - datetime.timedelta(minutes=5)
        not_after = not_after or now + datetime.timedelta(days=365)
        is_rsa = isinstance(public_key, rsa.RSAPublicKey)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.name)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
        )
        if usage == "signing":
            builder = builder.add_extension(
                _key_usage(digital_signature=True, content_commitment=True), critical=True
            )
        else:
            builder = builder.add_extension(
                _key_usage(digital_signature=True, key_encipherment=is_rsa), critical=True
            ).add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH]
                ),
                critical=False,
            )
        if usage == "server":
            names: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
            names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        builder = _revocation_pointers(builder, crl_url, ocsp_url)
        certificate = builder.sign(self.key, hashes.SHA256())
        self.issued.add(certificate.serial_number)
        return certificate

    # -- revocation ----------------------------------------------------------------------

    def revoke(
        self,
        certificate: x509.Certificate | int,
        *,
        at: datetime.datetime | None = None,
        reason: x509.ReasonFlags | None = x509.ReasonFlags.key_compromise,
    ) -> None:
        """Put ``certificate`` (or a serial) on the register: on the next CRL, and revoked in
        every OCSP response from now on."""
        serial = certificate if isinstance(certificate, int) else certificate.serial_number
        revoked_at = at or _utcnow() - datetime.timedelta(seconds=1)
        self.revoked[serial] = Revocation(serial, revoked_at, reason)

    def reinstate(self, certificate: x509.Certificate | int) -> None:
        """Take ``certificate`` off the register (the end of a certificateHold)."""
        serial = certificate if isinstance(certificate, int) else certificate.serial_number
        self.revoked.pop(serial, None)

    def crl(
        self,
        *,
        now: datetime.datetime | None = None,
        this_update: datetime.datetime | None = None,
        validity: datetime.timedelta = datetime.timedelta(days=1),
        signing_key: PrivateKey | None = None,
        issuer_name: x509.Name | None = None,
        algorithm: hashes.SHA256 | hashes.SHA384 | hashes.SHA512 | None = None,
    ) -> x509.CertificateRevocationList:
        """A CRL of the register, thisUpdate ``this_update`` (default ``now``), nextUpdate
        ``validity`` later. Wrong ones for tests: ``signing_key`` (another key than the CA's),
        ``issuer_name`` (another issuer), ``algorithm`` (SHA-256 by default), a negative
        ``validity`` or an old ``this_update`` (past its nextUpdate)."""
        this_update = this_update or now or _utcnow()
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(issuer_name or self.name)
            .last_update(this_update)
            .next_update(this_update + validity)
            .add_extension(x509.CRLNumber(len(self.revoked) + 1), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
        )
        for entry in self.revoked.values():
            revoked = (
                x509.RevokedCertificateBuilder()
                .serial_number(entry.serial)
                .revocation_date(entry.revoked_at)
            )
            if entry.reason is not None:
                revoked = revoked.add_extension(x509.CRLReason(entry.reason), critical=False)
            builder = builder.add_revoked_certificate(revoked.build())
        return builder.sign(signing_key or self.key, algorithm or hashes.SHA256())

    def ocsp_responder(
        self,
        common_name: str = "OCSP Responder",
        *,
        ocsp_signing: bool = True,
        key_type: KeyType = "EC",
        signing_key: PrivateKey | None = None,
    ) -> OCSPResponder:
        """A delegated responder certificate issued by this CA, with the OCSP-signing extended
        key usage (without it when ``ocsp_signing`` is False, for tests; ``signing_key``
        signs the certificate in place of the CA's key, for tests too)."""
        key = generate_key(key_type)
        now = _utcnow()
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.COUNTRY_NAME, "GB"),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "OpenBanking"),
                x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            ]
        )
        # without the OCSP-signing usage it is an ordinary TLS client certificate
        usage = [
            ExtendedKeyUsageOID.OCSP_SIGNING if ocsp_signing else ExtendedKeyUsageOID.CLIENT_AUTH
        ]
        certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self.name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(digital_signature=True), critical=True)
            .add_extension(x509.ExtendedKeyUsage(usage), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()),
                critical=False,
            )
            .sign(signing_key or self.key, hashes.SHA256())
        )
        self.issued.add(certificate.serial_number)
        return OCSPResponder(certificate, key)

    def ocsp_response(
        self,
        request: bytes,
        *,
        now: datetime.datetime | None = None,
        responder: OCSPResponder | None = None,
        status: OCSPStatus | None = None,
        this_update: datetime.datetime | None = None,
        validity: datetime.timedelta | None = datetime.timedelta(hours=1),
        signing_key: PrivateKey | None = None,
        include_responder: bool = True,
        algorithm: hashes.HashAlgorithm | None = None,
    ) -> bytes:
        """The DER OCSP response to a DER ``request`` about one certificate of this CA.

        The status comes from the register (revoked), else "good" for a serial this CA issued
        and "unknown" for any other, unless ``status`` says otherwise. Signed by the CA itself,
        or by ``responder`` (its certificate included unless ``include_responder`` is False).
        thisUpdate is ``this_update`` (default ``now``); nextUpdate ``validity`` later (none
        when ``validity`` is None). Wrong ones for tests: ``signing_key`` (another key than
        the one the responder ID names), ``algorithm`` (SHA-256 by default), a past nextUpdate.
        A request about another CA's certificate gets an "unauthorized" response.
        """
        parsed = ocsp.load_der_ocsp_request(request)
        name_hash, key_hash = _cert_id_hashes(self.certificate, parsed.hash_algorithm)
        if (parsed.issuer_name_hash, parsed.issuer_key_hash) != (name_hash, key_hash):
            unauthorized = ocsp.OCSPResponseBuilder.build_unsuccessful(
                ocsp.OCSPResponseStatus.UNAUTHORIZED
            )
            return unauthorized.public_bytes(serialization.Encoding.DER)
        serial = parsed.serial_number
        revocation = self.revoked.get(serial)
        if status is None:
            if revocation is not None:
                status = "revoked"
            else:
                status = "good" if serial in self.issued else "unknown"
        if status == "revoked" and revocation is None:
            revocation = Revocation(serial, _utcnow() - datetime.timedelta(seconds=1))
        this_update = this_update or now or _utcnow()
        cert_status = {
            "good": ocsp.OCSPCertStatus.GOOD,
            "revoked": ocsp.OCSPCertStatus.REVOKED,
            "unknown": ocsp.OCSPCertStatus.UNKNOWN,
        }[status]
        builder = ocsp.OCSPResponseBuilder().add_response_by_hash(
            issuer_name_hash=parsed.issuer_name_hash,
            issuer_key_hash=parsed.issuer_key_hash,
            serial_number=serial,
            algorithm=parsed.hash_algorithm,
            cert_status=cert_status,
            this_update=this_update,
            next_update=this_update + validity if validity is not None else None,
            revocation_time=revocation.revoked_at if status == "revoked" and revocation else None,
            revocation_reason=(revocation.reason if status == "revoked" and revocation else None),
        )
        signer_certificate = responder.certificate if responder else self.certificate
        key = signing_key or (responder.key if responder else self.key)
        if signing_key is None:
            builder = builder.responder_id(ocsp.OCSPResponderEncoding.HASH, signer_certificate)
        else:
            # cryptography signs only with the key of the certificate the responder ID names:
            # name the real signer by its subject, through a look-alike carrying the wrong key
            impostor = _look_alike(signer_certificate.subject, signing_key)
            builder = builder.responder_id(ocsp.OCSPResponderEncoding.NAME, impostor)
        if responder is not None and include_responder:
            builder = builder.certificates([responder.certificate])
        response = builder.sign(key, algorithm or hashes.SHA256())
        return response.public_bytes(serialization.Encoding.DER)


def _revocation_pointers(
    builder: x509.CertificateBuilder, crl_url: str | None, ocsp_url: str | None
) -> x509.CertificateBuilder:
    if crl_url is not None:
        point = x509.DistributionPoint(
            full_name=[x509.UniformResourceIdentifier(crl_url)],
            relative_name=None,
            reasons=None,
            crl_issuer=None,
        )
        builder = builder.add_extension(x509.CRLDistributionPoints([point]), critical=False)
    if ocsp_url is not None:
        access = x509.AccessDescription(
            AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(ocsp_url)
        )
        builder = builder.add_extension(x509.AuthorityInformationAccess([access]), critical=False)
    return builder


def _look_alike(subject: x509.Name, key: PrivateKey) -> x509.Certificate:
    """A self-signed certificate with ``subject`` and ``key``: the name of a real signer on
    another key."""
    now = _utcnow()
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )


def _cert_id_hashes(
    issuer: x509.Certificate, algorithm: hashes.HashAlgorithm
) -> tuple[bytes, bytes]:
    """The issuer name hash and issuer key hash of an OCSP CertID (RFC 6960 section 4.1.1)."""
    name = hashes.Hash(algorithm)
    name.update(issuer.subject.public_bytes())
    key = issuer.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        bits = key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.PKCS1)
    elif isinstance(key, ec.EllipticCurvePublicKey):
        bits = key.public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
    else:
        raise ValueError(f"unsupported CA key {type(key).__name__}")
    key_hash = hashes.Hash(algorithm)
    key_hash.update(bits)
    return name.finalize(), key_hash.finalize()


def _key_usage(**flags: bool) -> x509.KeyUsage:
    values = dict.fromkeys(
        (
            "digital_signature",
            "content_commitment",
            "key_encipherment",
            "data_encipherment",
            "key_agreement",
            "key_cert_sign",
            "crl_sign",
            "encipher_only",
            "decipher_only",
        ),
        False,
    )
    values.update(flags)
    return x509.KeyUsage(**values)


def _ca_builder(subject, issuer, public_key, issuer_public_key, now):
    now = now or datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(_key_usage(key_cert_sign=True, crl_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
    )
    if subject == issuer:
        return builder.add_extension(
            x509.BasicConstraints(ca=True, path_length=None), critical=True
        )
    return builder.add_extension(
        x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_public_key), critical=False
    )
