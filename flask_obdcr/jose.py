"""JOSE helpers over jwcrypto: peek at a compact JWS, verify one against candidate keys.

Nothing here trusts a JOSE header for key material: keys come only from the JWKS the
caller chose, and headers that would point elsewhere (``jku``, ``x5u``, ``jwk``, ``x5c``)
make the token unacceptable.

The rules every caller gets (docs/architecture.md, "Contract: tokens, published URLs and keys"):

* the header and the payload are UTF-8 JSON objects (RFC 7515 section 5.2, RFC 7519
  section 7.2): no byte order mark, no UTF-16/32, no lone surrogate (a ``\\ud800`` escape);
* a ``crit`` header, whatever it lists, and ``b64`` (RFC 7797, which needs ``crit``) make the
  token malformed: this verifier understands no extension, and an empty ``crit`` is itself
  invalid (RFC 7515 section 4.1.11);
* keys below the floor of :func:`jws_key_problem` never verify anything, and at most
  :data:`MAX_KEYS_TRIED` keys are tried per token.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from jwcrypto import jwk, jws
from jwcrypto.common import JWException, base64url_decode, base64url_encode
from jwcrypto.jwa import JWA

#: header parameters that carry or point at key material (RFC 7515 section 4.1)
KEY_BEARING_HEADERS = frozenset({"jku", "x5u", "jwk", "x5c"})

_B64URL_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

# -- the key floor: what a key must be to verify any JWS here --------------------------------

#: RSA moduli shorter than this never verify: the floor the transport certificates already
#: have (NIST SP 800-131A); the OB Directory issues no shorter signing key.
MIN_RSA_BITS = 2048
#: ... nor longer than this: an RSA verification costs about the square of the modulus
#: length, and OB keys are 2048 (at most 4096) bits, so this only bounds what a hostile key
#: set can make one verification cost.
MAX_RSA_BITS = 8192
#: The only RSA public exponent accepted. 65537 is what the OB Directory, HSMs and every
#: mainstream generator (OpenSSL, cryptography, Java, .NET) produce, so an allow-list of one
#: refuses no honest key. Small exponents (3) are what the forgeries against lax PKCS#1 v1.5
#: verifiers (Bleichenbacher 2006) need; large ones make a verification cost grow with their
#: length, up to a private-key operation for a modulus-sized exponent, for every key tried.
RSA_PUBLIC_EXPONENTS = frozenset({65537})
#: EC keys verify on P-256 only (ES256, the OB profile's one EC algorithm): other curves are
#: not in the profile (P-384, P-521) or not in any JOSE standard we accept (secp256k1).
EC_CURVES = frozenset({"P-256"})
#: At most this many keys are tried (public-key operations made) per verification, so a
#: kid-less token, or one whose kid many keys share, cannot make a large key set cost one
#: operation per key. OB keys carry a kid and a software JWKS has a few sig keys; a token
#: without kid whose key comes later than this in the set is not verified.
MAX_KEYS_TRIED = 8


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


_UTF8_BOM = b"\xef\xbb\xbf"
# A \uD800-\uDFFF escape in the text: the only way a JSON string gets a surrogate once the
# bytes are strict UTF-8. json pairs a valid high+low escape into one character, so the
# decoded value then holds a surrogate only where one was lone. (Also matches "\\ud800",
# an escaped backslash: that only costs a walk of the value, which then finds nothing.)
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def _has_lone_surrogate(value: Any) -> bool:
    # iterative: the decoder accepts nesting as deep as the recursion limit allows
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return True
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return False


def _json_object(segment: str, what: str) -> dict[str, Any]:
    """The base64url ``segment`` as a UTF-8 JSON object, or :class:`MalformedJWS`.

    RFC 7515 and 7519 define the header and claims as UTF-8 (RFC 8259 section 8.1: no byte
    order mark). ``json.loads`` would also take UTF-16/32 and, with surrogatepass, UTF-8
    encoded surrogates; those are refused here, so one token has one reading everywhere.
    Lone surrogate escapes are valid JSON syntax, but RFC 8259 section 8.2 says such text is
    not interoperable: a string holding one is not Unicode, fails to encode for storage or
    logs, and other parsers replace or reject it; they are refused too."""
    try:
        raw = b64url_decode(segment)
        if raw.startswith(_UTF8_BOM):
            raise ValueError("a byte order mark")
        # strict UTF-8: UTF-16/32 text either is not UTF-8 or decodes with NULs that are not
        # JSON; UTF-8 encoded surrogates (ED A0 80) are invalid UTF-8
        text = raw.decode("utf-8")
        value = _DECODER.decode(text)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise MalformedJWS(f"the {what} is not UTF-8 JSON") from exc
    if not isinstance(value, dict):
        raise MalformedJWS(f"the {what} is not a JSON object")
    if _SURROGATE_ESCAPE.search(text) is not None and _has_lone_surrogate(value):
        raise MalformedJWS(f"the {what} has a lone surrogate (not Unicode text)")
    return value


def _check_header(header: dict[str, Any]) -> None:
    # RFC 7515 4.1.11: a recipient must refuse a crit it does not understand, and crit must
    # not be empty. We understand no extension, so any crit is refused, and so is b64
    # (RFC 7797), which is only valid listed in crit and changes what is signed.
    if "crit" in header:
        raise MalformedJWS("the JOSE header has crit: no JWS extension is understood here")
    if "b64" in header:
        raise MalformedJWS("the JOSE header has b64 (RFC 7797): not understood here")


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


@dataclass(frozen=True, eq=False)
class CompactJWS:
    """A compact JWS split and decoded once by :func:`decode`, NOT verified.

    :func:`verify` takes one in place of the token text and then does not split, check and
    decode the token again. It relies only on what this object fixed at decoding (the
    parts, ``alg``, ``kid``), never on :attr:`header`, which is the caller's to change.
    """

    token: str
    #: the decoded header and payload: the caller's to read and change
    header: dict[str, Any]
    claims: dict[str, Any]
    #: the header's alg (a string: :func:`decode` refuses a token without one)
    alg: str
    #: the header's kid when it is a string, else None
    kid: str | None
    header_b64: str
    payload_b64: str
    signature_b64: str


def decode(token: Any) -> CompactJWS:
    """A compact JWS split and decoded, NOT verified: its header (a JSON object with a
    string ``alg``, no ``crit``, no ``b64``) and its claims (a JSON object), under the rules
    of the module docstring. Raises :class:`MalformedJWS`."""
    if not isinstance(token, str) or not _is_compact(token):
        raise MalformedJWS("not a compact JWS (three base64url parts)")
    header_b64, payload_b64, signature_b64 = token.split(".")
    header = _json_object(header_b64, "JOSE header")
    claims = _json_object(payload_b64, "payload")
    alg = header.get("alg")
    if not isinstance(alg, str):
        raise MalformedJWS("the JOSE header has no alg")
    _check_header(header)
    kid = header.get("kid")
    return CompactJWS(
        token,
        header,
        claims,
        alg,
        kid if isinstance(kid, str) else None,
        header_b64,
        payload_b64,
        signature_b64,
    )


def peek(token: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The header and claims of a compact JWS, NOT verified. Raises :class:`MalformedJWS`."""
    decoded = decode(token)
    return decoded.header, decoded.claims


# Longest encodings worth decoding (base64url, padded or not, one leading zero octet
# allowed): anything longer cannot be an accepted key, and is refused without decoding, so a
# hostile key set of huge members costs nothing per verification.
_MAX_MODULUS_CHARS = 4 * -(-(MAX_RSA_BITS // 8 + 1) // 3)
_MAX_EXPONENT_CHARS = 8


def _b64url_uint(value: Any, max_chars: int) -> int | None:
    if not isinstance(value, str) or len(value) > max_chars:
        return None
    try:
        # jwcrypto's own decoder: the number judged is the number jwcrypto builds the key from
        return int.from_bytes(base64url_decode(value), "big")
    except (binascii.Error, ValueError):
        return None


def jws_key_problem(key: Mapping[str, Any]) -> str | None:
    """Why the public key ``key`` (a JWK, or its members) may verify no JWS, or None.

    RSA: an exponent in :data:`RSA_PUBLIC_EXPONENTS` and a modulus of :data:`MIN_RSA_BITS`
    to :data:`MAX_RSA_BITS` bits. EC: a curve in :data:`EC_CURVES`. Other key types have no
    floor here (OKP curves are fixed-size and strong; a JWKS never yields ``oct`` keys).
    Malformed members are a problem too, never an exception.
    """
    kty = key.get("kty")
    if kty == "RSA":
        exponent = _b64url_uint(key.get("e"), _MAX_EXPONENT_CHARS)
        if exponent not in RSA_PUBLIC_EXPONENTS:
            shown = "missing or too long" if exponent is None else str(exponent)
            return f"RSA public exponent {shown} (accepted: 65537)"
        modulus = _b64url_uint(key.get("n"), _MAX_MODULUS_CHARS)
        if modulus is None:
            return f"RSA modulus missing or longer than {MAX_RSA_BITS} bits"
        bits = modulus.bit_length()
        if not MIN_RSA_BITS <= bits <= MAX_RSA_BITS:
            return f"RSA modulus of {bits} bits (accepted: {MIN_RSA_BITS} to {MAX_RSA_BITS})"
        return None
    if kty == "EC":
        curve = key.get("crv")
        if curve not in EC_CURVES:
            return f"EC curve {curve!r} (accepted: {', '.join(sorted(EC_CURVES))})"
        return None
    return None


def _each_key(keys: Iterable[Any], kid: Any) -> Iterator[jwk.JWK]:
    """The JWKs of ``keys``; a JWKSet gives its keys with the header's kid, as jwcrypto's
    JWS.verify would pick them, or all of them without one. Anything else is no key."""
    for key in keys:
        if isinstance(key, jwk.JWKSet):
            members = key["keys"]
            yield from (m for m in members if not isinstance(kid, str) or m.get("kid") == kid)
        elif isinstance(key, jwk.JWK):
            yield key


def verify(token: str | CompactJWS, keys: Iterable[jwk.JWK | jwk.JWKSet], alg: str) -> jwk.JWK:
    """Check the signature of ``token`` with ``alg`` against each candidate key in turn;
    return the key that verifies it. ``token`` is the compact text, or what :func:`decode`
    made of it (then it is not split and decoded again).

    The caller has already checked ``alg`` against its allow-list; jwcrypto is told the
    single algorithm to accept, so the header cannot choose another one. Keys below the
    floor (:func:`jws_key_problem`) or of another type than ``alg`` needs are passed over;
    of the others at most :data:`MAX_KEYS_TRIED` are tried, in order.

    Raises :class:`MalformedJWS` if ``token`` is not a compact JWS whose header is a UTF-8
    JSON object without ``crit`` (the rules of :func:`peek` for the header),
    :class:`BadSignature` if no key verifies it.
    """
    header_alg: Any
    kid: Any
    if isinstance(token, CompactJWS):
        # decode() checked the form and the header; its alg and kid are its own strings
        header_b64, payload_b64 = token.header_b64, token.payload_b64
        signature_b64, header_alg, kid = token.signature_b64, token.alg, token.kid
        token = token.token
    else:
        if not isinstance(token, str) or not _is_compact(token):
            raise MalformedJWS("not a compact JWS (three base64url parts)")
        header_b64, payload_b64, signature_b64 = token.split(".")
        header = _json_object(header_b64, "JOSE header")
        _check_header(header)
        header_alg, kid = header.get("alg"), header.get("kid")
    if header_alg != alg:
        # what jwcrypto does with a pinned alg the header does not name
        raise BadSignature(f"the JOSE header does not name {alg}")
    signature = b64url_decode(signature_b64)
    size = _EC_SIGNATURE_BYTES.get(alg)
    if size is not None and len(signature) != size:
        # R || S of fixed width (RFC 7518 3.4): refuse other lengths, which jwcrypto would
        # split in half and could verify (a malleable signature)
        raise BadSignature(f"an {alg} signature is {size} bytes")
    kty = _ALG_KTY.get(alg)
    if kty is not None:
        signing_input = _signing_input(token, header_b64, payload_b64)
        engine = _engine(alg)

        def attempt(key: jwk.JWK) -> bool:
            try:
                # jwcrypto's own per-algorithm verifier, as JWS.verify ends up calling it:
                # the key's use/key_ops and curve are checked by key.get_op_key("verify")
                engine.verify(key, signing_input, signature)
            except Exception:  # noqa: BLE001 - jwcrypto treats any failure as "no"
                return False
            return True

    else:  # HS*, EdDSA, ...: jwcrypto's JWS object, told the one alg it may accept
        signed = jws.JWS()
        try:
            signed.deserialize(token)
        except (JWException, ValueError) as exc:
            raise MalformedJWS("not a JWS") from exc

        def attempt(key: jwk.JWK) -> bool:
            try:
                signed.verify(key, alg=alg)
            except (JWException, ValueError, TypeError):
                return False
            return True

    tried = 0
    for key in _each_key(keys, kid):
        if kty is not None and key.get("kty") != kty:
            continue  # would fail in cryptography anyway; refuse it up front, uncounted
        if jws_key_problem(key) is not None:
            continue  # below the floor: never a candidate, costs no public-key operation
        if tried == MAX_KEYS_TRIED:
            raise BadSignature(f"no key of the first {MAX_KEYS_TRIED} verifies the signature")
        tried += 1
        if attempt(key):
            return key
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
# header that names ``alg``; :func:`verify` has refused ``crit`` and ``b64``), every check
# jwcrypto makes before the signature reduces to "the header's alg is the pinned alg"; for
# the RSA and EC algorithms :func:`verify` computes jwcrypto's signing input itself and calls
# the same jwcrypto per-algorithm verifier (``JWA.signing_alg(alg).verify``). Other
# algorithms take the jwcrypto JWS path, so the outcome is the same in every case.

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


def _signing_input(token: str, header_b64: str, payload_b64: str) -> bytes:
    """What jwcrypto verifies the signature over for the compact ``token``: the re-encoded
    header and payload (JWSCore), which is the received text when that is canonical base64url
    (the usual case: no need to decode the payload again); otherwise re-encode, as jwcrypto
    does. ``token`` is ASCII (checked by :func:`_is_compact`)."""
    if _canonical_b64url(header_b64) and _canonical_b64url(payload_b64):
        return token[: len(header_b64) + 1 + len(payload_b64)].encode("ascii")
    header = b64url_decode(header_b64)  # decodes: _json_object read it
    payload = b64url_decode(payload_b64)  # a length of 1 mod 4 raises MalformedJWS
    return (base64url_encode(header) + "." + base64url_encode(payload)).encode("ascii")
