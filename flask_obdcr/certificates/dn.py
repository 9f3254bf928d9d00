"""RFC 4514 distinguished names: parse what people type, compare with certificate subjects."""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from typing import Any

from cryptography import x509
from cryptography.x509.oid import NameOID

__all__ = ["certificate_matches_dn", "dn_matches", "parse_dn", "subject_rdns"]

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
# Remembered parses: the registered tls_client_auth_subject_dn of the clients in use, compared
# at every token request, and the subjects of the certificates in use. Bounded in entries and,
# for strings, in length (a longer DN is parsed each time: none of a real client's is).
_PARSED_CACHE_SIZE = 1024
_MAX_REMEMBERED_DN = 512


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
    expected = _dn_rdns(dn)
    return expected is not None and same_rdns(expected, rdn_keys(subject.rdns))


def certificate_matches_dn(dn: str, certificate: x509.Certificate) -> bool:
    """:func:`dn_matches` for a certificate's subject, both sides parsed once and remembered:
    what the token endpoint asks at every ``tls_client_auth`` request."""
    expected = _dn_rdns(dn)
    return expected is not None and same_rdns(expected, subject_rdns(certificate))


_RdnKey = frozenset[tuple[str, Any]]


def _dn_rdns(dn: str) -> list[_RdnKey] | None:
    """The RDNs a DN string names, as :func:`rdn_keys` gives them; None if it does not parse."""
    if isinstance(dn, str) and len(dn) <= _MAX_REMEMBERED_DN:
        return _remembered_dn_rdns(dn)
    return _parse_dn_rdns(dn)


def _parse_dn_rdns(dn: str) -> list[_RdnKey] | None:
    try:
        return rdn_keys(parse_dn(dn).rdns)
    except ValueError:
        return None


# a list is returned to callers that only compare it, never change it
_remembered_dn_rdns = functools.lru_cache(maxsize=_PARSED_CACHE_SIZE)(_parse_dn_rdns)


@functools.lru_cache(maxsize=_PARSED_CACHE_SIZE)
def subject_rdns(certificate: x509.Certificate) -> list[_RdnKey]:
    """``certificate``'s subject as :func:`rdn_keys` gives it, remembered per certificate
    (keyed by its DER, as ``x509.Certificate`` hashes and compares); the list is shared:
    compare it, do not change it."""
    return rdn_keys(certificate.subject.rdns)


def rdn_keys(rdns: Iterable[Iterable[x509.NameAttribute[Any]]]) -> list[_RdnKey]:
    # A multi-valued RDN (CN=a+OU=b) is a set: its members have no order.
    return [frozenset((attr.oid.dotted_string, attr.value) for attr in rdn) for rdn in rdns]


def same_rdns(expected: list[_RdnKey], actual: list[_RdnKey]) -> bool:
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
