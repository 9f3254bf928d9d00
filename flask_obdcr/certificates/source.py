"""Where the client certificate of a request comes from: the TLS layer (WSGI environ) or a
header set by a TLS-terminating proxy we were told to trust, in one of the registered formats."""

from __future__ import annotations

import base64
import binascii
import functools
import ipaddress
import re
import urllib.parse
from collections.abc import Callable, Collection, Mapping
from typing import Any

from cryptography import x509

from ..errors import InvalidClient
from .load import load_certificate, load_der

UNPARSEABLE = "The client certificate could not be parsed."

#: A header format turns the header's value into a certificate; it raises ``ValueError`` when
#: the value is not one (the caller makes that an ``invalid_client``).
HeaderFormat = Callable[[str], x509.Certificate]

_SF_BINARY_RE = re.compile(r":([A-Za-z0-9+/]*={0,2}):")


def rfc9440(value: str) -> x509.Certificate:
    """RFC 9440 ``Client-Cert``: an RFC 8941 byte sequence, ``:<base64 DER>:``."""
    # optionally surrounded by OWS; parsers SHOULD accept a value without "=" padding (RFC 8941
    # section 4.2.7), so padding is added back if missing
    match = _SF_BINARY_RE.fullmatch(value.strip(" \t"))
    if match is None:
        raise ValueError("not an RFC 9440 byte sequence (':<base64 DER>:')")
    b64 = match.group(1).rstrip("=")
    try:
        der = base64.b64decode(b64 + "=" * (-len(b64) % 4), validate=True)
    except binascii.Error as exc:
        raise ValueError(f"not base64: {exc}") from None
    return load_der(der)


def escaped_pem(value: str) -> x509.Certificate:
    """A URL-escaped PEM: nginx ``$ssl_client_escaped_cert``, AWS ALB
    ``X-Amzn-Mtls-Clientcert``."""
    if len(value) <= _MAX_CACHED_HEADER:
        # the header is the same on every request of a TPP: unescaped and parsed once
        return _escaped_pem_cached(value)
    return load_certificate(_unescape(value))


def envoy_xfcc(value: str) -> x509.Certificate:
    """Envoy's ``X-Forwarded-Client-Cert``: ``Hash=...;Cert="<URL-escaped PEM>";Subject=...``.

    Envoy must be configured to replace the header (``forward_client_cert_details:
    SANITIZE_SET``) and to include the certificate (``set_current_client_cert_details:
    {cert: true}``). A header of several elements (one per proxy, ``APPEND_FORWARD``) does not
    say which hop saw the client, so it is refused rather than guessed at.
    """
    elements = _split_outside_quotes(value, ",")
    if len(elements) != 1:
        raise ValueError(
            f"{len(elements)} elements; configure Envoy with forward_client_cert_details:"
            " SANITIZE_SET so that it sets one"
        )
    for pair in _split_outside_quotes(elements[0], ";"):
        key, sep, raw = pair.strip().partition("=")
        if sep and key.strip().lower() == "cert":
            raw = raw.strip()
            if len(raw) >= 2 and raw[0] == raw[-1] == '"':
                raw = raw[1:-1].replace('\\"', '"')
            return escaped_pem(raw)
    raise ValueError("no Cert= element; set set_current_client_cert_details: {cert: true}")


#: Proxy header formats by (case-insensitive) header name. ``OBDCR_CLIENT_CERT_HEADER`` names
#: the header; a name not listed here carries a URL-escaped PEM, the most common proxy form.
#: Support for another proxy is one more entry: ``HEADER_FORMATS["x-traefik-..."] = parser``.
HEADER_FORMATS: dict[str, HeaderFormat] = {
    "client-cert": rfc9440,
    "x-ssl-client-cert": escaped_pem,
    "x-forwarded-client-cert": envoy_xfcc,
}


def header_format(header: str) -> HeaderFormat:
    """The parser for a certificate header name."""
    return HEADER_FORMATS.get(header.lower(), escaped_pem)


def client_certificate_from_environ(
    environ: Mapping[str, Any],
    *,
    header: str | None = None,
    trusted_proxies: Collection[str] = (),
) -> x509.Certificate | None:
    """The TLS client certificate of a request, or ``None`` if there is none.

    * ``header=None``: ``environ["SSL_CLIENT_CERT"]`` (PEM), as set by Werkzeug's dev server
      with an SSL context, Apache mod_ssl (``SSLOptions +ExportCertData``) and the example
      bank's gunicorn middleware.
    * ``header="Client-Cert"`` and the other names of :data:`HEADER_FORMATS`: that format;
      any other name: a URL-escaped PEM.

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
        value = environ.get("HTTP_" + header.upper().replace("-", "_"))
        if value and _peer_is_trusted(environ.get("REMOTE_ADDR"), trusted_proxies):
            text = value.decode("latin-1") if isinstance(value, bytes) else str(value)
            try:
                return header_format(header)(text)
            except (ValueError, TypeError) as exc:
                raise InvalidClient(UNPARSEABLE, detail=f"{header}: {exc}") from exc

    value = environ.get("SSL_CLIENT_CERT")
    if not value:
        return None
    try:
        return load_certificate(value)
    except (ValueError, TypeError) as exc:
        raise InvalidClient(UNPARSEABLE, detail=f"SSL_CLIENT_CERT: {exc}") from exc


# a PEM is under 16 KiB; URL-escaped it may triple
_MAX_CACHED_HEADER = 48 * 1024


@functools.lru_cache(maxsize=256)
def _escaped_pem_cached(text: str) -> x509.Certificate:
    return load_certificate(_unescape(text))


def _unescape(text: str) -> str:
    # unquote, not unquote_plus: a proxy that leaves "+" unescaped must not have it turned into
    # a space, since "+" is a base64 character.
    return urllib.parse.unquote(text)


def _split_outside_quotes(text: str, separator: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for char in text:
        if escaped:
            escaped = False
        elif char == "\\" and quoted:
            escaped = True
        elif char == '"':
            quoted = not quoted
        elif char == separator and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    if quoted:
        raise ValueError("unterminated quoted value")
    parts.append("".join(current))
    return [part for part in parts if part.strip()]


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
