"""A small PKI shaped like the Open Banking one: a root, an issuing CA, and leaf
certificates with the OB subject structure and no subjectAltName, as the real
transport and signing certificates have."""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

KeyType = Literal["RSA", "EC"]
#: what a leaf certificate is for (:meth:`CertificateAuthority.issue`)
Usage = Literal["transport", "signing", "server"]
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

#: the eIDAS organizationIdentifier attribute (ETSI EN 319 412-1)
ORGANIZATION_IDENTIFIER = x509.ObjectIdentifier("2.5.4.97")


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


@dataclass
class CertificateAuthority:
    name: x509.Name
    key: PrivateKey
    certificate: x509.Certificate

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

    def intermediate(self, common_name: str) -> CertificateAuthority:
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
        return CertificateAuthority(name, key, builder.sign(self.key, hashes.SHA256()))

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
    ) -> x509.Certificate:
        """A leaf certificate. Transport certificates carry clientAuth (and serverAuth, as
        OB's do) and no subjectAltName; signing certificates digitalSignature and
        nonRepudiation only; ``server`` certificates a SAN, for the sandbox's HTTPS."""
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
        return builder.sign(self.key, hashes.SHA256())


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
