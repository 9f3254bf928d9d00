"""Tests for flask_obdcr.certificates: loading, environ extraction, chains, DNs, SSA binding.

A small PKI is generated once per module (RSA key generation is the slow part): a root CA, an
"OpenBanking Issuing CA" under it, transport certificates in the real OB profile (subject
CN=<software_id>, OU=<org_id>, O=OpenBanking, C=GB; no subjectAltName), an eIDAS-like
certificate carrying organizationIdentifier, and the broken ones.
"""

from __future__ import annotations

import ast
import base64
import datetime as dt
import hashlib
import urllib.parse
from pathlib import Path
from types import SimpleNamespace

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from flask_obdcr.certificates import (
    TransportCertificateVerifier,
    certificate_belongs_to_software,
    certificate_matches_dn,
    client_certificate_from_environ,
    dn_matches,
    load_certificate,
    parse_dn,
    psd_identifier,
    thumbprint_sha256,
)
from flask_obdcr.errors import InvalidClient

NOW = dt.datetime(2025, 6, 1, 12, 0, 0, tzinfo=dt.timezone.utc)
DAY = dt.timedelta(days=1)
SECOND = dt.timedelta(seconds=1)

SOFTWARE_ID = "3KM4bnHtBhBm1GW7DsrSwj"
OTHER_SOFTWARE_ID = "9ZxYwVuTsRqPoNmLkJiHgF"
ORG_ID = "0015800001041REAAY"
REGISTRATION_ID = "Unknown0015800001041REAAY"
PSD_ID = "PSDGB-OB-Unknown0015800001041REAAY"

SSA_CLAIMS = {
    "software_id": SOFTWARE_ID,
    "org_id": ORG_ID,
    "organisation_competent_authority_claims": {
        "authority_id": "OBGBR",
        "registration_id": REGISTRATION_ID,
        "status": "Active",
        "authorisations": [{"member_state": "GB", "roles": ["AISP", "PISP"]}],
    },
}

NOT_TRUSTED = "The client certificate is not trusted."
OUT_OF_VALIDITY = "The client certificate has expired or is not yet valid."
UNPARSEABLE = "The client certificate could not be parsed."
NOT_CLIENT = (
    "The client certificate is not a TLS client certificate (clientAuth extended key usage)."
)

COUNTRY, ORG_NAME, ORG_UNIT, COMMON = (
    NameOID.COUNTRY_NAME,
    NameOID.ORGANIZATION_NAME,
    NameOID.ORGANIZATIONAL_UNIT_NAME,
    NameOID.COMMON_NAME,
)
ORG_IDENTIFIER = NameOID.ORGANIZATION_IDENTIFIER


# --------------------------------------------------------------------------------------------
# A small PKI
# --------------------------------------------------------------------------------------------


def name(*pairs: tuple[x509.ObjectIdentifier, str]) -> x509.Name:
    """A Name from (oid, value) pairs in certificate (ASN.1) order: country first."""
    return x509.Name([x509.NameAttribute(oid, value) for oid, value in pairs])


def ob_subject(software_id: str = SOFTWARE_ID, org_id: str = ORG_ID) -> x509.Name:
    return name(
        (COUNTRY, "GB"), (ORG_NAME, "OpenBanking"), (ORG_UNIT, org_id), (COMMON, software_id)
    )


def make_ca(subject, key, issuer_name, issuer_key, *, path_length, not_after=NOW + 3650 * DAY):
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - 1000 * DAY)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
        .sign(issuer_key, hashes.SHA256())
    )


def make_leaf(
    subject,
    key,
    issuer,
    issuer_key,
    *,
    not_before=NOW - 30 * DAY,
    not_after=NOW + 365 * DAY,
    eku=(ExtendedKeyUsageOID.CLIENT_AUTH, ExtendedKeyUsageOID.SERVER_AUTH),
    san=None,
    aki=True,
):
    is_rsa = isinstance(key, rsa.RSAPrivateKey)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=is_rsa,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
    if san is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    if aki:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki() -> SimpleNamespace:
    root_key = ec.generate_private_key(ec.SECP256R1())
    ica_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    other_key = ec.generate_private_key(ec.SECP256R1())
    weak_key = rsa.generate_private_key(public_exponent=65537, key_size=1024)

    root_name = name((COUNTRY, "GB"), (ORG_NAME, "OpenBanking"), (COMMON, "OpenBanking Root CA"))
    ica_name = name((COUNTRY, "GB"), (ORG_NAME, "OpenBanking"), (COMMON, "OpenBanking Issuing CA"))
    root = make_ca(root_name, root_key, root_name, root_key, path_length=1)
    ica = make_ca(ica_name, ica_key, root_name, root_key, path_length=0)

    # Another CA, and an impostor with the very same name as the OB issuing CA.
    other_name = name((COUNTRY, "GB"), (ORG_NAME, "Elsewhere"), (COMMON, "Elsewhere CA"))
    other_ca = make_ca(other_name, other_key, other_name, other_key, path_length=0)
    impostor_ica = make_ca(ica_name, other_key, ica_name, other_key, path_length=0)

    eidas_subject = name(
        (COUNTRY, "GB"),
        (ORG_NAME, "Acme Payments Ltd"),
        (ORG_IDENTIFIER, PSD_ID),
        (COMMON, ORG_ID),
    )
    return SimpleNamespace(
        root=root,
        ica=ica,
        ica_key=ica_key,
        other_ca=other_ca,
        rsa_key=rsa_key,
        ec_key=ec_key,
        rsa_leaf=make_leaf(ob_subject(), rsa_key, ica, ica_key),
        ec_leaf=make_leaf(
            ob_subject(), ec_key, ica, ica_key, eku=[ExtendedKeyUsageOID.CLIENT_AUTH]
        ),
        other_software=make_leaf(ob_subject(OTHER_SOFTWARE_ID), rsa_key, ica, ica_key),
        other_org=make_leaf(ob_subject(org_id="0015800001041REBBB"), rsa_key, ica, ica_key),
        expired=make_leaf(
            ob_subject(), rsa_key, ica, ica_key, not_before=NOW - 400 * DAY, not_after=NOW - DAY
        ),
        not_yet_valid=make_leaf(
            ob_subject(), rsa_key, ica, ica_key, not_before=NOW + DAY, not_after=NOW + 400 * DAY
        ),
        foreign=make_leaf(ob_subject(), rsa_key, other_ca, other_key),
        impostor=make_leaf(ob_subject(), rsa_key, impostor_ica, other_key),
        server_only=make_leaf(
            ob_subject(), rsa_key, ica, ica_key, eku=[ExtendedKeyUsageOID.SERVER_AUTH]
        ),
        no_eku=make_leaf(ob_subject(), rsa_key, ica, ica_key, eku=None),
        no_aki=make_leaf(ob_subject(), rsa_key, ica, ica_key, aki=False),
        with_san=make_leaf(ob_subject(), rsa_key, ica, ica_key, san=[x509.DNSName("tpp.example")]),
        weak=make_leaf(ob_subject(), weak_key, ica, ica_key),
        eidas=make_leaf(eidas_subject, ec_key, ica, ica_key),
        eidas_other_org=make_leaf(
            name(
                (COUNTRY, "GB"),
                (ORG_NAME, "Other Ltd"),
                (ORG_IDENTIFIER, "PSDGB-OB-Other"),
                (COMMON, "x"),
            ),
            ec_key,
            ica,
            ica_key,
        ),
        eidas_twice=make_leaf(
            name(
                (COUNTRY, "GB"),
                (ORG_IDENTIFIER, PSD_ID),
                (ORG_IDENTIFIER, "PSDGB-OB-Other"),
                (COMMON, "x"),
            ),
            ec_key,
            ica,
            ica_key,
        ),
        ob_plus_locality=make_leaf(
            name(
                (COUNTRY, "GB"),
                (NameOID.LOCALITY_NAME, "London"),
                (ORG_NAME, "OpenBanking"),
                (ORG_UNIT, ORG_ID),
                (COMMON, SOFTWARE_ID),
            ),
            rsa_key,
            ica,
            ica_key,
        ),
    )


def pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(Encoding.PEM).decode("ascii")


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.DER)


def rfc9440(cert: x509.Certificate) -> str:
    return ":" + base64.b64encode(der(cert)).decode("ascii") + ":"


def x5c(cert: x509.Certificate) -> str:
    return base64.b64encode(der(cert)).decode("ascii")


def assert_invalid_client(exc: InvalidClient, description: str) -> None:
    assert exc.status == 401
    assert exc.error == "invalid_client"
    assert exc.description == description
    assert exc.to_dict() == {"error": "invalid_client", "error_description": description}


# --------------------------------------------------------------------------------------------
# load_certificate
# --------------------------------------------------------------------------------------------


def test_load_pem_str_bytes_and_der(pki):
    cert = pki.rsa_leaf
    assert load_certificate(pem(cert)) == cert
    assert load_certificate(pem(cert).encode()) == cert
    assert load_certificate("\n\t  " + pem(cert) + "  \n\n") == cert
    assert load_certificate(b"\r\n" + pem(cert).encode() + b"\r\n") == cert
    assert load_certificate(der(cert)) == cert
    assert load_certificate(bytearray(der(cert))) == cert


def test_load_pem_with_openssl_preamble(pki):
    text = "subject=C = GB, O = OpenBanking\nissuer=CN = x\n" + pem(pki.ec_leaf)
    assert load_certificate(text) == pki.ec_leaf
    assert load_certificate(text.encode()) == pki.ec_leaf


def test_load_pem_bundle_gives_first_certificate(pki):
    assert load_certificate(pem(pki.ec_leaf) + pem(pki.ica)) == pki.ec_leaf


@pytest.mark.parametrize(
    "data",
    [
        pytest.param("", id="empty-str"),
        pytest.param(b"", id="empty-bytes"),
        pytest.param("   \n", id="whitespace"),
        pytest.param("not a certificate", id="text"),
        pytest.param(b"\x30\x03\x02\x01\x01", id="der-not-a-cert"),
        pytest.param(b"\x00\x01garbage", id="binary"),
        pytest.param(
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", id="pem-bad-body"
        ),
        pytest.param("\ud800", id="lone-surrogate"),
    ],
)
def test_load_rejects_non_certificates(data):
    with pytest.raises(ValueError):
        load_certificate(data)


def test_load_rejects_truncated_der(pki):
    with pytest.raises(ValueError):
        load_certificate(der(pki.rsa_leaf)[:-10])


def test_load_rejects_other_types():
    with pytest.raises(TypeError):
        load_certificate(42)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# client_certificate_from_environ
# --------------------------------------------------------------------------------------------


def test_environ_ssl_client_cert(pki):
    environ = {"SSL_CLIENT_CERT": pem(pki.rsa_leaf), "REMOTE_ADDR": "203.0.113.9"}
    assert client_certificate_from_environ(environ) == pki.rsa_leaf


@pytest.mark.parametrize(
    "environ",
    [
        pytest.param({}, id="missing"),
        pytest.param({"SSL_CLIENT_CERT": ""}, id="empty"),
        pytest.param({"SSL_CLIENT_CERT": None}, id="none"),
    ],
)
def test_environ_without_certificate(environ):
    assert client_certificate_from_environ(environ) is None


def test_environ_malformed_ssl_client_cert():
    with pytest.raises(InvalidClient) as info:
        client_certificate_from_environ({"SSL_CLIENT_CERT": "-----BEGIN CERTIFICATE-----\nxx"})
    assert_invalid_client(info.value, UNPARSEABLE)


def test_environ_without_header_config_ignores_headers(pki):
    environ = {"HTTP_CLIENT_CERT": rfc9440(pki.rsa_leaf), "REMOTE_ADDR": "10.0.0.1"}
    assert client_certificate_from_environ(environ, trusted_proxies=["10.0.0.1"]) is None


@pytest.mark.parametrize(
    ("remote_addr", "trusted"),
    [
        pytest.param("10.0.0.1", ["10.0.0.1"], id="exact-ipv4"),
        pytest.param("10.20.30.40", ["10.0.0.0/8"], id="cidr-ipv4"),
        pytest.param("192.168.7.7", ["127.0.0.1", "192.168.0.0/16"], id="second-entry"),
        pytest.param("2001:db8::7", ["2001:db8::/32"], id="cidr-ipv6"),
        pytest.param("::1", ["::1"], id="ipv6-loopback"),
        pytest.param("::ffff:10.1.2.3", ["10.0.0.0/8"], id="ipv4-mapped"),
        pytest.param("10.0.0.1", ("10.0.0.1",), id="tuple"),
        pytest.param("10.0.0.1", {"10.0.0.1"}, id="set"),
    ],
)
def test_rfc9440_header_from_trusted_proxy(pki, remote_addr, trusted):
    environ = {"HTTP_CLIENT_CERT": rfc9440(pki.rsa_leaf), "REMOTE_ADDR": remote_addr}
    got = client_certificate_from_environ(environ, header="Client-Cert", trusted_proxies=trusted)
    assert got == pki.rsa_leaf


@pytest.mark.parametrize(
    ("remote_addr", "trusted"),
    [
        pytest.param("10.0.0.2", ["10.0.0.1"], id="other-address"),
        pytest.param("11.0.0.1", ["10.0.0.0/8"], id="outside-cidr"),
        pytest.param("10.0.0.1", [], id="no-trusted-proxies"),
        pytest.param(None, ["10.0.0.1"], id="no-remote-addr"),
        pytest.param("", ["10.0.0.1"], id="empty-remote-addr"),
        pytest.param("unix:/run/app.sock", ["10.0.0.1"], id="unix-socket"),
        pytest.param("2001:db9::1", ["2001:db8::/32"], id="outside-ipv6"),
    ],
)
def test_header_from_untrusted_peer_is_ignored(pki, remote_addr, trusted):
    environ = {"HTTP_CLIENT_CERT": rfc9440(pki.rsa_leaf)}
    if remote_addr is not None:
        environ["REMOTE_ADDR"] = remote_addr
    got = client_certificate_from_environ(environ, header="Client-Cert", trusted_proxies=trusted)
    assert got is None


def test_untrusted_peer_falls_back_to_ssl_client_cert(pki):
    environ = {
        "HTTP_CLIENT_CERT": rfc9440(pki.rsa_leaf),
        "SSL_CLIENT_CERT": pem(pki.ec_leaf),
        "REMOTE_ADDR": "198.51.100.1",
    }
    got = client_certificate_from_environ(
        environ, header="Client-Cert", trusted_proxies=["10.0.0.0/8"]
    )
    assert got == pki.ec_leaf


def test_untrusted_peer_malformed_header_is_not_even_parsed():
    environ = {"HTTP_CLIENT_CERT": "garbage", "REMOTE_ADDR": "198.51.100.1"}
    got = client_certificate_from_environ(
        environ, header="Client-Cert", trusted_proxies=["10.0.0.0/8"]
    )
    assert got is None


def test_trusted_proxy_header_wins_over_ssl_client_cert(pki):
    environ = {
        "HTTP_CLIENT_CERT": rfc9440(pki.rsa_leaf),
        "SSL_CLIENT_CERT": pem(pki.ec_leaf),
        "REMOTE_ADDR": "10.0.0.1",
    }
    got = client_certificate_from_environ(
        environ, header="Client-Cert", trusted_proxies=["10.0.0.0/8"]
    )
    assert got == pki.rsa_leaf


def test_trusted_proxy_without_header_falls_back_to_ssl_client_cert(pki):
    environ = {"SSL_CLIENT_CERT": pem(pki.ec_leaf), "REMOTE_ADDR": "10.0.0.1"}
    got = client_certificate_from_environ(
        environ, header="Client-Cert", trusted_proxies=["10.0.0.1"]
    )
    assert got == pki.ec_leaf


def test_trusted_proxy_empty_header_means_no_certificate():
    environ = {"HTTP_CLIENT_CERT": "", "REMOTE_ADDR": "10.0.0.1"}
    got = client_certificate_from_environ(
        environ, header="Client-Cert", trusted_proxies=["10.0.0.1"]
    )
    assert got is None


def test_rfc9440_variants(pki):
    body = base64.b64encode(der(pki.ec_leaf)).decode("ascii")
    trusted = ["10.0.0.1"]
    for value in (f":{body}:", f"  :{body}:\t", f":{body.rstrip('=')}:"):
        environ = {"HTTP_CLIENT_CERT": value, "REMOTE_ADDR": "10.0.0.1"}
        for header in ("Client-Cert", "client-cert", "CLIENT-CERT"):
            got = client_certificate_from_environ(environ, header=header, trusted_proxies=trusted)
            assert got == pki.ec_leaf


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("MIIB", id="no-colons"),
        pytest.param(":MIIB", id="one-colon"),
        pytest.param(":not base64!:", id="not-base64"),
        pytest.param(":" + base64.b64encode(b"not a certificate").decode() + ":", id="not-der"),
        pytest.param("-----BEGIN CERTIFICATE-----", id="pem-in-rfc9440-header"),
        pytest.param("::", id="empty-byte-sequence"),
    ],
)
def test_rfc9440_malformed_from_trusted_proxy(value):
    environ = {"HTTP_CLIENT_CERT": value, "REMOTE_ADDR": "10.0.0.1"}
    with pytest.raises(InvalidClient) as info:
        client_certificate_from_environ(environ, header="Client-Cert", trusted_proxies=["10.0.0.1"])
    assert_invalid_client(info.value, UNPARSEABLE)


def test_rfc9440_url_safe_base64_is_malformed(pki):
    # RFC 8941 byte sequences are standard base64; "-" and "_" are not in its alphabet.
    body = base64.urlsafe_b64encode(der(pki.rsa_leaf)).decode("ascii")
    assert "-" in body or "_" in body
    environ = {"HTTP_CLIENT_CERT": f":{body}:", "REMOTE_ADDR": "10.0.0.1"}
    with pytest.raises(InvalidClient) as info:
        client_certificate_from_environ(environ, header="Client-Cert", trusted_proxies=["10.0.0.1"])
    assert_invalid_client(info.value, UNPARSEABLE)


def test_escaped_pem_header_from_trusted_proxy(pki):
    # nginx: proxy_set_header X-SSL-Client-Cert $ssl_client_escaped_cert;
    environ = {
        "HTTP_X_SSL_CLIENT_CERT": urllib.parse.quote(pem(pki.rsa_leaf), safe=""),
        "REMOTE_ADDR": "172.16.0.5",
    }
    got = client_certificate_from_environ(
        environ, header="X-SSL-Client-Cert", trusted_proxies=["172.16.0.0/12"]
    )
    assert got == pki.rsa_leaf


def test_escaped_pem_header_keeps_plus_signs(pki):
    # A proxy that escapes only the newlines leaves "+" of the base64 alone: it is not a space.
    text = pem(pki.rsa_leaf)
    assert "+" in text
    environ = {"HTTP_X_SSL_CLIENT_CERT": text.replace("\n", "%0A"), "REMOTE_ADDR": "10.0.0.1"}
    got = client_certificate_from_environ(
        environ, header="X-SSL-Client-Cert", trusted_proxies=["10.0.0.1"]
    )
    assert got == pki.rsa_leaf


def test_other_header_name_maps_to_environ_key(pki):
    environ = {
        "HTTP_X_AMZN_MTLS_CLIENTCERT": urllib.parse.quote(pem(pki.ec_leaf), safe=""),
        "REMOTE_ADDR": "10.0.0.1",
    }
    got = client_certificate_from_environ(
        environ, header="X-Amzn-Mtls-Clientcert", trusted_proxies=["10.0.0.1"]
    )
    assert got == pki.ec_leaf


def xfcc(cert: x509.Certificate, **extra: str) -> str:
    """An Envoy X-Forwarded-Client-Cert element (forward_client_cert_details: SANITIZE_SET)."""
    digest = hashlib.sha256(der(cert)).hexdigest()
    parts = [f"Hash={digest}", f'Cert="{urllib.parse.quote(pem(cert), safe="")}"']
    parts += [f'{key}="{value}"' for key, value in extra.items()]
    return ";".join(parts)


@pytest.mark.parametrize(
    "value_of",
    [
        pytest.param(lambda cert: xfcc(cert), id="hash-and-cert"),
        pytest.param(
            lambda cert: xfcc(cert, Subject='CN=a,OU=b;c,O=\\"q\\"', URI="spiffe://x"),
            id="quoted-subject-with-separators",
        ),
        pytest.param(lambda cert: "By=spiffe://bank/edge;" + xfcc(cert), id="with-by"),
    ],
)
def test_envoy_xfcc_header_from_trusted_proxy(pki, value_of):
    environ = {"HTTP_X_FORWARDED_CLIENT_CERT": value_of(pki.rsa_leaf), "REMOTE_ADDR": "10.0.0.1"}
    got = client_certificate_from_environ(
        environ, header="X-Forwarded-Client-Cert", trusted_proxies=["10.0.0.1"]
    )
    assert got == pki.rsa_leaf


@pytest.mark.parametrize(
    "value_of",
    [
        # APPEND_FORWARD: which element is the client's cannot be told; never guessed
        pytest.param(lambda pki: xfcc(pki.ec_leaf) + "," + xfcc(pki.rsa_leaf), id="two-elements"),
        pytest.param(lambda pki: 'Hash=abcdef;Subject="CN=x"', id="no-cert"),
        pytest.param(lambda pki: 'Cert="-----BEGIN', id="unterminated-quote"),
        pytest.param(lambda pki: 'Cert="not%20a%20certificate"', id="not-a-certificate"),
    ],
)
def test_envoy_xfcc_header_refusals(pki, value_of):
    environ = {"HTTP_X_FORWARDED_CLIENT_CERT": value_of(pki), "REMOTE_ADDR": "10.0.0.1"}
    with pytest.raises(InvalidClient) as info:
        client_certificate_from_environ(
            environ, header="X-Forwarded-Client-Cert", trusted_proxies=["10.0.0.1"]
        )
    assert_invalid_client(info.value, UNPARSEABLE)


def test_envoy_xfcc_header_from_untrusted_peer_is_ignored(pki):
    environ = {"HTTP_X_FORWARDED_CLIENT_CERT": xfcc(pki.rsa_leaf), "REMOTE_ADDR": "8.8.8.8"}
    got = client_certificate_from_environ(
        environ, header="X-Forwarded-Client-Cert", trusted_proxies=["10.0.0.1"]
    )
    assert got is None


def test_a_new_proxy_format_is_one_registry_entry(pki, monkeypatch):
    from flask_obdcr.certificates import HEADER_FORMATS, load_certificate

    # e.g. Traefik's passTLSClientCert: the PEM body without armour, URL-escaped
    def traefik(value: str) -> x509.Certificate:
        body = urllib.parse.unquote(value)
        return load_certificate(f"-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----")

    monkeypatch.setitem(HEADER_FORMATS, "x-forwarded-tls-client-cert", traefik)
    body = "".join(pem(pki.ec_leaf).strip().splitlines()[1:-1])
    environ = {
        "HTTP_X_FORWARDED_TLS_CLIENT_CERT": urllib.parse.quote(body, safe=""),
        "REMOTE_ADDR": "10.0.0.1",
    }
    got = client_certificate_from_environ(
        environ, header="X-Forwarded-Tls-Client-Cert", trusted_proxies=["10.0.0.1"]
    )
    assert got == pki.ec_leaf


def test_escaped_pem_header_from_untrusted_peer_is_ignored(pki):
    environ = {
        "HTTP_X_SSL_CLIENT_CERT": urllib.parse.quote(pem(pki.rsa_leaf), safe=""),
        "REMOTE_ADDR": "8.8.8.8",
    }
    got = client_certificate_from_environ(
        environ, header="X-SSL-Client-Cert", trusted_proxies=["10.0.0.0/8"]
    )
    assert got is None


def test_escaped_pem_header_malformed():
    environ = {"HTTP_X_SSL_CLIENT_CERT": "-----BEGIN%20CERT", "REMOTE_ADDR": "10.0.0.1"}
    with pytest.raises(InvalidClient) as info:
        client_certificate_from_environ(
            environ, header="X-SSL-Client-Cert", trusted_proxies=["10.0.0.1"]
        )
    assert_invalid_client(info.value, UNPARSEABLE)


def test_invalid_trusted_proxy_entry_is_a_configuration_error(pki):
    environ = {"HTTP_CLIENT_CERT": rfc9440(pki.rsa_leaf), "REMOTE_ADDR": "10.0.0.1"}
    with pytest.raises(ValueError) as info:
        client_certificate_from_environ(
            environ, header="Client-Cert", trusted_proxies=["proxy.internal"]
        )
    assert str(info.value) == (
        "trusted proxy 'proxy.internal' is not an IP address or network (e.g. '10.0.0.0/8')"
    )


# --------------------------------------------------------------------------------------------
# TransportCertificateVerifier
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def root_verifier(pki) -> TransportCertificateVerifier:
    return TransportCertificateVerifier([pki.root])


@pytest.fixture(scope="module")
def ica_verifier(pki) -> TransportCertificateVerifier:
    return TransportCertificateVerifier([pki.ica])


@pytest.mark.parametrize("leaf", ["rsa_leaf", "ec_leaf", "eidas", "no_aki", "with_san"])
def test_verify_with_root_anchor_and_intermediate(pki, root_verifier, leaf):
    chain = root_verifier.verify(getattr(pki, leaf), now=NOW, intermediates=[pki.ica])
    assert chain == (getattr(pki, leaf), pki.ica, pki.root)


@pytest.mark.parametrize("leaf", ["rsa_leaf", "ec_leaf", "eidas", "no_aki", "with_san"])
def test_verify_with_issuing_ca_anchor(pki, ica_verifier, leaf):
    assert ica_verifier.verify(getattr(pki, leaf), now=NOW) == (getattr(pki, leaf), pki.ica)


def test_verify_with_both_anchors_and_unneeded_intermediates(pki):
    verifier = TransportCertificateVerifier([pki.root, pki.ica])
    verifier.verify(pki.rsa_leaf, now=NOW)
    verifier.verify(pki.rsa_leaf, now=NOW, intermediates=[pki.ica, pki.other_ca])


@pytest.mark.parametrize(
    ("leaf", "intermediates", "description"),
    [
        pytest.param("rsa_leaf", [], NOT_TRUSTED, id="root-anchor-missing-intermediate"),
        pytest.param("foreign", [], NOT_TRUSTED, id="issued-by-another-ca"),
        pytest.param("foreign", ["other_ca"], NOT_TRUSTED, id="another-ca-as-intermediate"),
        pytest.param("impostor", [], NOT_TRUSTED, id="same-issuer-name-other-key"),
        pytest.param("server_only", ["ica"], NOT_CLIENT, id="eku-without-clientAuth"),
        # docs/architecture.md, "Contract: tokens, published URLs and keys": an OB signing
        # certificate (no EKU at all, same subject, same CA) is no transport certificate
        pytest.param("no_eku", ["ica"], NOT_CLIENT, id="no-eku-signing-certificate"),
        pytest.param("weak", ["ica"], NOT_TRUSTED, id="rsa-1024"),
        pytest.param("ica", [], NOT_CLIENT, id="ca-certificate-as-client"),
        pytest.param("expired", ["ica"], OUT_OF_VALIDITY, id="expired"),
        pytest.param("not_yet_valid", ["ica"], OUT_OF_VALIDITY, id="not-yet-valid"),
    ],
)
def test_verify_rejects(pki, root_verifier, leaf, intermediates, description):
    chain = [getattr(pki, name) for name in intermediates]
    with pytest.raises(InvalidClient) as info:
        root_verifier.verify(getattr(pki, leaf), now=NOW, intermediates=chain)
    assert_invalid_client(info.value, description)
    assert info.value.detail != description  # the reason goes to the log


def test_verify_rejects_with_issuing_ca_anchor(pki, ica_verifier):
    for leaf in (pki.foreign, pki.impostor, pki.weak):
        with pytest.raises(InvalidClient) as info:
            ica_verifier.verify(leaf, now=NOW)
        assert_invalid_client(info.value, NOT_TRUSTED)
    for leaf in (pki.server_only, pki.no_eku):
        with pytest.raises(InvalidClient) as info:
            ica_verifier.verify(leaf, now=NOW)
        assert_invalid_client(info.value, NOT_CLIENT)


def test_verify_detail_names_the_reason(pki, root_verifier):
    with pytest.raises(InvalidClient) as info:
        root_verifier.verify(pki.weak, now=NOW, intermediates=[pki.ica])
    assert info.value.detail == "client certificate RSA key has 1024 bits; 2048 needed"


def test_verify_validity_bounds_are_inclusive(pki, ica_verifier):
    leaf = pki.rsa_leaf
    ica_verifier.verify(leaf, now=leaf.not_valid_after_utc)
    ica_verifier.verify(leaf, now=leaf.not_valid_before_utc)
    for moment in (leaf.not_valid_after_utc + SECOND, leaf.not_valid_before_utc - SECOND):
        with pytest.raises(InvalidClient) as info:
            ica_verifier.verify(leaf, now=moment)
        assert_invalid_client(info.value, OUT_OF_VALIDITY)


def test_verify_time_zones(pki, ica_verifier):
    leaf = pki.rsa_leaf
    plus_five = dt.timezone(dt.timedelta(hours=5))
    ica_verifier.verify(leaf, now=leaf.not_valid_after_utc.astimezone(plus_five))
    with pytest.raises(InvalidClient):
        ica_verifier.verify(leaf, now=(leaf.not_valid_after_utc + SECOND).astimezone(plus_five))
    # naive means UTC
    ica_verifier.verify(leaf, now=leaf.not_valid_after_utc.replace(tzinfo=None))
    with pytest.raises(InvalidClient):
        ica_verifier.verify(leaf, now=(leaf.not_valid_after_utc + SECOND).replace(tzinfo=None))


@pytest.fixture(scope="module")
def short_lived_ca_chain():
    """(anchor, leaf): the issuing CA expires a day from NOW, 29 days before its leaf."""
    key = ec.generate_private_key(ec.SECP256R1())
    ca_name = name((COUNTRY, "GB"), (COMMON, "Short-lived CA"))
    short_ca = make_ca(ca_name, key, ca_name, key, path_length=0, not_after=NOW + DAY)
    return short_ca, make_leaf(ob_subject(), key, short_ca, key, not_after=NOW + 30 * DAY)


def test_verify_rejects_expired_anchor(short_lived_ca_chain):
    # The issuing CA expires before the leaf: the anchor is checked like any other issuer.
    short_ca, leaf = short_lived_ca_chain
    verifier = TransportCertificateVerifier([short_ca])
    verifier.verify(leaf, now=NOW)
    with pytest.raises(InvalidClient) as info:
        verifier.verify(leaf, now=NOW + 2 * DAY)
    assert_invalid_client(info.value, NOT_TRUSTED)


@pytest.fixture
def chain_checks(monkeypatch):
    """How many chain verifications the verifier built (one PolicyBuilder each)."""
    from flask_obdcr.certificates import verify

    real = verify.PolicyBuilder
    calls = []

    def counting_builder():
        calls.append(1)
        return real()

    monkeypatch.setattr(verify, "PolicyBuilder", counting_builder)
    return calls


def test_verified_chain_is_remembered_within_its_window(pki, chain_checks):
    verifier = TransportCertificateVerifier([pki.root])
    leaf = pki.rsa_leaf
    verifier.verify(leaf, now=NOW, intermediates=[pki.ica])
    verifier.verify(leaf, now=NOW + 30 * DAY, intermediates=[pki.ica])
    verifier.verify(leaf, now=leaf.not_valid_after_utc, intermediates=[pki.ica])
    assert len(chain_checks) == 1
    # another chain is another verification
    verifier.verify(leaf, now=NOW, intermediates=[pki.ica, pki.other_ca])
    assert len(chain_checks) == 2
    # past the window: verified afresh, and refused with the precise reason
    with pytest.raises(InvalidClient) as info:
        verifier.verify(leaf, now=leaf.not_valid_after_utc + SECOND, intermediates=[pki.ica])
    assert_invalid_client(info.value, OUT_OF_VALIDITY)
    with pytest.raises(InvalidClient) as info:
        verifier.verify(leaf, now=leaf.not_valid_before_utc - SECOND, intermediates=[pki.ica])
    assert_invalid_client(info.value, OUT_OF_VALIDITY)


def test_remembered_chain_ends_with_its_shortest_lived_certificate(
    short_lived_ca_chain, chain_checks
):
    # a chain verified today is not trusted once its CA has expired, however recently it
    # was verified
    short_ca, leaf = short_lived_ca_chain
    verifier = TransportCertificateVerifier([short_ca])
    verifier.verify(leaf, now=NOW)
    verifier.verify(leaf, now=NOW + DAY)
    assert len(chain_checks) == 1
    with pytest.raises(InvalidClient) as info:
        verifier.verify(leaf, now=NOW + DAY + SECOND)
    assert_invalid_client(info.value, NOT_TRUSTED)
    assert len(chain_checks) == 2


def test_refused_certificates_are_never_remembered(pki, chain_checks):
    verifier = TransportCertificateVerifier([pki.root])
    for attempt in (1, 2, 3):
        with pytest.raises(InvalidClient) as info:
            verifier.verify(pki.foreign, now=NOW)
        assert_invalid_client(info.value, NOT_TRUSTED)
        assert len(chain_checks) == attempt


def test_chain_memory_is_bounded_and_can_be_off(pki, chain_checks):
    one = TransportCertificateVerifier([pki.ica], cache_size=1)
    for leaf in (pki.rsa_leaf, pki.ec_leaf, pki.rsa_leaf, pki.ec_leaf):
        one.verify(leaf, now=NOW)
    assert len(chain_checks) == 4  # each evicts the other
    one.verify(pki.ec_leaf, now=NOW)
    assert len(chain_checks) == 4
    off = TransportCertificateVerifier([pki.ica], cache_size=0)
    off.verify(pki.rsa_leaf, now=NOW)
    off.verify(pki.rsa_leaf, now=NOW)
    assert len(chain_checks) == 6


def test_verifier_from_pem_file(pki, tmp_path):
    bundle = tmp_path / "ob-ca.pem"
    bundle.write_text("subject=OpenBanking Root CA\n" + pem(pki.root) + "\n" + pem(pki.ica))
    verifier = TransportCertificateVerifier.from_pem_file(bundle)
    assert verifier.trust_anchors == (pki.root, pki.ica)
    verifier.verify(pki.rsa_leaf, now=NOW)
    assert TransportCertificateVerifier.from_pem_file(str(bundle)).trust_anchors == (
        pki.root,
        pki.ica,
    )


def test_verifier_from_pem_file_without_certificates(tmp_path):
    path = tmp_path / "empty.pem"
    path.write_text("nothing here\n")
    with pytest.raises(ValueError):
        TransportCertificateVerifier.from_pem_file(path)


def test_verifier_from_pem_file_with_a_leaf(pki, tmp_path):
    path = tmp_path / "leaf.pem"
    path.write_text(pem(pki.rsa_leaf))
    with pytest.raises(ValueError) as info:
        TransportCertificateVerifier.from_pem_file(path)
    assert str(info.value) == (
        f"{path}: trust anchor CN={SOFTWARE_ID},OU={ORG_ID},O=OpenBanking,C=GB is not a CA "
        "certificate (needs basicConstraints cA=TRUE and keyUsage keyCertSign)"
    )


def test_verifier_needs_anchors():
    with pytest.raises(ValueError) as info:
        TransportCertificateVerifier([])
    assert str(info.value) == "at least one transport trust anchor certificate is required"


# --------------------------------------------------------------------------------------------
# parse_dn / dn_matches
# --------------------------------------------------------------------------------------------

OB_DN = f"CN={SOFTWARE_ID},OU={ORG_ID},O=OpenBanking,C=GB"


# one subject, spelled with the attribute types' short and long names
_PERSON = name(
    (NameOID.TITLE, "Dr"),
    (NameOID.SURNAME, "Lovelace"),
    (NameOID.GIVEN_NAME, "Ada"),
    (NameOID.EMAIL_ADDRESS, "a@b.example"),
    (NameOID.SERIAL_NUMBER, "42"),
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(OB_DN, ob_subject(), id="rfc4514"),
        pytest.param(
            f"cn={SOFTWARE_ID}, Ou={ORG_ID}, o=OpenBanking, C=GB", ob_subject(), id="case-spaces"
        ),
        pytest.param(
            f"CN = {SOFTWARE_ID} , OU = {ORG_ID} , O = OpenBanking , C = GB ",
            ob_subject(),
            id="spaces-around-equals",
        ),
        pytest.param(
            f"2.5.4.3={SOFTWARE_ID},2.5.4.11={ORG_ID},2.5.4.10=OpenBanking,2.5.4.6=GB",
            ob_subject(),
            id="dotted-oids",
        ),
        pytest.param(
            f"commonName={SOFTWARE_ID},organizationalUnitName={ORG_ID},"
            "organizationName=OpenBanking,countryName=GB",
            ob_subject(),
            id="long-names",
        ),
        pytest.param(
            "2.5.4.97=PSDGB-OB-123", name((ORG_IDENTIFIER, "PSDGB-OB-123")), id="dotted-2.5.4.97"
        ),
        pytest.param(
            "OID.2.5.4.97=PSDGB-OB-123", name((ORG_IDENTIFIER, "PSDGB-OB-123")), id="oid-prefix"
        ),
        pytest.param(
            "ORGANIZATIONIDENTIFIER=PSDGB-OB-123",
            name((ORG_IDENTIFIER, "PSDGB-OB-123")),
            id="organizationIdentifier-upper",
        ),
        pytest.param(
            "organizationIdentifier=PSDGB-OB-123",
            name((ORG_IDENTIFIER, "PSDGB-OB-123")),
            id="organizationIdentifier",
        ),
        pytest.param(r"O=Acme\, Ltd", name((ORG_NAME, "Acme, Ltd")), id="escaped-comma"),
        pytest.param(r"O=Acme\2C Ltd", name((ORG_NAME, "Acme, Ltd")), id="hex-escaped-comma"),
        pytest.param('O="Acme, Ltd"', name((ORG_NAME, "Acme, Ltd")), id="rfc2253-quoted"),
        pytest.param(r"CN=a\+b", name((COMMON, "a+b")), id="escaped-plus"),
        pytest.param(r"CN=\ padded\ ", name((COMMON, " padded ")), id="escaped-edge-spaces"),
        pytest.param(r"CN=back\\", name((COMMON, "back\\")), id="escaped-backslash"),
        pytest.param(r"CN=\#hash", name((COMMON, "#hash")), id="escaped-leading-hash"),
        pytest.param("CN=a=b", name((COMMON, "a=b")), id="equals-in-value"),
        pytest.param("CN=#0c03616263", name((COMMON, "abc")), id="hex-ber-utf8string"),
        pytest.param("CN=Zoë", name((COMMON, "Zoë")), id="non-ascii"),
        pytest.param(
            "L=London,ST=Greater London,STREET=1 High St,DC=example,UID=u1",
            name(
                (NameOID.USER_ID, "u1"),
                (NameOID.DOMAIN_COMPONENT, "example"),
                (NameOID.STREET_ADDRESS, "1 High St"),
                (NameOID.STATE_OR_PROVINCE_NAME, "Greater London"),
                (NameOID.LOCALITY_NAME, "London"),
            ),
            id="l-st-street-dc-uid",
        ),
        pytest.param(
            "serialNumber=42,emailAddress=a@b.example,givenName=Ada,surname=Lovelace,title=Dr",
            _PERSON,
            id="serial-email-given-surname-title",
        ),
        pytest.param(
            "SERIALNUMBER=42,EMAILADDRESS=a@b.example,GIVENNAME=Ada,SURNAME=Lovelace,TITLE=Dr",
            _PERSON,
            id="upper-case-long-types",
        ),
    ],
)
def test_parse_dn(text, expected):
    assert parse_dn(text) == expected
    assert [len(rdn) for rdn in parse_dn(text).rdns] == [1] * len(expected.rdns)


def test_parse_dn_multi_valued_rdn():
    parsed = parse_dn("CN=a + OU=b, C=GB")
    assert parsed.rdns == [
        x509.RelativeDistinguishedName([x509.NameAttribute(COUNTRY, "GB")]),
        x509.RelativeDistinguishedName(
            [x509.NameAttribute(COMMON, "a"), x509.NameAttribute(ORG_UNIT, "b")]
        ),
    ]


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty"),
        pytest.param("   ", id="blank"),
        pytest.param("garbage", id="no-equals"),
        pytest.param("CN=a,", id="trailing-comma"),
        pytest.param(",CN=a", id="leading-comma"),
        pytest.param("CN=a,,O=b", id="empty-rdn"),
        pytest.param("XX=a", id="unknown-type"),
        pytest.param("=a", id="no-type"),
        pytest.param("C=GBR", id="country-too-long"),
        pytest.param("CN=a;O=b", id="semicolon-separator"),
        pytest.param('CN="unterminated', id="unterminated-quote"),
        pytest.param("CN=a\\", id="lone-backslash"),
        pytest.param("CN=#zz", id="bad-hex"),
        pytest.param("CN=#020101", id="hex-not-a-string"),
        pytest.param("3.1=x", id="bad-oid"),
        pytest.param(None, id="none"),
    ],
)
def test_parse_dn_rejects(text):
    with pytest.raises(ValueError):
        parse_dn(text)


@pytest.mark.parametrize(
    ("dn", "expected"),
    [
        pytest.param(OB_DN, True, id="rfc4514-order"),
        pytest.param(f"C=GB,O=OpenBanking,OU={ORG_ID},CN={SOFTWARE_ID}", True, id="reverse"),
        pytest.param(
            f"C = GB, O = OpenBanking, OU = {ORG_ID}, CN = {SOFTWARE_ID}", True, id="openssl"
        ),
        pytest.param(
            f"cn={SOFTWARE_ID}, ou={ORG_ID}, o=OpenBanking, c=GB", True, id="lower-case-types"
        ),
        pytest.param(
            f"2.5.4.3={SOFTWARE_ID},2.5.4.11={ORG_ID},2.5.4.10=OpenBanking,2.5.4.6=GB",
            True,
            id="dotted-oids",
        ),
        pytest.param(OB_DN + "  ", True, id="trailing-space"),
        pytest.param(f"CN={SOFTWARE_ID},OU={ORG_ID},O=OpenBanking", False, id="missing-attr"),
        pytest.param(OB_DN + ",L=London", False, id="extra-attr"),
        pytest.param(f"L=London,{OB_DN}", False, id="extra-attr-first"),
        pytest.param(OB_DN.replace(SOFTWARE_ID, SOFTWARE_ID.lower()), False, id="value-case"),
        pytest.param(OB_DN.replace(SOFTWARE_ID, OTHER_SOFTWARE_ID), False, id="other-software"),
        pytest.param(
            f"CN={SOFTWARE_ID},O=OpenBanking,OU={ORG_ID},C=GB", False, id="shuffled-order"
        ),
        pytest.param(f"CN={SOFTWARE_ID}+OU={ORG_ID},O=OpenBanking,C=GB", False, id="merged-rdn"),
        pytest.param(f"OU={SOFTWARE_ID},CN={ORG_ID},O=OpenBanking,C=GB", False, id="swapped"),
        pytest.param("garbage", False, id="garbage"),
        pytest.param("", False, id="empty"),
        pytest.param(None, False, id="none"),
    ],
)
def test_dn_matches_ob_subject(dn, expected):
    assert dn_matches(dn, ob_subject()) is expected


@pytest.mark.parametrize(
    ("dn", "expected"),
    [
        pytest.param(r"CN=tpp,O=Acme\, Ltd,C=GB", True, id="escaped-comma"),
        pytest.param(r"CN=tpp, O=Acme\2C Ltd, C=GB", True, id="hex-escape"),
        pytest.param('CN=tpp,O="Acme, Ltd",C=GB', True, id="quoted"),
        pytest.param("CN=tpp,O=Acme, Ltd,C=GB", False, id="unescaped-comma"),
        pytest.param(r"CN=tpp,O=Acme\, Ltd.,C=GB", False, id="different-value"),
    ],
)
def test_dn_matches_escaped_values(dn, expected):
    subject = name((COUNTRY, "GB"), (ORG_NAME, "Acme, Ltd"), (COMMON, "tpp"))
    assert dn_matches(dn, subject) is expected


@pytest.mark.parametrize(
    "dn",
    [
        f"CN={ORG_ID},2.5.4.97={PSD_ID},O=Acme Payments Ltd,C=GB",
        f"CN={ORG_ID}, organizationIdentifier={PSD_ID}, O=Acme Payments Ltd, C=GB",
        f"C=GB, O=Acme Payments Ltd, ORGANIZATIONIDENTIFIER={PSD_ID}, CN={ORG_ID}",
    ],
)
def test_dn_matches_eidas_subject(pki, dn):
    assert dn_matches(dn, pki.eidas.subject) is True
    assert dn_matches(dn, pki.eidas_other_org.subject) is False


def test_dn_matches_multi_valued_rdn_in_any_member_order():
    subject = x509.Name(
        [
            x509.RelativeDistinguishedName([x509.NameAttribute(COUNTRY, "GB")]),
            x509.RelativeDistinguishedName(
                [x509.NameAttribute(COMMON, "a"), x509.NameAttribute(ORG_UNIT, "b")]
            ),
        ]
    )
    assert dn_matches("CN=a+OU=b,C=GB", subject) is True
    assert dn_matches("OU=b+CN=a,C=GB", subject) is True
    assert dn_matches("C=GB,OU=b+CN=a", subject) is True
    assert dn_matches("CN=a,OU=b,C=GB", subject) is False


def test_certificate_matches_dn_answers_as_dn_matches_and_remembers_within_bounds(pki):
    """The token endpoint's form of dn_matches (both sides parsed once and remembered) gives
    the same answers, the second time too; an over-long DN is parsed, never remembered."""
    from flask_obdcr.certificates import dn

    spellings = [
        f"CN={ORG_ID},2.5.4.97={PSD_ID},O=Acme Payments Ltd,C=GB",
        f"C=GB, O=Acme Payments Ltd, ORGANIZATIONIDENTIFIER={PSD_ID}, CN={ORG_ID}",
        f"CN={ORG_ID},O=Acme Payments Ltd,C=GB",
        "garbage",
        "",
    ]
    for _ in range(2):
        for text in spellings:
            for certificate in (pki.eidas, pki.eidas_other_org):
                assert certificate_matches_dn(text, certificate) is dn_matches(
                    text, certificate.subject
                ), text
    assert certificate_matches_dn(spellings[0], pki.eidas) is True
    assert certificate_matches_dn(spellings[0], pki.eidas_other_org) is False

    long_dn = spellings[0] + ",OU=" + "x" * dn._MAX_REMEMBERED_DN
    remembered = dn._remembered_dn_rdns.cache_info().currsize
    assert certificate_matches_dn(long_dn, pki.eidas) is dn_matches(long_dn, pki.eidas.subject)
    assert dn._remembered_dn_rdns.cache_info().currsize == remembered
    assert dn._remembered_dn_rdns.cache_info().maxsize == dn._PARSED_CACHE_SIZE
    assert dn.subject_rdns.cache_info().maxsize == dn._PARSED_CACHE_SIZE


_DN_TEXT = st.text(
    # Any printable text, including RFC 4514 specials, spaces at either end and non-ASCII.
    alphabet=st.characters(blacklist_categories=("Cs", "Cc")) | st.sampled_from(' ,+"\\#=;<>'),
    min_size=1,
    max_size=20,
)
_DN_ATTRIBUTE = st.one_of(
    st.tuples(st.just(NameOID.COUNTRY_NAME), st.from_regex(r"[A-Z]{2}", fullmatch=True)),
    st.tuples(
        st.sampled_from(
            [
                NameOID.COMMON_NAME,
                NameOID.ORGANIZATION_NAME,
                NameOID.ORGANIZATIONAL_UNIT_NAME,
                NameOID.ORGANIZATION_IDENTIFIER,
                NameOID.LOCALITY_NAME,
                NameOID.STREET_ADDRESS,
                NameOID.SERIAL_NUMBER,
                NameOID.EMAIL_ADDRESS,
                NameOID.GIVEN_NAME,
                NameOID.TITLE,
            ]
        ),
        _DN_TEXT,
    ),
)


@settings(max_examples=100, deadline=None)
@given(st.lists(_DN_ATTRIBUTE, min_size=1, max_size=6))
def test_dn_matches_cryptography_rfc4514_strings(attributes):
    # Whatever cryptography prints for a subject, in either order, names that subject.
    subject = name(*attributes)
    reversed_subject = x509.Name(subject.rdns[::-1])
    assert parse_dn(subject.rfc4514_string()) == subject
    assert dn_matches(subject.rfc4514_string(), subject) is True
    assert dn_matches(reversed_subject.rfc4514_string(), subject) is True
    assert dn_matches(subject.rfc4514_string() + ",C=ZZ", subject) is False


def test_package_does_not_import_flask():
    # certificates/ is protocol core (docs/architecture.md): no Flask, no Werkzeug.
    package = Path(__file__).resolve().parents[1] / "flask_obdcr" / "certificates"
    modules = sorted(package.glob("*.py"))
    assert {m.name for m in modules} >= {"load.py", "source.py", "verify.py", "dn.py"}
    imported = set()
    for source in modules:
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                imported.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported.add(node.module.split(".")[0])
    assert not imported & {"flask", "werkzeug"}
    assert imported <= {
        "__future__",
        "base64",
        "binascii",
        "collections",
        "cryptography",
        "dataclasses",
        "datetime",
        "functools",
        "ipaddress",
        "os",
        "re",
        "threading",
        "time",
        "typing",
        "urllib",
    }


# --------------------------------------------------------------------------------------------
# thumbprint_sha256
# --------------------------------------------------------------------------------------------


def test_thumbprint_sha256(pki):
    for cert in (pki.rsa_leaf, pki.ec_leaf):
        expected = base64.urlsafe_b64encode(hashlib.sha256(der(cert)).digest()).rstrip(b"=")
        value = thumbprint_sha256(cert)
        assert value == expected.decode("ascii")
        assert len(value) == 43
    assert thumbprint_sha256(pki.rsa_leaf) != thumbprint_sha256(pki.ec_leaf)


# --------------------------------------------------------------------------------------------
# psd_identifier
# --------------------------------------------------------------------------------------------


def _ca_claims(authority_id, registration_id="123456"):
    return {"authority_id": authority_id, "registration_id": registration_id, "status": "Active"}


@pytest.mark.parametrize(
    ("claims", "expected"),
    [
        pytest.param(_ca_claims("OBGBR", REGISTRATION_ID), PSD_ID, id="design-doc-example"),
        pytest.param(_ca_claims("FCAGBR"), "PSDGB-FCA-123456", id="fca"),
        pytest.param(_ca_claims("CBIIRL", "C12345"), "PSDIE-CBI-C12345", id="ireland"),
        pytest.param(_ca_claims("BAFINDEU"), "PSDDE-BAFIN-123456", id="germany"),
        pytest.param(_ca_claims("ACPRFRA"), "PSDFR-ACPR-123456", id="france"),
        pytest.param(_ca_claims("DNBNLD"), "PSDNL-DNB-123456", id="netherlands"),
        pytest.param(_ca_claims("CSSFLUX"), "PSDLU-CSSF-123456", id="luxembourg"),
        pytest.param(_ca_claims("FMAAUT"), "PSDAT-FMA-123456", id="austria"),
        pytest.param(_ca_claims("NBBBEL"), "PSDBE-NBB-123456", id="belgium"),
        pytest.param(_ca_claims("BDEESP"), "PSDES-BDE-123456", id="spain"),
        pytest.param(_ca_claims("BDIITA"), "PSDIT-BDI-123456", id="italy"),
        pytest.param(_ca_claims("FINNOR"), "PSDNO-FIN-123456", id="norway"),
        pytest.param(
            [_ca_claims("nonsense"), {"authority_id": "OBGBR"}, _ca_claims("FCAGBR", "777")],
            "PSDGB-FCA-777",
            id="list-first-well-formed",
        ),
        pytest.param(
            [_ca_claims("FCAGBR", "1"), _ca_claims("OBGBR", "2")], "PSDGB-FCA-1", id="list-first"
        ),
        pytest.param([], None, id="empty-list"),
        pytest.param([_ca_claims("OB")], None, id="list-all-malformed"),
        pytest.param(_ca_claims("OBUSA"), None, id="non-eea-country"),
        pytest.param(_ca_claims("OBXYZ"), None, id="unknown-country"),
        pytest.param(_ca_claims("GBR"), None, id="no-authority"),
        pytest.param(_ca_claims("OB"), None, id="too-short"),
        pytest.param(_ca_claims("obgbr"), None, id="lower-case"),
        pytest.param(_ca_claims("OB-GBR"), None, id="dash"),
        pytest.param(_ca_claims("OBGBR", ""), None, id="empty-registration"),
        pytest.param(_ca_claims("OBGBR", "12 34"), None, id="space-in-registration"),
        pytest.param(_ca_claims("OBGBR", 123456), None, id="numeric-registration"),
        pytest.param(_ca_claims(None), None, id="no-authority-id"),
        pytest.param("OBGBR", None, id="string-claim"),
        pytest.param(None, None, id="null-claim"),
    ],
)
def test_psd_identifier(claims, expected):
    assert psd_identifier({"organisation_competent_authority_claims": claims}) == expected


def test_psd_identifier_without_claim():
    assert psd_identifier({}) is None
    assert psd_identifier({"software_id": SOFTWARE_ID}) is None


# --------------------------------------------------------------------------------------------
# certificate_belongs_to_software
# --------------------------------------------------------------------------------------------


def _jwks(*certs, kty="RSA"):
    return {"keys": [{"kty": kty, "kid": f"k{i}", "x5c": [x5c(c)]} for i, c in enumerate(certs)]}


def test_binding_jwks_x5c_rsa(pki):
    # other_software's subject names another software, so only the JWKS can bind it
    jwks = _jwks(pki.ec_leaf, pki.other_software)
    got = certificate_belongs_to_software(
        pki.other_software, ssa_claims=SSA_CLAIMS, software_jwks=jwks
    )
    assert got == "jwks_x5c"


def test_binding_jwks_x5c_ec(pki):
    # No SSA claims, so neither subject rule can hold: only the JWKS binds it.
    jwks = {"keys": [{"kty": "EC", "crv": "P-256", "x5c": [x5c(pki.ec_leaf), x5c(pki.ica)]}]}
    got = certificate_belongs_to_software(pki.ec_leaf, ssa_claims={}, software_jwks=jwks)
    assert got == "jwks_x5c"


def test_binding_jwks_x5c_takes_precedence(pki):
    got = certificate_belongs_to_software(
        pki.rsa_leaf, ssa_claims=SSA_CLAIMS, software_jwks=_jwks(pki.rsa_leaf)
    )
    assert got == "jwks_x5c"


def test_binding_jwks_x5c_only_first_entry_counts(pki):
    # The rest of x5c is the chain; a certificate there is not the key's certificate.
    jwks = {"keys": [{"kty": "EC", "x5c": [x5c(pki.ec_leaf), x5c(pki.other_software)]}]}
    got = certificate_belongs_to_software(pki.other_software, ssa_claims={}, software_jwks=jwks)
    assert got is None


def test_binding_jwks_x5c_skips_malformed_keys(pki):
    jwks = {
        "keys": [
            "junk",
            None,
            {"kty": "RSA"},
            {"x5c": "not-a-list"},
            {"x5c": []},
            {"x5c": [123]},
            {"x5c": ["!!!not base64!!!"]},
            {"x5c": [base64.urlsafe_b64encode(b"\xfb\xff" * 8).decode()]},
            {"x5c": [x5c(pki.ec_leaf)]},
            {"x5c": [x5c(pki.other_software)]},
        ]
    }
    got = certificate_belongs_to_software(pki.other_software, ssa_claims={}, software_jwks=jwks)
    assert got == "jwks_x5c"


@pytest.mark.parametrize(
    "jwks",
    [
        pytest.param(None, id="no-jwks"),
        pytest.param({}, id="no-keys"),
        pytest.param({"keys": "x"}, id="keys-not-a-list"),
        pytest.param({"keys": [{"kty": "RSA", "n": "..", "e": "AQAB"}]}, id="no-x5c"),
    ],
)
def test_binding_jwks_absent_or_malformed(pki, jwks):
    got = certificate_belongs_to_software(pki.other_software, ssa_claims={}, software_jwks=jwks)
    assert got is None


def test_binding_jwks_x5c_of_another_certificate(pki):
    got = certificate_belongs_to_software(
        pki.other_software, ssa_claims={}, software_jwks=_jwks(pki.rsa_leaf, pki.ec_leaf)
    )
    assert got is None


@pytest.mark.parametrize("leaf", ["rsa_leaf", "ec_leaf"])
def test_binding_ob_subject(pki, leaf):
    got = certificate_belongs_to_software(
        getattr(pki, leaf), ssa_claims=SSA_CLAIMS, software_jwks={"keys": []}
    )
    assert got == "ob_subject"


def test_binding_ob_subject_in_reverse_asn1_order(pki):
    reversed_subject = name(
        (COMMON, SOFTWARE_ID), (ORG_UNIT, ORG_ID), (ORG_NAME, "OpenBanking"), (COUNTRY, "GB")
    )
    leaf = make_leaf(reversed_subject, pki.ec_key, pki.ica, pki.ica_key)
    assert certificate_belongs_to_software(leaf, ssa_claims=SSA_CLAIMS, software_jwks=None) == (
        "ob_subject"
    )


@pytest.mark.parametrize(
    ("leaf", "claims"),
    [
        pytest.param("other_software", SSA_CLAIMS, id="cert-of-another-software"),
        pytest.param("other_org", SSA_CLAIMS, id="cert-of-another-org"),
        pytest.param("ob_plus_locality", SSA_CLAIMS, id="extra-attribute"),
        pytest.param("rsa_leaf", {**SSA_CLAIMS, "software_id": OTHER_SOFTWARE_ID}, id="ssa-other"),
        pytest.param("rsa_leaf", {"org_id": ORG_ID}, id="ssa-without-software-id"),
        pytest.param("rsa_leaf", {"software_id": SOFTWARE_ID}, id="ssa-without-org-id"),
        pytest.param("rsa_leaf", {"software_id": SOFTWARE_ID, "org_id": ""}, id="empty-org-id"),
        pytest.param("rsa_leaf", {"software_id": 1, "org_id": ORG_ID}, id="non-string-id"),
    ],
)
def test_binding_ob_subject_negative(pki, leaf, claims):
    claims = {k: v for k, v in claims.items() if k != "organisation_competent_authority_claims"}
    got = certificate_belongs_to_software(getattr(pki, leaf), ssa_claims=claims, software_jwks=None)
    assert got is None


def test_binding_organization_identifier(pki):
    got = certificate_belongs_to_software(pki.eidas, ssa_claims=SSA_CLAIMS, software_jwks=None)
    assert got == "organization_identifier"


@pytest.mark.parametrize(
    ("leaf", "claims"),
    [
        pytest.param("eidas_other_org", SSA_CLAIMS, id="cert-of-another-org"),
        pytest.param("eidas_twice", SSA_CLAIMS, id="two-organization-identifiers"),
        pytest.param(
            "rsa_leaf", {**SSA_CLAIMS, "software_id": "x"}, id="cert-without-org-identifier"
        ),
        pytest.param(
            "eidas",
            {"organisation_competent_authority_claims": _ca_claims("FCAGBR", REGISTRATION_ID)},
            id="other-authority",
        ),
        pytest.param("eidas", {"software_id": SOFTWARE_ID}, id="ssa-without-ca-claims"),
    ],
)
def test_binding_organization_identifier_negative(pki, leaf, claims):
    got = certificate_belongs_to_software(getattr(pki, leaf), ssa_claims=claims, software_jwks=None)
    assert got is None
