"""JOSE helpers over jwcrypto: peek at a compact JWS, verify one against candidate keys.

Nothing here trusts a JOSE header for key material: keys come only from the JWKS the
caller chose, and headers that would point elsewhere (``jku``, ``x5u``, ``jwk``, ``x5c``)
make the token unacceptable.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Iterable
from typing import Any

from jwcrypto import jwk, jws
from jwcrypto.common import JWException

#: header parameters that carry or point at key material (RFC 7515 section 4.1)
KEY_BEARING_HEADERS = frozenset({"jku", "x5u", "jwk", "x5c"})

_COMPACT_RE = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$")


class MalformedJWS(ValueError):
    """Not a compact JWS with a JSON object header and payload."""


class BadSignature(ValueError):
    """No candidate key verifies the signature."""


def b64url_decode(segment: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError) as exc:
        raise MalformedJWS("not base64url") from exc


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # "1e400" parses to inf: no timestamp is infinite
        raise ValueError(f"number out of range: {text[:20]}")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # Python's json accepts NaN and Infinity


def _json_object(segment: str, what: str) -> dict[str, Any]:
    try:
        value = json.loads(
            b64url_decode(segment), parse_float=_finite_float, parse_constant=_no_constant
        )
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise MalformedJWS(f"the {what} is not JSON") from exc
    if not isinstance(value, dict):
        raise MalformedJWS(f"the {what} is not a JSON object")
    return value


def peek(token: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The header and claims of a compact JWS, NOT verified. Raises :class:`MalformedJWS`."""
    if not isinstance(token, str) or not _COMPACT_RE.match(token):
        raise MalformedJWS("not a compact JWS (three base64url parts)")
    header_b64, payload_b64, _ = token.split(".")
    header = _json_object(header_b64, "JOSE header")
    claims = _json_object(payload_b64, "payload")
    if not isinstance(header.get("alg"), str):
        raise MalformedJWS("the JOSE header has no alg")
    return header, claims


def verify(token: str, keys: Iterable[jwk.JWK], alg: str) -> None:
    """Check the signature of ``token`` with ``alg`` against each candidate key in turn.

    The caller has already checked ``alg`` against its allow-list; jwcrypto is told the
    single algorithm to accept, so the header cannot choose another one.
    """
    signed = jws.JWS()
    try:
        signed.deserialize(token)
    except (JWException, ValueError) as exc:
        raise MalformedJWS("not a JWS") from exc
    for key in keys:
        try:
            signed.verify(key, alg=alg)
            return
        except (JWException, ValueError, TypeError):
            continue
    raise BadSignature("no key of the key set verifies the signature")
