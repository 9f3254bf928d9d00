"""Transport (mTLS) certificates: where they come from, whether we trust them, whom they name.

Protocol core: no Flask imports. Everything here takes its inputs (WSGI environ, clock, trust
anchors, SSA claims) as arguments, so the rules can be tested without a web server.

What this module decides (DESIGN.md section 2, "rules that are ours to fix"):

* where the client certificate is read from: the WSGI ``SSL_CLIENT_CERT`` variable, or a header
  set by a TLS-terminating proxy, but only when that proxy is one we were told to trust;
* whether the certificate chains to the configured Open Banking transport CA (cryptography's
  ``x509.verification``, with the end-entity profile relaxed to what OB actually issues);
* how a registered ``tls_client_auth_subject_dn`` is compared with a certificate subject
  (structurally, not as strings);
* which rule binds a certificate to the software statement that is being registered.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import functools
import ipaddress
import os
import re
import threading
import urllib.parse
from collections import OrderedDict
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from .errors import InvalidClient

__all__ = [
    "TransportCertificateVerifier",
    "certificate_belongs_to_software",
    "client_certificate_from_environ",
    "dn_matches",
    "load_certificate",
    "parse_dn",
    "psd_identifier",
    "thumbprint_sha256",
]

# Public descriptions (they go on the wire); the reason goes to ``detail`` (the log).
_UNPARSEABLE = "The client certificate could not be parsed."
_NOT_TRUSTED = "The client certificate is not trusted."
_OUT_OF_VALIDITY = "The client certificate has expired or is not yet valid."


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


# A TPP presents the same transport certificate on every request, so parsed certificates are
# kept by their exact input (the PEM text or DER bytes as received; equal input, equal parse) in
# a bounded LRU. x509.Certificate objects are immutable, so one may serve many requests and
# threads. Large inputs are parsed without caching so the cache stays small (<= 4 MiB of keys);
# failures are never cached.
_CERT_CACHE_SIZE = 256
_CERT_CACHE_MAX_INPUT = 16 * 1024


def load_certificate(data: str | bytes) -> x509.Certificate:
    """Load one X.509 certificate from PEM (``str`` or ``bytes``) or DER (``bytes``).

    Whitespace around a PEM block is tolerated (environ values and config files often carry a
    trailing newline). Raises ``ValueError`` when ``data`` is not a certificate.
    """
    if type(data) in (str, bytes) and len(data) <= _CERT_CACHE_MAX_INPUT:
        return _load_certificate_cached(data)
    return _load_certificate(data)


@functools.lru_cache(maxsize=_CERT_CACHE_SIZE)
def _load_certificate_cached(data: str | bytes) -> x509.Certificate:
    return _load_certificate(data)


@functools.lru_cache(maxsize=_CERT_CACHE_SIZE)
def _load_der_cached(der: bytes) -> x509.Certificate:
    return _fully_parsed(x509.load_der_x509_certificate(der))


def _load_certificate(data: str | bytes) -> x509.Certificate:
    if isinstance(data, str):
        try:
            raw = data.strip().encode("utf-8")
        except UnicodeEncodeError:  # lone surrogates
            raise ValueError("not a PEM certificate: not encodable text") from None
        return _load_pem(raw)
    if isinstance(data, (bytes, bytearray, memoryview)):
        raw = bytes(data)
        # A DER certificate starts with a SEQUENCE tag (0x30) and is never stripped: its
        # signature may well end in a byte that looks like whitespace. Anything else is PEM,
        # possibly after text such as openssl's "subject=..." or "Bag Attributes" lines.
        if raw[:1] == b"\x30":
            try:
                return _fully_parsed(x509.load_der_x509_certificate(raw))
            except (ValueError, x509.InvalidVersion) as exc:
                if b"-----BEGIN" not in raw:
                    raise ValueError(f"not a DER certificate: {exc}") from None
        return _load_pem(raw.strip())
    raise TypeError(f"expected str or bytes, got {type(data).__name__}")


def _load_pem(raw: bytes) -> x509.Certificate:
    if not raw:
        raise ValueError("not a certificate: empty input")
    try:
        return _fully_parsed(x509.load_pem_x509_certificate(raw))
    except (ValueError, x509.InvalidVersion) as exc:
        raise ValueError(f"not a PEM certificate: {exc}") from None


def _fully_parsed(certificate: x509.Certificate) -> x509.Certificate:
    """cryptography decodes names, the key and the extensions lazily, on first use: decode
    them now, so a malformed certificate is refused here, not by a crash in a later check."""
    try:
        certificate.subject.rfc4514_string()
        certificate.issuer.rfc4514_string()
        certificate.public_key()
        certificate.extensions  # noqa: B018
    except (
        ValueError,
        TypeError,
        UnsupportedAlgorithm,
        x509.DuplicateExtension,
        x509.UnsupportedGeneralNameType,
    ) as exc:
        raise ValueError(f"malformed certificate: {type(exc).__name__}: {exc}") from None
    return certificate


# --------------------------------------------------------------------------------------------
# Where the certificate comes from
# --------------------------------------------------------------------------------------------

_RFC9440_HEADER = "client-cert"
_SF_BINARY_RE = re.compile(r":([A-Za-z0-9+/]*={0,2}):")


def client_certificate_from_environ(
    environ: Mapping[str, Any],
    *,
    header: str | None = None,
    trusted_proxies: Collection[str] = (),
) -> x509.Certificate | None:
    """The TLS client certificate of a request, or ``None`` if there is none.

    * ``header=None``: ``environ["SSL_CLIENT_CERT"]`` (PEM), as set by Werkzeug's dev server
      with an SSL context and by Apache mod_ssl (``SSLOptions +ExportCertData``).
    * ``header="Client-Cert"`` (any case): RFC 9440, a structured-field byte sequence
      ``:<base64 DER>:``.
    * any other header name, e.g. ``"X-SSL-Client-Cert"``: a URL-escaped PEM (nginx
      ``$ssl_client_escaped_cert``, AWS ALB ``X-Amzn-Mtls-Clientcert``).

    A header is honoured only when ``environ["REMOTE_ADDR"]`` is in ``trusted_proxies``
    (addresses or CIDR networks). Anyone can send a header, so from any other peer it is ignored
    as if absent and ``SSL_CLIENT_CERT`` is used if present. From a trusted proxy a non-empty
    header wins over ``SSL_CLIENT_CERT``.

    Raises ``InvalidClient`` when a certificate is present but malformed: the client sent
    *something*, and silently treating it as "no certificate" would hide the real problem.
    Raises ``ValueError`` if ``trusted_proxies`` holds something that is not an address or
    network (a configuration error).
    """
    if header:
        key = "HTTP_" + header.upper().replace("-", "_")
        value = environ.get(key)
        if value and _peer_is_trusted(environ.get("REMOTE_ADDR"), trusted_proxies):
            if header.lower() == _RFC9440_HEADER:
                return _parse_rfc9440(value, header)
            return _parse_escaped_pem(value, header)

    value = environ.get("SSL_CLIENT_CERT")
    if not value:
        return None
    try:
        return load_certificate(value)
    except (ValueError, TypeError) as exc:
        raise InvalidClient(_UNPARSEABLE, detail=f"SSL_CLIENT_CERT: {exc}") from exc


def _parse_rfc9440(value: Any, header: str) -> x509.Certificate:
    # RFC 8941 sf-binary: ":" base64 ":", optionally surrounded by OWS. Parsers SHOULD accept a
    # value without "=" padding (RFC 8941 section 4.2.7), so padding is added back if missing.
    text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
    match = _SF_BINARY_RE.fullmatch(text.strip(" \t"))
    if match is None:
        raise InvalidClient(
            _UNPARSEABLE, detail=f"{header}: not an RFC 9440 byte sequence (':<base64 DER>:')"
        )
    b64 = match.group(1).rstrip("=")
    try:
        der = base64.b64decode(b64 + "=" * (-len(b64) % 4), validate=True)
        if len(der) <= _CERT_CACHE_MAX_INPUT:
            return _load_der_cached(der)
        return _fully_parsed(x509.load_der_x509_certificate(der))
    except (ValueError, binascii.Error, x509.InvalidVersion) as exc:
        raise InvalidClient(_UNPARSEABLE, detail=f"{header}: {exc}") from exc


def _parse_escaped_pem(value: Any, header: str) -> x509.Certificate:
    text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
    try:
        if len(text) <= 3 * _CERT_CACHE_MAX_INPUT:
            # the header is the same on every request of a TPP: unescaped and parsed once
            return _load_escaped_pem_cached(text)
        return load_certificate(_unescape(text))
    except ValueError as exc:
        raise InvalidClient(_UNPARSEABLE, detail=f"{header}: {exc}") from exc


@functools.lru_cache(maxsize=_CERT_CACHE_SIZE)
def _load_escaped_pem_cached(text: str) -> x509.Certificate:
    return load_certificate(_unescape(text))


def _unescape(text: str) -> str:
    # unquote, not unquote_plus: a proxy that leaves "+" unescaped must not have it turned into
    # a space, since "+" is a base64 character.
    return urllib.parse.unquote(text)


def _peer_is_trusted(remote_addr: Any, trusted_proxies: Collection[str]) -> bool:
    if not trusted_proxies or not isinstance(remote_addr, str) or not remote_addr:
        return False
    networks = _networks(frozenset(trusted_proxies))
    # a proxy's requests come from a handful of addresses: the verdict is kept per address
    return _address_in_networks(remote_addr, networks)


@functools.lru_cache(maxsize=1024)
def _address_in_networks(
    remote_addr: str, networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]
) -> bool:
    try:
        address = ipaddress.ip_address(remote_addr.strip())
    except ValueError:
        return False  # e.g. a unix socket peer: not an address we can have been told to trust
    candidates: list[ipaddress.IPv4Address | ipaddress.IPv6Address] = [address]
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id:  # "fe80::1%eth0": the zone does not change who the peer is
            candidates.append(ipaddress.IPv6Address(str(address).split("%", 1)[0]))
        if address.ipv4_mapped is not None:  # dual-stack socket reporting ::ffff:10.0.0.1
            candidates.append(address.ipv4_mapped)
    return any(
        addr in net for addr in candidates for net in networks if addr.version == net.version
    )


@functools.lru_cache(maxsize=32)
def _networks(
    trusted_proxies: frozenset[str],
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    # Cached: the same configured collection is passed on every request.
    networks = []
    for entry in trusted_proxies:
        try:
            networks.append(ipaddress.ip_network(str(entry).strip(), strict=False))
        except ValueError:
            raise ValueError(
                f"trusted proxy {entry!r} is not an IP address or network (e.g. '10.0.0.0/8')"
            ) from None
    return tuple(networks)


# --------------------------------------------------------------------------------------------
# Chain verification
# --------------------------------------------------------------------------------------------

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
    # alongside it is fine; anyExtendedKeyUsage alone is refused). A certificate without EKU is
    # accepted, as RFC 5280 and every TLS stack treat a missing EKU as unrestricted. keyUsage must
    # not assert keyCertSign and basicConstraints must not say cA: a CA certificate is never a
    # client certificate.
    return (
        ExtensionPolicy.webpki_defaults_ee()
        .may_be_present(x509.SubjectAlternativeName, Criticality.AGNOSTIC, None)
        .may_be_present(x509.AuthorityKeyIdentifier, Criticality.NON_CRITICAL, None)
    )


class TransportCertificateVerifier:
    """Checks that a TPP transport certificate chains to the configured trust anchors.

    A trust anchor may be a root CA, or the "OpenBanking Issuing CA" itself (what banks usually
    configure): any certificate in the store ends a chain, self-signed or not. Anchors must be CA
    certificates (basicConstraints cA, keyUsage keyCertSign, valid at verification time), as
    cryptography's CA policy checks the anchor like any other issuer.

    The store and extension policies are built once; each :meth:`verify` builds a verifier for
    its own ``now`` (about 3 microseconds), so an injected clock costs nothing. The chain check
    is dominated by signature checks: about 0.1 ms with the issuing CA as anchor, 0.3 ms for
    leaf -> issuing CA -> root (measured with cryptography 50).

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
        # (leaf, intermediates) -> (not before, not after) of the verified chain as a whole
        self._verified: OrderedDict[
            tuple[x509.Certificate, tuple[x509.Certificate, ...]],
            tuple[datetime.datetime, datetime.datetime],
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
    ) -> None:
        """Raise ``InvalidClient`` unless ``certificate`` is a valid client cert at ``now``.

        ``now`` may be aware (any zone) or naive (taken as UTC). Validity bounds are inclusive,
        as in RFC 5280: valid at exactly ``notAfter``, expired one second later.
        """
        now = _as_utc(now)

        key = (certificate, tuple(intermediates))
        if self._cache_size:
            # a chain verified before, valid as a whole at `now` (the leaf included)
            with self._lock:
                window = self._verified.get(key)
                if window is not None:
                    self._verified.move_to_end(key)
            if window is not None and window[0] <= now <= window[1]:
                return

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
        if self._cache_size:
            chain = verified.chain
            window = (
                max(c.not_valid_before_utc for c in chain),
                min(c.not_valid_after_utc for c in chain),
            )
            with self._lock:
                self._verified[key] = window
                self._verified.move_to_end(key)
                while len(self._verified) > self._cache_size:
                    self._verified.popitem(last=False)


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


# --------------------------------------------------------------------------------------------
# Distinguished names
# --------------------------------------------------------------------------------------------

# Attribute type names, matched case-insensitively. Short names as OpenSSL and RFC 4514 print
# them, long names as OpenSSL's -nameopt oid/long forms, plus Windows' "S" and "E".
_ATTRIBUTE_TYPES: dict[str, x509.ObjectIdentifier] = {
    "cn": NameOID.COMMON_NAME,
    "commonname": NameOID.COMMON_NAME,
    "ou": NameOID.ORGANIZATIONAL_UNIT_NAME,
    "organizationalunitname": NameOID.ORGANIZATIONAL_UNIT_NAME,
    "o": NameOID.ORGANIZATION_NAME,
    "organizationname": NameOID.ORGANIZATION_NAME,
    "c": NameOID.COUNTRY_NAME,
    "countryname": NameOID.COUNTRY_NAME,
    "l": NameOID.LOCALITY_NAME,
    "localityname": NameOID.LOCALITY_NAME,
    "st": NameOID.STATE_OR_PROVINCE_NAME,
    "s": NameOID.STATE_OR_PROVINCE_NAME,
    "stateorprovincename": NameOID.STATE_OR_PROVINCE_NAME,
    "street": NameOID.STREET_ADDRESS,
    "streetaddress": NameOID.STREET_ADDRESS,
    "dc": NameOID.DOMAIN_COMPONENT,
    "domaincomponent": NameOID.DOMAIN_COMPONENT,
    "uid": NameOID.USER_ID,
    "userid": NameOID.USER_ID,
    "serialnumber": NameOID.SERIAL_NUMBER,
    "emailaddress": NameOID.EMAIL_ADDRESS,
    "email": NameOID.EMAIL_ADDRESS,
    "e": NameOID.EMAIL_ADDRESS,
    "organizationidentifier": NameOID.ORGANIZATION_IDENTIFIER,
    "givenname": NameOID.GIVEN_NAME,
    "gn": NameOID.GIVEN_NAME,
    "surname": NameOID.SURNAME,
    "sn": NameOID.SURNAME,
    "title": NameOID.TITLE,
}
_DOTTED_OID_RE = re.compile(r"(?:0|[1-9][0-9]*)(?:\.(?:0|[1-9][0-9]*))+")
# Only SPACE is insignificant around values (RFC 4514 escapes it; a tab is part of the value).
_DN_SPACE = " "
# Characters that may need a backslash in an RFC 4514 value; escaping them anywhere is allowed.
_DN_SPECIAL = frozenset(' "#+,;<=>\\')
# ASN.1 string tags that may appear in a "#<hex BER>" value (RFC 4514 section 2.4).
_DN_STRING_TAGS = {0x0C: "utf-8", 0x13: "ascii", 0x16: "ascii", 0x14: "latin-1", 0x1E: "utf-16-be"}


def parse_dn(dn: str) -> x509.Name:
    """Parse an RFC 4514 distinguished name string into an ``x509.Name``.

    More forgiving than ``x509.Name.from_rfc4514_string`` about what people type into
    ``tls_client_auth_subject_dn``: attribute type names are case-insensitive (``cn``,
    ``ORGANIZATIONIDENTIFIER``), dotted OIDs (``2.5.4.97=...``, also ``OID.2.5.4.97``) are
    accepted, whitespace around ``=`` and after ``,``/``+`` is ignored, and legacy RFC 2253
    quoted values (``O="Acme, Ltd"``) are read. Values are unescaped as RFC 4514 says
    (``O=Acme\\, Ltd`` is ``Acme, Ltd``). The string order is RFC 4514's, most specific first;
    the returned Name is in ASN.1 order, as ``from_rfc4514_string`` returns it.

    Each type is rewritten as its dotted OID and the cleaned-up string handed to cryptography's
    own RFC 4514 parser, so value unescaping and per-attribute checks (``C`` is two letters, ``CN``
    at most 64 characters) stay cryptography's. Raises ``ValueError`` for anything that is not a
    non-empty distinguished name.
    """
    if not isinstance(dn, str):
        raise ValueError(f"a distinguished name must be a string, not {type(dn).__name__}")
    if not dn.strip():
        raise ValueError("empty distinguished name")
    rdns = []
    for rdn in _split_unescaped(dn, ","):
        attributes = []
        for attribute in _split_unescaped(rdn, "+"):
            type_name, sep, value = attribute.partition("=")
            if not sep:
                raise ValueError(f"attribute without '=' in distinguished name: {attribute!r}")
            oid = _attribute_oid(type_name.strip())
            attributes.append(f"{oid.dotted_string}={_normalize_value(value)}")
        rdns.append("+".join(attributes))
    try:
        return x509.Name.from_rfc4514_string(",".join(rdns))
    except (ValueError, TypeError, UnicodeDecodeError) as exc:
        reason = str(exc) or "malformed attribute value"
        raise ValueError(f"invalid distinguished name {dn!r}: {reason}") from None


def dn_matches(dn: str, subject: x509.Name) -> bool:
    """True if the DN string names exactly ``subject``; never raises.

    Compared RDN by RDN: same attribute types (by OID) and the same values after unescaping,
    compared exactly. The string may list the RDNs most specific first (RFC 4514,
    ``CN=..,OU=..,O=..,C=GB``) or in certificate order (OpenSSL's one-line form,
    ``C=GB, O=.., OU=.., CN=..``). An extra or a missing attribute means no match, as does a DN
    that cannot be parsed.
    """
    try:
        parsed = parse_dn(dn)
    except ValueError:
        return False
    return _same_rdns(_rdn_keys(parsed.rdns), _rdn_keys(subject.rdns))


_RdnKey = frozenset[tuple[str, Any]]


def _rdn_keys(rdns: Iterable[Iterable[x509.NameAttribute[Any]]]) -> list[_RdnKey]:
    # A multi-valued RDN (CN=a+OU=b) is a set: its members have no order.
    return [frozenset((attr.oid.dotted_string, attr.value) for attr in rdn) for rdn in rdns]


def _same_rdns(expected: list[_RdnKey], actual: list[_RdnKey]) -> bool:
    return expected == actual or expected[::-1] == actual


def _split_unescaped(text: str, separator: str) -> list[str]:
    # Split on a separator that is neither backslash-escaped nor inside a legacy quoted value.
    parts: list[str] = []
    start = 0
    i = 0
    quoted = False
    while i < len(text):
        char = text[i]
        if char == "\\":
            i += 2  # the escaped character, or the first hex digit of a \XX pair
            continue
        if char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            parts.append(text[start:i])
            start = i + 1
        i += 1
    if quoted:
        raise ValueError("unterminated quoted value in distinguished name")
    if i > len(text):
        raise ValueError("distinguished name ends with a lone backslash")
    parts.append(text[start:])
    return parts


def _attribute_oid(type_name: str) -> x509.ObjectIdentifier:
    if type_name[:4].lower() == "oid.":
        type_name = type_name[4:]
    if _DOTTED_OID_RE.fullmatch(type_name):
        return x509.ObjectIdentifier(type_name)
    try:
        return _ATTRIBUTE_TYPES[type_name.lower()]
    except KeyError:
        raise ValueError(f"unknown attribute type {type_name!r} in distinguished name") from None


def _normalize_value(raw: str) -> str:
    # Drop unescaped leading/trailing spaces; an escaped "\ " at either end is part of the value.
    value = raw.lstrip(_DN_SPACE)
    end = 0
    i = 0
    while i < len(value):
        if value[i] == "\\":
            i += 2
            end = min(i, len(value))
            continue
        i += 1
        if value[i - 1] not in _DN_SPACE:
            end = i
    value = value[:end]
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        return _escape_value(_unescape_quoted(value[1:-1]))
    if value.startswith("#"):
        return _escape_value(_decode_hex_value(value[1:]))
    return value


def _unescape_quoted(text: str) -> str:
    # Inside RFC 2253 quotes only '\' pairs are special: "\"" , "\\", "\," or a \XX hex pair.
    out = bytearray()
    i = 0
    while i < len(text):
        char = text[i]
        if char == "\\":
            pair = text[i + 1 : i + 3]
            if len(pair) == 2 and all(c in "0123456789abcdefABCDEF" for c in pair):
                out += bytes.fromhex(pair)
                i += 3
                continue
            if i + 1 >= len(text):
                raise ValueError("dangling backslash in quoted value")
            out += text[i + 1].encode("utf-8")
            i += 2
            continue
        if char == '"':
            raise ValueError("unescaped quote inside quoted value")
        out += char.encode("utf-8")
        i += 1
    return out.decode("utf-8")


def _decode_hex_value(hexdigits: str) -> str:
    # RFC 4514 "#" form: the BER encoding of the value. We read the string types (cryptography
    # would hand back the tag and length bytes as text) and refuse anything else.
    try:
        ber = bytes.fromhex(hexdigits)
    except ValueError:
        raise ValueError("invalid #hex value in distinguished name") from None
    if len(ber) < 2 or ber[0] not in _DN_STRING_TAGS:
        raise ValueError("#hex value in distinguished name is not an ASN.1 string")
    length, offset = ber[1], 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 2 or len(ber) < 2 + count:
            raise ValueError("bad length in #hex value")
        length, offset = int.from_bytes(ber[2 : 2 + count], "big"), 2 + count
    content = ber[offset:]
    if len(content) != length:
        raise ValueError("bad length in #hex value")
    return content.decode(_DN_STRING_TAGS[ber[0]])


def _escape_value(text: str) -> str:
    # Escape every special character wherever it is (RFC 4514 permits it); control characters as
    # \XX so that cryptography's value grammar accepts them.
    if not text:
        return ""
    out = []
    for char in text:
        if char in _DN_SPECIAL:
            out.append("\\" + char)
        elif ord(char) < 0x20 or char == "\x7f":
            out.append(f"\\{ord(char):02X}")
        else:
            out.append(char)
    return "".join(out)


# --------------------------------------------------------------------------------------------
# Binding a certificate to the software statement
# --------------------------------------------------------------------------------------------


def thumbprint_sha256(certificate: x509.Certificate) -> str:
    """The RFC 8705 ``x5t#S256`` value: unpadded base64url of the SHA-256 of the DER."""
    digest = certificate.fingerprint(hashes.SHA256())
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


# ISO 3166 alpha-3 -> alpha-2 for the EEA and the UK (the countries whose competent authorities
# issue PSD2 authorisations), plus Gibraltar, which passported under PSD2.
_ALPHA3_TO_ALPHA2 = {
    "AUT": "AT", "BEL": "BE", "BGR": "BG", "HRV": "HR", "CYP": "CY", "CZE": "CZ", "DNK": "DK",
    "EST": "EE", "FIN": "FI", "FRA": "FR", "DEU": "DE", "GRC": "GR", "HUN": "HU", "ISL": "IS",
    "IRL": "IE", "ITA": "IT", "LVA": "LV", "LIE": "LI", "LTU": "LT", "LUX": "LU", "MLT": "MT",
    "NLD": "NL", "NOR": "NO", "POL": "PL", "PRT": "PT", "ROU": "RO", "SVK": "SK", "SVN": "SI",
    "ESP": "ES", "SWE": "SE", "GBR": "GB", "GIB": "GI",
}  # fmt: skip
# authority_id is <authority><alpha-3 country>: "OBGBR", "FCAGBR". ETSI TS 119 495 allows an
# authority code of 2 to 8 upper-case letters.
_AUTHORITY_ID_RE = re.compile(r"([A-Z]{2,8})([A-Z]{3})")
_REGISTRATION_ID_RE = re.compile(r"[^\s\x00-\x1f\x7f]+")


def psd_identifier(ssa_claims: Mapping[str, Any]) -> str | None:
    """The ETSI TS 119 495 PSD2 identifier the SSA's competent-authority claims imply.

    ``{"authority_id": "OBGBR", "registration_id": "Unknown0015800001041REAAY"}`` gives
    ``"PSDGB-OB-Unknown0015800001041REAAY"``: ``PSD`` + country alpha-2 + ``-`` + authority +
    ``-`` + registration_id. ``organisation_competent_authority_claims`` may be one object or a
    list of them; the first well-formed one is used. ``None`` if there is none.
    """
    claims = ssa_claims.get("organisation_competent_authority_claims") if ssa_claims else None
    candidates = claims if isinstance(claims, list) else [claims]
    for claim in candidates:
        if not isinstance(claim, Mapping):
            continue
        authority_id = claim.get("authority_id")
        registration_id = claim.get("registration_id")
        if not isinstance(authority_id, str) or not isinstance(registration_id, str):
            continue
        match = _AUTHORITY_ID_RE.fullmatch(authority_id)
        if match is None or not _REGISTRATION_ID_RE.fullmatch(registration_id):
            continue
        country = _ALPHA3_TO_ALPHA2.get(match.group(2))
        if country is None:
            continue
        return f"PSD{country}-{match.group(1)}-{registration_id}"
    return None


def certificate_belongs_to_software(
    certificate: x509.Certificate,
    *,
    ssa_claims: Mapping[str, Any],
    software_jwks: Mapping[str, Any] | None,
) -> str | None:
    """Name of the first rule that binds ``certificate`` to the SSA's software/org, or ``None``.

    * ``"jwks_x5c"``: the certificate is the first ``x5c`` entry (standard base64 DER) of a key
      in the software JWKS. Compared by DER, so RSA and EC certificates alike; malformed keys are
      skipped.
    * ``"ob_subject"``: the subject is exactly ``CN=<software_id>, OU=<org_id>, O=OpenBanking,
      C=GB`` (the legacy OB transport profile), compared as :func:`dn_matches` compares.
    * ``"organization_identifier"``: the subject has exactly one organizationIdentifier
      (2.5.4.97) and it equals :func:`psd_identifier` of the SSA (the eIDAS/OBWAC profile).
    """
    if software_jwks is not None and _in_jwks_x5c(certificate, software_jwks):
        return "jwks_x5c"

    software_id = ssa_claims.get("software_id")
    org_id = ssa_claims.get("org_id")
    if isinstance(software_id, str) and software_id and isinstance(org_id, str) and org_id:
        expected = [
            frozenset({(NameOID.COMMON_NAME.dotted_string, software_id)}),
            frozenset({(NameOID.ORGANIZATIONAL_UNIT_NAME.dotted_string, org_id)}),
            frozenset({(NameOID.ORGANIZATION_NAME.dotted_string, "OpenBanking")}),
            frozenset({(NameOID.COUNTRY_NAME.dotted_string, "GB")}),
        ]
        if _same_rdns(expected, _rdn_keys(certificate.subject.rdns)):
            return "ob_subject"

    expected_psd = psd_identifier(ssa_claims)
    if expected_psd is not None:
        values = [
            attr.value
            for attr in certificate.subject.get_attributes_for_oid(NameOID.ORGANIZATION_IDENTIFIER)
        ]
        # Exactly one: a subject naming two organisations binds to neither.
        if values == [expected_psd]:
            return "organization_identifier"
    return None


@functools.lru_cache(maxsize=_CERT_CACHE_SIZE)
def _der_and_base64(certificate: x509.Certificate) -> tuple[bytes, str]:
    # Keyed by the (immutable) certificate, whose hash and equality are its DER's; with
    # load_certificate's cache the same object comes back on every request of a TPP.
    der = certificate.public_bytes(Encoding.DER)
    return der, base64.b64encode(der).decode("ascii")


def _in_jwks_x5c(certificate: x509.Certificate, jwks: Mapping[str, Any]) -> bool:
    """``certificate``'s DER is the first ``x5c`` entry (strictly decoded base64, whitespace
    ignored) of a key of ``jwks``; malformed keys and entries are skipped. Found without
    decoding every entry: a canonical entry is compared as text."""
    der, der_b64 = _der_and_base64(certificate)
    keys = jwks.get("keys") if isinstance(jwks, Mapping) else None
    if not isinstance(keys, list):
        return False
    for key in keys:
        x5c = key.get("x5c") if isinstance(key, Mapping) else None
        if not isinstance(x5c, list) or not x5c or not isinstance(x5c[0], str):
            continue
        # RFC 7517 4.7: x5c entries are standard base64 (not base64url) DER, first = the key's cert.
        text = "".join(x5c[0].split())
        if text == der_b64:
            return True  # the canonical base64 of these very bytes
        # Another spelling could still decode to them (non-zero pad bits); it can only if
        # its decoded length, 3/4 of its data characters, is the DER's length.
        if len(text.rstrip("=")) * 3 // 4 != len(der):
            continue
        try:
            if base64.b64decode(text, validate=True) == der:
                return True
        except (ValueError, binascii.Error):
            continue
    return False
