"""Loading X.509 certificates from PEM or DER, fully decoded, with a small parse cache."""

from __future__ import annotations

import functools

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import Encoding

__all__ = ["load_certificate", "load_der", "pem_text"]

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


def load_der(der: bytes) -> x509.Certificate:
    """Load a DER certificate (as a proxy header carries it); ``ValueError`` if it is none."""
    try:
        if len(der) <= _CERT_CACHE_MAX_INPUT:
            return _load_der_cached(der)
        return _fully_parsed(x509.load_der_x509_certificate(der))
    except x509.InvalidVersion as exc:
        raise ValueError(f"not a DER certificate: {exc}") from None


@functools.lru_cache(maxsize=_CERT_CACHE_SIZE)
def _load_der_cached(der: bytes) -> x509.Certificate:
    return _fully_parsed(x509.load_der_x509_certificate(der))


@functools.lru_cache(maxsize=_CERT_CACHE_SIZE)
def pem_text(certificate: x509.Certificate) -> str:
    """``certificate`` as PEM text. Kept for the certificates in use (by their DER, which a
    certificate's hash and equality are): a registration keeps its transport certificate with
    the client, and a TPP presents the same one on every request."""
    return certificate.public_bytes(Encoding.PEM).decode("ascii")


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
