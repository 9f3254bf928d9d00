"""redirect_uris: https, not loopback, each one registered in the SSA."""

from __future__ import annotations

import functools
import ipaddress
import re
import socket
from urllib.parse import urlsplit

from ..errors import InvalidRedirectURI
from .base import RegistrationContext, claim_strings

MAX_URI_LENGTH = 256
_VISIBLE_ASCII = re.compile(r"[!-~]+")


@functools.lru_cache(maxsize=1024)
def _is_local(host: str) -> bool:
    # a verdict on the host's text alone (no lookup), and a TPP registers the same hosts each
    # time: kept, since a name costs ipaddress two refused parses and a regex
    host = host.rstrip(".")  # "localhost." is the fully qualified "localhost"
    if host == "localhost" or host.endswith(".localhost"):
        return True
    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        legacy = _legacy_ipv4(host)
        if legacy is None:
            return False
        address = legacy
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped  # ::ffff:127.0.0.1 is not is_loopback before Python 3.13
    return address.is_loopback or address.is_unspecified


def _is_loopback_literal(host: str) -> bool:
    """127.0.0.0/8 or ::1 written as an address in its usual form."""
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _legacy_ipv4(host: str) -> ipaddress.IPv4Address | None:
    """The shorthand IPv4 forms resolvers still accept: 127.1, 2130706433, 0x7f.0.0.1."""
    if not re.fullmatch(r"(0x[0-9a-f]+|[0-9]+)(\.(0x[0-9a-f]+|[0-9]+)){0,3}", host):
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


class RedirectURIs:
    """redirect_uris: present, https, not loopback or localhost, and each one listed in the
    SSA's software_redirect_uris (RFC 7591 section 2, OB DCR v3.3 data dictionary)."""

    name = "redirect_uris"
    clause = (
        'OB DCR v3.3 "OBClientRegistrationRequest1" data dictionary, redirect_uris (https, not'
        " localhost, within the SSA's software_redirect_uris); RFC 7591 §2 (redirect_uris),"
        " §3.2.2 (invalid_redirect_uri)"
    )

    def __call__(self, context: RegistrationContext) -> None:
        uris = context.request_claims.get("redirect_uris")
        if not isinstance(uris, list) or not uris or claim_strings(uris) is None:
            raise InvalidRedirectURI("redirect_uris must be a non-empty list of https URIs.")
        registered = claim_strings(context.ssa_claims.get("software_redirect_uris")) or []
        for uri in uris:
            # urlsplit silently drops tabs and newlines: refuse anything but visible ASCII
            if not _VISIBLE_ASCII.fullmatch(uri):
                raise InvalidRedirectURI(f"{uri[:100]!r} contains characters a URI may not.")
            try:
                parts = urlsplit(uri)
                host = (parts.hostname or "").lower()
            except ValueError:
                raise InvalidRedirectURI(f"{uri[:100]!r} is not a valid URI.") from None
            if len(uri) > MAX_URI_LENGTH or parts.scheme != "https" or not host:
                raise InvalidRedirectURI(f"{uri[:100]!r} is not an https URI.")
            # a sandbox may let a TPP's page on the presenter's own machine receive the
            # customer (OBDCR_LOOPBACK_REDIRECT_URIS): an address literal, never a name
            # (localhost may resolve elsewhere), and still https and in the SSA
            if _is_local(host) and not (
                context.rules.loopback_redirect_uris and _is_loopback_literal(host)
            ):
                raise InvalidRedirectURI(f"{uri[:100]!r} points at localhost.")
            if parts.fragment or "#" in uri:
                raise InvalidRedirectURI(f"{uri[:100]!r} has a fragment.")
            if uri not in registered:
                raise InvalidRedirectURI(
                    f"{uri[:100]!r} is not one of the software statement's redirect URIs."
                )
        # keep the TPP's order, without duplicates
        context.metadata["redirect_uris"] = list(dict.fromkeys(uris))
