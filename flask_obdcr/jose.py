"""JOSE helpers over jwcrypto: peek at a compact JWS, verify one against candidate keys.

Nothing here trusts a JOSE header for key material: keys come only from the JWKS the
caller chose, and headers that would point elsewhere (``jku``, ``x5u``, ``jwk``, ``x5c``)
make the token unacceptable.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Any

from jwcrypto import jwk, jws
from jwcrypto.common import JWException, base64url_decode, base64url_encode
from jwcrypto.jwa import JWA

#: header parameters that carry or point at key material (RFC 7515 section 4.1)
KEY_BEARING_HEADERS = frozenset({"jku", "x5u", "jwk", "x5c"})

_B64URL_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


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


# One decoder for every peek: json.loads(..., parse_float=...) builds a new one per call.
_DECODER = json.JSONDecoder(parse_float=_finite_float, parse_constant=_no_constant)


def _json_object(segment: str, what: str) -> dict[str, Any]:
    try:
        raw = b64url_decode(segment)
        # what json.loads does with bytes: detect UTF-8/16/32, then decode the text
        value = _DECODER.decode(raw.decode(json.detect_encoding(raw), "surrogatepass"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise MalformedJWS(f"the {what} is not JSON") from exc
    if not isinstance(value, dict):
        raise MalformedJWS(f"the {what} is not a JSON object")
    return value


def _is_compact(token: str) -> bool:
    """Three non-empty base64url parts and nothing else (not even a trailing newline);
    several times faster on a 4 kB token than a regex."""
    text = token
    try:
        ascii_text = text.encode("ascii")
    except UnicodeEncodeError:
        return False
    if ascii_text.translate(None, _B64URL_ALPHABET) != b"..":
        return False
    first, last = text.index("."), text.rindex(".")
    return 0 < first < last - 1 < len(text) - 2


def peek(token: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The header and claims of a compact JWS, NOT verified. Raises :class:`MalformedJWS`."""
    if not isinstance(token, str) or not _is_compact(token):
        raise MalformedJWS("not a compact JWS (three base64url parts)")
    header_b64, payload_b64, _ = token.split(".")
    header = _json_object(header_b64, "JOSE header")
    claims = _json_object(payload_b64, "payload")
    if not isinstance(header.get("alg"), str):
        raise MalformedJWS("the JOSE header has no alg")
    return header, claims


def verify(token: str, keys: Iterable[jwk.JWK], alg: str) -> jwk.JWK:
    """Check the signature of ``token`` with ``alg`` against each candidate key in turn;
    return the key that verifies it.

    The caller has already checked ``alg`` against its allow-list; jwcrypto is told the
    single algorithm to accept, so the header cannot choose another one.

    Raises :class:`MalformedJWS` if ``token`` is not a JWS, :class:`BadSignature` if no key
    verifies it.
    """
    keys = list(keys)
    size = _EC_SIGNATURE_BYTES.get(alg)
    if size is not None and isinstance(token, str):
        # R || S of fixed width (RFC 7518 3.4): refuse other lengths, which jwcrypto would
        # split in half and could verify (a malleable signature)
        signature_b64 = token.rpartition(".")[2]
        if len(b64url_decode(signature_b64)) != size:
            raise BadSignature(f"an {alg} signature is {size} bytes")
    fast = _plain_compact(token, alg, keys)
    if fast is not None:
        signing_input, signature = fast
        engine = _engine(alg)
        kty = _ALG_KTY[alg]
        for key in keys:
            if key.get("kty") != kty:
                continue  # would fail in cryptography anyway; refuse it up front
            try:
                # jwcrypto's own per-algorithm verifier, as JWS.verify ends up calling it:
                # the key's use/key_ops and curve are checked by key.get_op_key("verify")
                engine.verify(key, signing_input, signature)
                return key
            except Exception:  # noqa: BLE001, S112 - jwcrypto treats any failure as "no"
                continue
        raise BadSignature("no key of the key set verifies the signature")

    signed = jws.JWS()
    try:
        signed.deserialize(token)
    except (JWException, ValueError) as exc:
        raise MalformedJWS("not a JWS") from exc
    for key in keys:
        try:
            signed.verify(key, alg=alg)
            return key
        except (JWException, ValueError, TypeError):
            continue
    raise BadSignature("no key of the key set verifies the signature")


def copy_json(value: Any) -> Any:
    """A deep copy of a JSON tree (dicts, lists and immutable scalars, as json.loads makes
    them): new containers, shared leaves, as copy.deepcopy gives, several times faster."""
    kind = type(value)
    if kind is dict:
        return {name: copy_json(member) for name, member in value.items()}
    if kind is list:
        return [copy_json(member) for member in value]
    return value


class VerifiedTokens:
    """Tokens that verified, for tokens that come back unchanged.

    A software statement travels with every registration of its software, byte for byte the
    same; decoding it and verifying its signature with the same key again can only give the
    same answers. For the last ``maxsize`` tokens that verified (by SHA-256 of the compact
    form) this keeps the key object that verified it, under which ``alg``, and the decoded
    header and claims:

    * :meth:`peek` returns copies of the decoded parts of a remembered token (else
      :func:`peek`); the caller still checks every claim, the time-based ones above all.
    * :meth:`verify` skips the public-key operation only when the very key object that
      verified the token is among the candidates the caller offers now. A key set that has
      been fetched again (keys rotated or revoked) holds new objects, so the token is
      verified afresh.

    Tokens that fail are never remembered. ``maxsize=0`` turns this off.
    """

    def __init__(self, maxsize: int = 1024) -> None:
        self.maxsize = maxsize
        self._entries: OrderedDict[bytes, tuple[str, jwk.JWK, dict, dict]] = OrderedDict()
        self._lock = threading.Lock()

    def peek(self, token: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """As :func:`peek` (the result is the caller's to change)."""
        entry = self._recall(token)
        if entry is None:
            return peek(token)
        return copy_json(entry[2]), copy_json(entry[3])

    def verify(self, token: str, keys: Sequence[jwk.JWK], alg: str) -> jwk.JWK:
        """As :func:`verify`, remembering the outcome."""
        entry = self._recall(token)
        if entry is not None and entry[0] == alg and any(key is entry[1] for key in keys):
            return entry[1]
        key = verify(token, keys, alg)
        if self.maxsize > 0:
            try:
                header, claims = peek(token)  # our own copy: callers may change theirs
            except MalformedJWS:  # verifiable, yet not what peek accepts: not remembered
                return key
            with self._lock:
                digest = _digest(token)
                self._entries[digest] = (alg, key, header, claims)
                self._entries.move_to_end(digest)
                while len(self._entries) > self.maxsize:
                    self._entries.popitem(last=False)
        return key

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def _recall(self, token: Any) -> tuple[str, jwk.JWK, dict, dict] | None:
        if self.maxsize <= 0 or not isinstance(token, str) or not self._entries:
            return None
        digest = _digest(token)
        with self._lock:
            entry = self._entries.get(digest)
            if entry is not None:
                self._entries.move_to_end(digest)
        return entry


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


# --------------------------------------------------------------------------- fast path
#
# jwcrypto's JWS object costs more than the public-key operation it wraps: every JWS()
# deep-copies the header registry, and deserialize + verify decode the header three times
# and build a JWSCore per key. For the tokens DCR actually sees (compact, one protected
# header that names ``alg`` and uses neither ``crit`` nor ``b64``), every check jwcrypto makes
# before the signature reduces to "the header's alg is the pinned alg"; for those tokens
# :func:`verify` computes jwcrypto's signing input itself and calls the same jwcrypto
# per-algorithm verifier (``JWA.signing_alg(alg).verify``). Anything else (crit, b64, an alg
# mismatch, an algorithm outside the RSA/EC set, input that is not plain compact) takes the
# jwcrypto JWS path, unchanged, so the outcome is the same in every case.

#: algorithm -> the key type that can have made its signatures (HS*, none, EdDSA: slow path)
_ALG_KTY: dict[str, str] = {
    **{alg: "RSA" for alg in ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")},
    **{alg: "EC" for alg in ("ES256", "ES384", "ES512")},
}
_ENGINES: dict[str, Any] = {}
_EC_SIGNATURE_BYTES = {"ES256": 64, "ES384": 96, "ES512": 132}
_B64URL_VALUE = {char: value for value, char in enumerate(_B64URL_ALPHABET.decode())}


def _engine(alg: str) -> Any:
    engine = _ENGINES.get(alg)
    if engine is None:  # stateless (padding and hash objects only): shared by threads
        engine = _ENGINES[alg] = JWA.signing_alg(alg)
    return engine


def _canonical_b64url(segment: str) -> bool:
    """True if decoding then re-encoding ``segment`` (base64url characters only) gives it back:
    its length is not 1 mod 4 and the unused low bits of its last character are zero."""
    rest = len(segment) % 4
    if rest == 0:
        return True
    if rest == 1:
        return False
    spare_bits = 0x0F if rest == 2 else 0x03
    return not _B64URL_VALUE[segment[-1]] & spare_bits


def _plain_compact(token: Any, alg: str, keys: list[Any]) -> tuple[bytes, bytes] | None:
    """``(signing input, signature)`` as jwcrypto would verify them, or None when ``token``
    is not a plain compact JWS for ``alg`` (then the caller uses jwcrypto's JWS object)."""
    if alg not in _ALG_KTY or not isinstance(token, str):
        return None
    try:
        ascii_token = token.encode("ascii")
    except UnicodeEncodeError:
        return None
    # [A-Za-z0-9_-]+ . [A-Za-z0-9_-]+ . [A-Za-z0-9_-]+ and nothing else (cheaper than a regex)
    if ascii_token.translate(None, _B64URL_ALPHABET) != b"..":
        return None
    header_b64, payload_b64, signature_b64 = token.split(".")
    if not (header_b64 and payload_b64 and signature_b64):
        return None
    if not all(isinstance(key, jwk.JWK) for key in keys):
        return None  # e.g. a JWKSet: jwcrypto's kid lookup applies
    try:
        protected = base64url_decode(header_b64).decode("utf-8")
        header = json.loads(protected)
        signature = base64url_decode(signature_b64)
    except Exception:  # noqa: BLE001 - jwcrypto will say what is wrong
        return None
    if not isinstance(header, dict) or header.get("alg") != alg:
        return None
    if "crit" in header or "b64" in header:
        return None
    # jwcrypto verifies over the re-encoded header and payload (JWSCore), which is the
    # received text when that is canonical base64url (the usual case: no need to decode the
    # payload again); otherwise re-encode, exactly as jwcrypto does.
    if _canonical_b64url(header_b64) and _canonical_b64url(payload_b64):
        return ascii_token[: len(header_b64) + 1 + len(payload_b64)], signature
    try:
        payload = base64url_decode(payload_b64)
    except Exception:  # noqa: BLE001 - length 1 mod 4: jwcrypto will refuse it
        return None
    signing_input = base64url_encode(protected.encode("utf-8")) + "." + base64url_encode(payload)
    return signing_input.encode("utf-8"), signature
